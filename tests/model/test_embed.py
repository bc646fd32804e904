"""The embed task's core with the packaged MiniLM: import, parity, requests, limits.

One artifact is imported once for the module (``import_embedder("builtin:minilm")``) and
compared with sentence-transformers' ``encode`` on texts the export's own gate never saw.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from fnbundle.errors import InvalidRequest, LimitExceeded
from fnbundle.loading import builtin_dir
from fnbundle.settings import Settings
from fnbundle.store import Store, sha256_file
from fnbundle.tasks.embed.export import import_embedder
from fnbundle.tasks.embed.model import load_embedder
from fnbundle.tasks.embed.parity import PARITY_TEXTS
from fnbundle.tasks.embed.schema import EmbeddingRequest, check_request
from pydantic import ValidationError

from tests.conftest import REPO
from tests.model.helpers import clone_as
from tests.unit.tiny_onnx import publish_tiny

pytestmark = pytest.mark.model

LONG = (
    "The museum reopened after a two-year renovation that replaced the roof, restored the "
    "frescoes in the main hall and added a wing for temporary exhibitions; visitors queued "
    "around the block on the first morning, and the director said the collection of early "
    "maps, which had been in storage since the flood, would finally be shown again. "
)
# Texts the export's parity gate never saw: short, long (past MEASURED's fixed 128 and past
# the model's 256, so the tokenizer reset and the truncation both show), and odd ones.
TEXTS = [
    "I love this phone.",
    "Terrible customer support, never again.",
    "What time does the pharmacy close on Sundays?",
    "The cat sat on the mat.",
    "Quantum computers use qubits instead of bits.",
    "Il pleut des cordes ce matin à Lyon.",
    "ñandú, smörgåsbord and crème brûlée",
    "北京欢迎你",
    "🙂🙂🙂",
    "42",
    "OK",
    "Please forward the invoice to accounting by Friday, thanks!",
    "SELECT * FROM users WHERE id = 7;",
    "A very long sentence " * 30,
    LONG,
    LONG * 2,  # ~150 tokens: past a fixed 128
    LONG * 5,  # past 256: truncated, as sentence-transformers truncates
    "The weather is nice today, let's go for a walk in the park.",
    "Shares fell 3% after the quarterly results missed expectations.",
    "How do I bake sourdough bread at home?",
]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(settings, artifact): MiniLM imported as an embed model into a fresh store."""
    # threads: the process's (one per xdist worker, tests/conftest.py), never more
    settings = Settings(
        store=tmp_path_factory.mktemp("embed-store"), data_roots=[REPO], max_texts=8
    )
    return settings, import_embedder("builtin:minilm", "minilm", settings)


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers' vectors for TEXTS, the numbers users compare against."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(builtin_dir("minilm")), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_fp32_equals_sentence_transformers_encode(imported, reference):
    settings, artifact = imported
    model = load_embedder(artifact.id, settings, backend="onnx-fp32")
    vectors = model.embed(TEXTS)  # one batch, padded to its longest text
    assert vectors.shape == (len(TEXTS), 384)
    assert np.abs(vectors - reference).max() <= 1e-4


def test_fp32_is_the_default_because_int8_drifts_on_few_word_texts(imported, reference):
    settings, artifact = imported
    # int8 keeps sentences at cosine >= 0.99 but not one- to three-word texts ("OK": 0.98),
    # so the gate keeps it off the default.
    int8 = artifact.manifest["export"]["onnx-int8"]
    assert not int8["passed"] and int8["min_cosine"] < 0.99
    assert int8["min_cosine_by_length"]["8 tokens or more"] >= 0.99
    assert artifact.manifest["default_backend"] == "onnx-fp32"
    # ONNX Runtime's auto: without OpenVINO (on a CPU with AMX it may take over, below)
    model = load_embedder("minilm", settings.model_copy(update={"openvino": "off"}))
    assert model.backend == "onnx-fp32"
    assert np.abs(model.embed(TEXTS) - reference).max() <= 1e-4


