import csv
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from fnbundle.endpoints import MODAL_GPUS, RUNPOD_GPU_POOLS
from fnbundle.errors import InvalidRequest
from fnbundle.platforms.catalogue import (
    CATALOGUE,
    CATALOGUE_AS_OF,
    MODAL_ALIASES,
    MODAL_CPU_USD_PER_CORE_S,
    MODAL_MEMORY_USD_PER_GIB_S,
    cpu_usd_per_s,
    get_gpu,
    recommend_gpu,
)
from fnbundle.platforms.estimates import (
    COLD_START_S,
    JOB_OVERHEAD_S,
    BudgetTracker,
    Calibration,
    estimate_job,
)
from fnbundle.platforms.sizing import ModelShape, estimate_memory, model_shape
from fnbundle.settings import Settings
from fnbundle.training.text_classifier import TrainClassifierParams
from pydantic import ValidationError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
REVIEWS = REPO / "data" / "reviews.csv"
GIB = 1024**3

VOCAB, HIDDEN, LAYERS, HEADS = 100, 32, 2, 4
EMBEDDING = VOCAB * HIDDEN


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> Path:
    """A valid safetensors file of zeros: 8-byte little-endian header length, JSON, data."""
    sizes = {"F32": 4, "BF16": 2, "I64": 8}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        end = offset + math.prod(shape) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


def tiny_tensors(dtype: str = "F32") -> dict[str, tuple[str, list[int]]]:
    tensors = {
        "embeddings.word_embeddings.weight": (dtype, [VOCAB, HIDDEN]),
        "embeddings.position_embeddings.weight": (dtype, [64, HIDDEN]),
        "embeddings.position_ids": ("I64", [1, 64]),  # a buffer, not a weight
    }
    for i in range(LAYERS):
        tensors[f"encoder.layer.{i}.attention.qkv.weight"] = (dtype, [3 * HIDDEN, HIDDEN])
        tensors[f"encoder.layer.{i}.ffn.weight"] = (dtype, [4 * HIDDEN, HIDDEN])
    return tensors


TINY_PARAMS = EMBEDDING + 64 * HIDDEN + LAYERS * 7 * HIDDEN * HIDDEN


def make_base(folder: Path, dtype: str = "F32") -> Path:
    folder.mkdir(parents=True)
    config = {
        "model_type": "bert",
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "vocab_size": VOCAB,
    }
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors(folder / "model.safetensors", tiny_tensors(dtype))
    return folder


@pytest.fixture
def tiny(tmp_path):
    """Settings, a fake base folder and a small dataset, all inside one data root."""
    base = make_base(tmp_path / "base")
    rows = [f"a really good little thing number {i},pos" for i in range(300)]
    rows += [f"bad {i},neg" for i in range(300)]
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    settings = Settings(store=tmp_path / "store", data_roots=[tmp_path], threads=2)
    params = {"data": str(tmp_path / "d.csv"), "name": "t", "base": str(base), "batch_size": 8}
    return settings, params


def test_catalogue_prices_are_positive_dated_sourced_and_deployable():
    assert set(CATALOGUE) == {"modal", "runpod"}
    for platform, gpus in CATALOGUE.items():
        assert len(gpus) >= 8
        for name, gpu in gpus.items():
            assert gpu.name == name and gpu.platform == platform
            assert gpu.usd_per_s > 0 and gpu.memory_gib >= 16 and gpu.fp32_tflops > 0
            assert gpu.as_of == CATALOGUE_AS_OF == "2026-11"
            assert gpu.source.startswith(
                f"https://{'modal.com' if platform == 'modal' else 'docs.runpod.io'}/"
            )
            assert gpu.note
    # every name is one the deployment validation accepts
    assert {name.upper() for name in CATALOGUE["modal"]} <= MODAL_GPUS
    assert set(CATALOGUE["runpod"]) <= set(RUNPOD_GPU_POOLS)
    assert (
        0
        < MODAL_MEMORY_USD_PER_GIB_S
        < MODAL_CPU_USD_PER_CORE_S
        < min(g.usd_per_s for gpus in CATALOGUE.values() for g in gpus.values())
    )


def test_deployments_accept_exactly_the_catalogue_gpus():
    """One table: a GPU added to or dropped from the catalogue is deployable or refused."""
    priced = {name.upper() for name in CATALOGUE["modal"]}
    assert all(target in CATALOGUE["modal"] for target in MODAL_ALIASES.values())
    assert priced | {alias.upper() for alias in MODAL_ALIASES} <= MODAL_GPUS
    assert {g.upper() for g in MODAL_GPUS - priced} >= {"A10", "H100!", "B200+"}
    assert list(RUNPOD_GPU_POOLS) == list(CATALOGUE["runpod"])  # preference order kept
    for name, gpu in CATALOGUE["runpod"].items():
        assert gpu.models, name
        assert RUNPOD_GPU_POOLS[name] == f"{gpu.memory_gib:g} GB: {gpu.models}"