def test_int8_on_request_keeps_cosine_099_on_sentences(imported, reference):
    settings, _ = imported
    model = load_embedder("minilm", settings, backend="onnx-int8")
    assert model.backend == "onnx-int8"
    sentences = [i for i, t in enumerate(TEXTS) if len(t.split()) >= 5]
    assert len(sentences) >= 12
    texts = [TEXTS[i] for i in sentences]
    vectors = np.concatenate([model.embed(texts[i : i + 8]) for i in range(0, len(texts), 8)])
    assert cosines(vectors, reference[sentences]).min() >= 0.99
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_openvino_bf16_passes_the_int8_gate_on_every_text_and_auto_takes_it_with_amx(
    imported, reference
):
    from fnbundle.runtime import openvino
    from fnbundle.tasks.embed.parity import int8_parity

    settings, _ = imported
    model = load_embedder("minilm", settings, backend="openvino-bf16")
    assert model.backend == "openvino-bf16"
    vectors = model.embed(TEXTS)  # short ones too, where int8 drifts
    record = int8_parity(reference, vectors)
    assert record["passed"], record
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    # auto: OpenVINO where this CPU has AMX (its gate passes, as the vectors above do),
    # else the ONNX Runtime default
    amx = openvino.fast_bf16_cpu(openvino.CPUINFO)
    assert load_embedder("minilm", settings).backend == ("openvino-bf16" if amx else "onnx-fp32")


def test_manifest_records_the_export_and_its_parity(imported):
    _, artifact = imported
    m = artifact.manifest
    assert m["task"] == "embed"
    assert (m["dimensions"], m["max_tokens"], m["pooling"], m["normalize"]) == (
        384,
        256,
        "mean",
        True,
    )
    assert m["truncatable"] is False
    assert m["backends"] == ["onnx-fp32", "onnx-int8"]
    fp32, int8 = m["export"]["onnx-fp32"], m["export"]["onnx-int8"]
    assert fp32["passed"] and fp32["max_abs_diff"] <= 1e-4
    assert fp32["examples"] == len(PARITY_TEXTS)
    # ONNX Runtime's transformer fusion took: one fused attention per layer.
    assert fp32["fused"] and fp32["fused_ops"]["Attention"] == 6
    assert int8["quantization"]["matmuls_kept_fp32"] == 6
    assert m["parity_reference"].startswith("sentence-transformers")


def test_a_request_answers_in_openais_shape_with_usage(imported):
    settings, artifact = imported
    model = load_embedder("minilm", settings)
    response = model.create(
        EmbeddingRequest(input="Hello world!", model="minilm", user="u-1"), settings
    )
    body = json.loads(response.model_dump_json())
    assert body["object"] == "list"
    assert body["model"] == artifact.id
    [item] = body["data"]
    assert (item["object"], item["index"], len(item["embedding"])) == ("embedding", 0, 384)
    # [CLS] hello world ! [SEP]
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


def test_token_arrays_give_the_same_vectors_as_the_texts(imported):
    settings, _ = imported
    model = load_embedder("minilm", settings, backend="onnx-fp32")
    texts = ["I love this phone.", LONG, "OK"]
    ids = model.tokenize(texts)
    assert ids[0][0] == 101 and ids[0][-1] == 102  # [CLS] ... [SEP], as the tokenizer makes them
    by_text = model.create(EmbeddingRequest(input=texts, model="minilm"), settings)
    by_ids = model.create(EmbeddingRequest(input=ids, model="minilm"), settings)
    single = model.create(EmbeddingRequest(input=ids[1], model="minilm"), settings)
    for a, b in zip(by_text.data, by_ids.data, strict=True):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)
    np.testing.assert_allclose(single.data[0].embedding, by_text.data[1].embedding, atol=1e-6)
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens == sum(map(len, ids))


def test_batched_requests_in_length_groups_equal_one_by_one(imported):
    """Short and long texts gathered in one batch run as length groups (a low
    FNB_BATCH_SPLIT_TOKENS forces the split); every request gets its own vectors, in order."""
    import asyncio

    from fnbundle.runtime.batching import DynamicBatcher
    from fnbundle.tasks.embed.serve import EmbedTask

    settings, _ = imported
    settings = settings.model_copy(update={"batch_split_tokens": 8})
    model = load_embedder("minilm", settings, backend="onnx-fp32")
    task = EmbedTask()
    requests = [
        EmbeddingRequest(input=[TEXTS[i % len(TEXTS)], LONG, "OK"], model="minilm")
        for i in range(6)
    ]
    calls = []

    def batch_fn(items):
        calls.append(len(items))
        return task.batch_fn(model)(items)

    async def main():
        batcher = DynamicBatcher(batch_fn, max_size=64, max_wait_s=0.005)
        answers = await asyncio.gather(*(task.run(model, r, batcher, settings) for r in requests))
        await batcher.close()
        return answers

    answers = asyncio.run(main())
    assert len(calls) < len(requests)  # requests shared forward passes
    for request, answer in zip(requests, answers, strict=True):
        alone = [model.embed([text])[0] for text in request.input]
        got = [item.embedding for item in answer.data]
        np.testing.assert_allclose(got, alone, atol=1e-5)


def test_base64_decodes_to_the_same_floats(imported):
    settings, _ = imported
    model = load_embedder("minilm", settings)
    texts = ["first text", "a second, longer text to embed"]
    floats = model.create(EmbeddingRequest(input=texts, model="minilm"), settings)
    packed = model.create(
        EmbeddingRequest(input=texts, model="minilm", encoding_format="base64"), settings
    )
    for f, p in zip(floats.data, packed.data, strict=True):
        assert isinstance(p.embedding, str)
        # How the openai SDK decodes it: native float32, little-endian on every platform it runs.
        decoded = np.frombuffer(base64.b64decode(p.embedding), dtype="<f4")
        assert decoded.tolist() == f.embedding


def test_limits_are_checked_before_any_model_work(imported):
    settings, _ = imported
    model = load_embedder("minilm", settings)
    limits = model.limits(settings)  # max_texts=8 in this module's settings

    def refused(expected, **request):
        with pytest.raises(expected) as caught:
            check_request(EmbeddingRequest(model="minilm", **request), limits)
        return caught.value

    error = refused(LimitExceeded, input=["text"] * 9)
    assert error.field == "input" and "limit of 8" in error.message
    error = refused(LimitExceeded, input=[])
    assert error.field == "input"
    error = refused(LimitExceeded, input=["ok", "x" * (settings.max_text_chars + 1)])
    assert error.field == "input.1" and str(settings.max_text_chars) in error.message
    error = refused(LimitExceeded, input=[[101] * 257])
    assert error.field == "input.0" and "limit of 256" in error.message
    error = refused(InvalidRequest, input=[101, 30522, 102])
    assert error.field == "input.1" and "vocabulary" in error.message
    error = refused(InvalidRequest, input=[[101, 102], []])
    assert error.field == "input.1"
    error = refused(InvalidRequest, input=["fine", "   "])
    assert error.field == "input.1"
    error = refused(InvalidRequest, input="bad \ud800 surrogate")
    assert error.field == "input"
    # The same refusals through the model's own request path.
    with pytest.raises(LimitExceeded):
        model.create(EmbeddingRequest(input=["text"] * 9, model="minilm"), settings)
    for bad in (["text", 1], [[1], ["a"]], [True], 3.5):
        with pytest.raises(ValidationError):
            EmbeddingRequest(input=bad, model="minilm")
    with pytest.raises(ValidationError):
        EmbeddingRequest(input="x", model="minilm", encoding_format="int8")


def test_dimensions_are_refused_for_minilm(imported):
    settings, _ = imported
    model = load_embedder("minilm", settings)
    with pytest.raises(InvalidRequest) as caught:
        model.create(EmbeddingRequest(input="text", model="minilm", dimensions=128), settings)
    assert caught.value.field == "dimensions"
    full = model.create(EmbeddingRequest(input="text", model="minilm", dimensions=384), settings)
    assert len(full.data[0].embedding) == 384  # its own width is always fine