@pytest.mark.parametrize(
    ("platform", "gib", "expected"),
    [
        ("modal", 1, "T4"),
        ("modal", 13, "T4"),  # 13 x 1.2 = 15.6 GiB still fits 16
        ("modal", 14, "L4"),
        ("modal", 35, "L40S"),  # 48 GiB but cheaper than the A100-40GB
        ("modal", 100, "H200"),
        ("runpod", 14, "AMPERE_24"),  # not the dearer ADA_24 of the same size
        ("runpod", 30, "AMPERE_48"),  # not the dearer ADA_48_PRO
        ("runpod", 60, "AMPERE_80"),
    ],
)
def test_recommends_the_cheapest_gpu_that_fits(platform, gib, expected):
    gpu = recommend_gpu(platform, gib * GIB)
    assert gpu.name == expected
    assert gpu.memory_gib * GIB >= gib * GIB * 1.2


def test_more_headroom_can_move_up_a_size():
    assert recommend_gpu("modal", 12 * GIB, headroom=1.0).name == "T4"
    assert recommend_gpu("modal", 12 * GIB, headroom=1.5).name == "L4"


@pytest.mark.parametrize(("platform", "gib"), [("modal", 200), ("runpod", 130), ("local", 1)])
def test_nothing_fits_is_a_clear_error(platform, gib):
    with pytest.raises(InvalidRequest) as info:
        recommend_gpu(platform, gib * GIB)
    assert info.value.field == "gpu" and "GiB" in info.value.message


def test_gpu_names_and_platforms_are_checked():
    assert get_gpu("modal", "h100").name == "H100"  # Modal matches case-insensitively
    assert get_gpu("runpod", "AMPERE_80").memory_gib == 80
    with pytest.raises(InvalidRequest, match="Unknown modal GPU 'V100'; known: T4"):
        get_gpu("modal", "V100")
    with pytest.raises(InvalidRequest, match="Unknown runpod GPU 'H100'"):
        get_gpu("runpod", "H100")  # RunPod takes pool ids, not GPU names
    with pytest.raises(InvalidRequest, match="Unknown platform 'aws'") as info:
        recommend_gpu("aws", GIB)
    assert info.value.field == "platform"


def test_model_shape_from_config_and_safetensors_headers(tmp_path):
    base = make_base(tmp_path / "base")
    shape = model_shape(base)
    assert shape == ModelShape(
        n_params=TINY_PARAMS,
        n_trainable=TINY_PARAMS - EMBEDDING,
        hidden=HIDDEN,
        layers=LAYERS,
        heads=HEADS,
        vocab=VOCAB,
        dtype_bytes=4,
    )
    assert model_shape(base, freeze_embeddings=False).n_trainable == TINY_PARAMS
    assert model_shape(make_base(tmp_path / "bf16", "BF16")).dtype_bytes == 2