def test_dimensions_shorten_and_renormalise_where_the_manifest_allows(imported):
    settings, artifact = imported
    store = Store(settings.store_root)
    # The same vectors, declared trained for truncation (as a Matryoshka model would be).
    declared = replace(artifact, manifest={**artifact.manifest, "truncatable": True})
    clone_as(store, declared, "minilm-matryoshka")
    model = load_embedder("minilm-matryoshka", settings, backend="onnx-fp32")
    full = load_embedder("minilm", settings, backend="onnx-fp32").embed(["text"])[0]
    short = model.create(EmbeddingRequest(input="text", model="x", dimensions=64), settings)
    vector = np.array(short.data[0].embedding)
    assert vector.shape == (64,)
    np.testing.assert_allclose(vector, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
    with pytest.raises(InvalidRequest) as caught:
        model.create(EmbeddingRequest(input="text", model="x", dimensions=385), settings)
    assert caught.value.field == "dimensions"


def test_a_model_of_another_task_is_refused(imported):
    settings, _ = imported
    publish_tiny(Store(settings.store_root), "tiny-classifier")
    with pytest.raises(InvalidRequest, match="'classify' model, not an embedding model"):
        load_embedder("tiny-classifier", settings)


def test_the_artifact_is_published_whole_with_hashes(imported):
    settings, artifact = imported
    store = Store(settings.store_root)
    assert artifact.id in [a.id for a in store.list()]
    assert store.resolve_id("minilm") == artifact.id
    files = artifact.manifest["files"]
    assert set(files) == {"model.onnx", "model.int8.onnx", "tokenizer.json"}
    for rel, meta in files.items():
        assert sha256_file(artifact.path / rel) == meta["sha256"]
    store.verify(artifact)
    assert not any(store.staging_dir.iterdir())  # nothing half-written left behind
    # The served tokenizer neither pads to nor truncates at the shipped fixed 128.
    tokenizer = json.loads((artifact.path / "tokenizer.json").read_text())
    assert tokenizer["padding"] is None and tokenizer["truncation"]["max_length"] == 256


def test_a_base_with_a_head_it_cannot_export_is_refused(imported, tmp_path):
    settings, _ = imported
    base = tmp_path / "with-dense"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (base / "modules.json").write_text(
        json.dumps([{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}])
    )
    before = [a.id for a in Store(settings.store_root).list()]
    local = settings.model_copy(update={"data_roots": [tmp_path]})
    with pytest.raises(InvalidRequest, match="Dense"):
        import_embedder(str(base), "dense", local)
    assert [a.id for a in Store(settings.store_root).list()] == before


def test_importing_the_task_loads_no_heavy_library():
    code = (
        "import sys, fnbundle.tasks.embed.model, fnbundle.tasks.embed.schema, "
        "fnbundle.tasks.embed.parity, fnbundle.tasks.embed.export; "
        "print([m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def cli(*args: str, store) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FNB_") or k == "FNB_THREADS"}
    env.update(FNB_STORE=str(store), FNB_DATA_ROOTS=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "fnbundle.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )


def test_models_import_refuses_a_task_whose_models_are_trained(tmp_path):
    out = cli(
        "models", "import", "builtin:minilm", "--task", "classify", "--name", "x", store=tmp_path
    )
    assert out.returncode == 1 and "classify models are trained" in out.stderr
    out = cli("models", "import", "builtin:minilm", "--task", "nope", "--name", "x", store=tmp_path)
    assert out.returncode == 1 and "Unknown task 'nope'" in out.stderr
    assert not Store(tmp_path).list()


@pytest.mark.slow
def test_models_import_publishes_minilm_ready_to_serve(tmp_path, reference):
    out = cli(
        "models", "import", "builtin:minilm", "--task", "embed", "--name", "minilm", store=tmp_path
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (artifact,) = Store(tmp_path).list()
    assert artifact.task == "embed" and artifact.name == "minilm"
    assert artifact.id in out.stdout
    model = load_embedder("minilm", Settings(store=tmp_path), backend="onnx-fp32")
    np.testing.assert_allclose(model.embed(TEXTS[:4]), reference[:4], atol=1e-4)