def test_model_shape_adds_up_shards(tmp_path):
    base = make_base(tmp_path / "base")
    (base / "model.safetensors").unlink()
    tensors = list(tiny_tensors().items())
    write_safetensors(base / "model-00001-of-00002.safetensors", dict(tensors[:3]))
    write_safetensors(base / "model-00002-of-00002.safetensors", dict(tensors[3:]))
    assert model_shape(base).n_params == TINY_PARAMS


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x02", "shorter than 8 bytes"),
        (struct.pack("<Q", 10**12), "too large"),
        (struct.pack("<Q", 5) + b"nope!", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_a_broken_safetensors_header_is_a_clear_error(tmp_path, content, message):
    base = make_base(tmp_path / "base")
    (base / "model.safetensors").write_bytes(content)
    with pytest.raises(InvalidRequest, match=message):
        model_shape(base)


def test_memory_grows_with_batch_and_length_and_freezing_lowers_it(tmp_path):
    frozen = model_shape(make_base(tmp_path / "base"))
    free = model_shape(tmp_path / "base", freeze_embeddings=False)
    small = estimate_memory(frozen, 8, 64)
    assert small.total == sum(
        (small.weights, small.gradients, small.optimizer, small.activations, small.overhead)
    )
    assert small.weights == TINY_PARAMS * 4
    assert small.optimizer == 2 * 4 * frozen.n_trainable  # two fp32 AdamW moments
    assert estimate_memory(frozen, 16, 64).activations > small.activations
    assert estimate_memory(frozen, 8, 128).activations > 2 * small.activations  # attention: s^2
    assert estimate_memory(free, 8, 64).total - small.total == EMBEDDING * (4 + 8)


def test_time_grows_linearly_with_epochs(tiny):
    settings, params = tiny
    runs = [estimate_job("train_classifier", {**params, "epochs": n}, settings) for n in (1, 2, 3)]
    assert [e.steps for e in runs] == [runs[0].steps * n for n in (1, 2, 3)]
    per_epoch = runs[1].seconds - runs[0].seconds
    assert per_epoch > 0
    assert runs[2].seconds - runs[1].seconds == pytest.approx(per_epoch)
    assert runs[2].usd > runs[0].usd
    assert runs[0].gpu == "cpu" and runs[0].examples == 600


def test_recorded_runs_replace_the_default_throughput(tiny):
    settings, params = tiny
    before = estimate_job("train_classifier", params, settings)
    assert any("not yet measured" in a for a in before.assumptions)
    compute_s = before.seconds - JOB_OVERHEAD_S
    calibration = Calibration.for_settings(settings)
    # a real run was twice as fast as the default guess
    calibration.record(before.gpu, before.tokens, compute_s / 2, before.flops_per_token)
    assert (settings.store_root / ".calibration.json").is_file()
    assert [p.name for p in settings.store_root.iterdir()] == [".calibration.json"]  # no temp left
    after = estimate_job("train_classifier", params, settings)
    assert after.seconds - JOB_OVERHEAD_S == pytest.approx(compute_s / 2)
    assert any("measured over 1 run(s)" in a for a in after.assumptions)
    # a second run moves the average part of the way, not all of it
    calibration.record(before.gpu, before.tokens, compute_s, before.flops_per_token)
    third = estimate_job("train_classifier", params, settings).seconds - JOB_OVERHEAD_S
    assert compute_s / 2 < third < compute_s
    assert calibration.throughput("cpu", 1e6) == pytest.approx(calibration.flops_per_s("cpu") / 1e6)


def test_calibration_ignores_empty_runs_and_unreadable_files(tmp_path):
    calibration = Calibration(tmp_path / ".calibration.json", cpu_cores=2)
    default = calibration.flops_per_s("cpu")
    assert default == 2 * Calibration(tmp_path / "x", cpu_cores=1).flops_per_s("cpu")
    calibration.record("cpu", 0, 1.0, 1e6)
    assert not calibration.path.exists()
    calibration.path.write_text("{not json")
    assert calibration.flops_per_s("cpu") == default
    calibration.record("L4", 1000, 1.0, 1e9)  # the broken file is replaced
    assert calibration.flops_per_s("L4") == pytest.approx(1e12)
    assert calibration.flops_per_s("cpu") == default
    with pytest.raises(InvalidRequest):
        calibration.flops_per_s("V100")


def test_padding_follows_the_trainers_length_grouped_batches():
    from fnbundle.platforms.estimates import LENGTH_WINDOW, _padded_tokens

    # Evaluation keeps the order: batches [1, 9] and [2, 8] pad to 9 and 8.
    assert _padded_tokens([1, 9, 2, 8], 2, None) == 2 * 9 + 2 * 8
    # Training sorts within windows of LENGTH_WINDOW batches: one window here, so the
    # batches are [1, 2] and [8, 9] whatever the shuffle.
    assert _padded_tokens([1, 9, 2, 8], 2, seed=3) == 2 * 2 + 2 * 9
    lengths = [(i * 37) % 120 + 5 for i in range(1000)]
    grouped = _padded_tokens(lengths, 16, seed=42)
    assert sum(lengths) <= grouped < _padded_tokens(lengths, 16, None)
    # Beyond one window the grouping is per window: the first window's batches only.
    window = lengths[: 16 * LENGTH_WINDOW]
    assert _padded_tokens(window, 16, seed=0) == sum(
        max(b) * 16 for b in (sorted(window)[i : i + 16] for i in range(0, len(window), 16))
    )


def test_budget_thresholds_are_announced_once_each():
    tracker = BudgetTracker(1.0, 0.01)  # $1 budget at $0.01 a second
    assert tracker.update(40) == []
    events = tracker.update(50)
    assert events == [{"type": "cost_usd", "cost_usd": 0.5, "budget_usd": 1.0, "fraction": 0.5}]
    assert tracker.update(55) == []
    assert [e["fraction"] for e in tracker.update(95)] == [0.75, 0.9]
    assert not tracker.exhausted
    assert [e["fraction"] for e in tracker.update(100)] == [1.0]
    assert tracker.exhausted and tracker.cost_usd == pytest.approx(1.0)
    assert tracker.update(200) == [] and tracker.update(10) == []
    assert tracker.cost_usd == pytest.approx(2.0)  # a clock that ran back changes nothing


def test_budget_survives_a_resume():
    resumed = BudgetTracker(1.0, 0.01, already_spent_usd=0.8)
    assert resumed.cost_usd == pytest.approx(0.8)
    assert resumed.update(0) == []  # 0.5 and 0.75 were announced before the crash
    events = resumed.update(15)
    assert [e["fraction"] for e in events] == [0.9]
    assert events[0]["cost_usd"] == pytest.approx(0.95)
    assert BudgetTracker(1.0, 0.01, already_spent_usd=1.2).exhausted


def test_no_budget_never_warns():
    tracker = BudgetTracker(None, 0.01)
    assert tracker.update(10**6) == [] and not tracker.exhausted
    assert tracker.cost_usd == pytest.approx(10**4)
    with pytest.raises(InvalidRequest):
        BudgetTracker(0, 0.01)


def test_estimate_for_the_shipped_reviews_with_minilm(tmp_path):
    settings = Settings(store=tmp_path / "store", data_roots=[REPO], threads=2)
    params = {"data": str(REVIEWS), "name": "sentiment"}  # base builtin:minilm, the defaults
    epochs = TrainClassifierParams(**params).epochs
    with REVIEWS.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    local = estimate_job("train_classifier", params, settings)
    assert local.platform == "local" and local.gpu == "cpu"
    assert local.examples == len(rows)
    n_train = sum(r["split"] == "train" for r in rows)
    # validation comes out of train
    assert 0.5 * n_train < local.steps * 16 / epochs <= n_train + 16
    assert 1 * GIB < local.memory.total < 3 * GIB
    assert local.memory.weights == pytest.approx(22.7e6 * 4, rel=0.01)  # MiniLM: 22.7M fp32
    assert local.memory.optimizer == 2 * local.memory.weights  # AdamW: two fp32 moments per weight
    assert local.usd_per_s == cpu_usd_per_s(2, math.ceil(local.memory.total / GIB))
    assert local.usd == pytest.approx(local.seconds * local.usd_per_s, abs=1e-6)
    assert local.catalogue_as_of == "2026-11" and local.assumptions

    modal = estimate_job("train_classifier", params, settings, platform="modal")
    assert modal.gpu == "T4" and modal.usd_per_s == CATALOGUE["modal"]["T4"].usd_per_s
    assert modal.seconds < local.seconds + COLD_START_S  # a GPU is faster than 2 cores
    h100 = estimate_job("train_classifier", params, settings, platform="modal", gpu="H100")
    assert h100.seconds < modal.seconds and h100.usd_per_s > modal.usd_per_s
    runpod = estimate_job("train_classifier", params, settings, platform="runpod")
    assert runpod.gpu == "AMPERE_16"
    # a pool's name does not say which GPUs it gives: the estimate does, from the catalogue
    assert "AMPERE_16 (RTX A4000, A4500, RTX 4000/2000 Ada; read from the pricing page)" in (
        " | ".join(runpod.assumptions)
    )

    with pytest.raises(InvalidRequest, match="Unknown modal GPU"):
        estimate_job("train_classifier", params, settings, platform="modal", gpu="RTX-9999")


def test_bad_requests_fail_before_any_work(tiny):
    settings, params = tiny
    with pytest.raises(ValidationError):
        estimate_job("train_classifier", {"data": params["data"]}, settings)  # no name
    with pytest.raises(ValidationError):
        estimate_job("train_classifier", {**params, "epochs": 0}, settings)
    with pytest.raises(InvalidRequest, match="No cost estimate for task 'classify'"):
        estimate_job("classify", params, settings)
    with pytest.raises(InvalidRequest, match="Unknown platform"):
        estimate_job("train_classifier", params, settings, platform="aws")
    deep = make_base(Path(params["base"]).parent / "deep")
    config = json.loads((deep / "config.json").read_text())
    (deep / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 5000}))
    big = {**params, "base": str(deep), "batch_size": 1024}
    with pytest.raises(InvalidRequest, match="T4 has 16 GiB; this job needs") as info:
        estimate_job("train_classifier", big, settings, platform="modal", gpu="T4")
    assert info.value.field == "gpu"


def test_estimating_never_imports_torch():
    code = (
        "import sys; from pathlib import Path; from fnbundle.settings import Settings;"
        "from fnbundle.platforms.estimates import estimate_job;"
        f"s = Settings(store=Path({str(REPO / '.fnbundle' / 'unused')!r}), data_roots=[Path({str(REPO)!r})]);"
        f"estimate_job('train_classifier', {{'data': {str(REVIEWS)!r}, 'name': 'x'}}, s, platform='modal');"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_hub_base_is_sized_from_its_headers_alone(tiny, monkeypatch):
    """The Hub is the boundary tests cannot reach: its two calls are faked, nothing else."""
    from types import SimpleNamespace

    import huggingface_hub

    settings, params = tiny
    local = estimate_job("train_classifier", params, settings)
    config = Path(params["base"]) / "config.json"
    tensors = {
        name: SimpleNamespace(dtype=dtype, shape=shape)
        for name, (dtype, shape) in tiny_tensors().items()
    }
    calls = []

    def download(repo, filename, revision=None, cache_dir=None):
        calls.append((repo, filename, revision))
        return str(config)

    def metadata(repo, revision=None):
        calls.append((repo, "headers", revision))
        return SimpleNamespace(
            files_metadata={"model.safetensors": SimpleNamespace(tensors=tensors)}
        )

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", metadata)
    hub = estimate_job("train_classifier", {**params, "base": "hf:org/tiny@abc123"}, settings)
    assert calls == [("org/tiny", "config.json", "abc123"), ("org/tiny", "headers", "abc123")]
    assert hub.memory == local.memory  # same weights, same breakdown


def hub_cache(cache: Path, repo: str, base: Path, revision: str = "main") -> Path:
    """``base``'s files laid out as huggingface_hub caches a download: blobs, a snapshot of
    symlinks into them, and a ref naming the snapshot's commit."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "blobs").mkdir(parents=True)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / revision).write_text(commit)
    for file in base.iterdir():
        blob = folder / "blobs" / f"blob-{file.name}"
        blob.write_bytes(file.read_bytes())
        (folder / "snapshots" / commit / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    return folder


def no_hub(monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("the Hub was asked although the base is cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", refuse)


def test_a_cached_hub_base_is_sized_from_the_cache_without_asking_the_hub(tiny, monkeypatch):
    settings, params = tiny
    local = estimate_job("train_classifier", params, settings)
    hub_cache(settings.store_root.parent / "hf", "org/tiny", Path(params["base"]))
    cached = settings.model_copy(update={"hf_cache": settings.store_root.parent / "hf"})
    no_hub(monkeypatch)
    hub = estimate_job("train_classifier", {**params, "base": "hf:org/tiny@main"}, cached)
    assert not hub.approximate and hub.memory == local.memory and hub.usd == local.usd


def test_an_unreachable_hub_gives_an_approximate_estimate_priced_high(tiny):
    # Tests run with HF_HUB_OFFLINE=1 (tests/conftest.py) and an empty cache: no answer.
    settings, params = tiny
    settings = settings.model_copy(update={"hf_cache": settings.store_root.parent / "empty"})
    hub_params = {**params, "base": "hf:org/nowhere@main"}
    local = estimate_job("train_classifier", hub_params, settings)
    assert local.approximate and local.gpu == "cpu" and local.usd_per_s > 0
    assert local.seconds is None and local.usd is None and local.memory is None
    assert "hf:org/nowhere@main was not checked" in local.assumptions[0]
    dearest = max(CATALOGUE["modal"].values(), key=lambda g: g.usd_per_s)
    modal = estimate_job("train_classifier", hub_params, settings, platform="modal")
    assert modal.approximate and (modal.gpu, modal.usd_per_s) == (dearest.name, dearest.usd_per_s)
    named = estimate_job("train_classifier", hub_params, settings, platform="modal", gpu="T4")
    assert named.approximate and named.gpu == "T4"


def test_an_approximate_estimate_does_not_choose_the_jobs_gpu(tiny):
    from fnbundle.jobs.schema import JobSubmit
    from fnbundle.jobs.submit import new_job

    settings, params = tiny
    settings = settings.model_copy(update={"hf_cache": settings.store_root.parent / "empty"})
    req = JobSubmit(task="train_classifier", params={**params, "base": "hf:org/nowhere@main"})
    job = new_job(req, settings, platform="modal")
    assert job.estimate is not None and job.estimate["approximate"] is True
    assert "seconds" not in job.estimate  # absent, not null: clients print what is there
    assert job.gpu is None  # the worker's deployment decides, not the price guess
