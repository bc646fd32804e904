"""Checkpoints, resume and stop requests in the classifier trainer, with the tiny BERT.

The runs are short (2 epochs of 22 steps) and shared per module: one uninterrupted run is
the reference every resumed run must match exactly (metrics and model bytes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fnbundle.errors import Conflict, TrainingFailed, TrainingStopped
from fnbundle.settings import Settings
from fnbundle.store import Store
from fnbundle.training.control import TrainControl
from fnbundle.training.text_classifier import (
    TrainClassifierParams,
    TrainResult,
    train_classifier,
)

from tests.conftest import REPO, REVIEWS
from tests.model.helpers import nan_base

pytestmark = pytest.mark.model

EVERY = 10  # steps between checkpoints in these tests
STEPS_PER_EPOCH = 22  # ceil(693 training rows / 32)
TOTAL_STEPS = 2 * STEPS_PER_EPOCH
CHECKPOINT_FILES = {
    "model.safetensors",
    "best.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng.pt",
    "state.json",
}
KILL_DEADLINE_S = 300  # seconds to wait for the subprocess's first checkpoint


def make_params(tiny_base: Path, **changes: Any) -> TrainClassifierParams:
    options: dict[str, Any] = {
        "data": str(REVIEWS),
        "name": "ck",
        "base": str(tiny_base),
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "freeze_embeddings": False,
        "export_onnx": False,
        **changes,
    }
    return TrainClassifierParams(**options)


def make_settings(store: Path, tiny_base: Path, *roots: Path) -> Settings:
    return Settings(store=store, data_roots=[REPO, tiny_base.parent, *roots])


def model_sha(settings: Settings, name: str = "ck") -> str:
    manifest = Store(settings.store_root).resolve(name).manifest
    return str(manifest["files"]["model.safetensors"]["sha256"])


def folders(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def stop_before_step(step: int, reason: str):
    """A stop request that fires when polled before optimizer step ``step`` (1-based)."""
    polls = {"n": 0}

    def should_stop() -> str | None:
        polls["n"] += 1
        return reason if polls["n"] == step else None

    return should_stop


@dataclass
class Run:
    settings: Settings
    result: TrainResult
    events: list[dict[str, Any]]
    sha: str
    checkpoint_dir: Path | None = None


@pytest.fixture(scope="module")
def uninterrupted(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The reference: no control at all, as before checkpoints existed."""
    settings = make_settings(tmp_path_factory.mktemp("plain"), tiny_base)
    events: list[dict[str, Any]] = []
    result = train_classifier(make_params(tiny_base), settings, events.append)
    return Run(settings, result, events, model_sha(settings))


@pytest.fixture(scope="module")
def checkpointed(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A whole run with checkpoints every EVERY steps, two kept."""
    root = tmp_path_factory.mktemp("checkpointed")
    settings = make_settings(root / "store", tiny_base)
    control = TrainControl(checkpoint_dir=root / "ckpt", checkpoint_every=EVERY, keep=2)
    events: list[dict[str, Any]] = []
    result = train_classifier(make_params(tiny_base), settings, events.append, control)
    return Run(settings, result, events, model_sha(settings), root / "ckpt")


def assert_same_model(run: Run, result: TrainResult, settings: Settings) -> None:
    assert result.metrics == run.result.metrics
    assert (result.epochs_run, result.stopped_early) == (
        run.result.epochs_run,
        run.result.stopped_early,
    )
    assert model_sha(settings) == run.sha


def test_checkpointing_does_not_change_what_is_trained(uninterrupted, checkpointed):
    assert_same_model(uninterrupted, checkpointed.result, checkpointed.settings)
    assert of_type(checkpointed.events, "eval") == of_type(uninterrupted.events, "eval")


def test_checkpoints_every_n_steps_and_after_every_epoch(checkpointed):
    events = checkpointed.events
    saved = [(e["step"], e["epoch"]) for e in of_type(events, "checkpoint")]
    assert saved == [(10, 1), (20, 1), (22, 1), (30, 2), (40, 2), (44, 2)]
    epochs = of_type(events, "epoch")
    assert [(e["epoch"], e["step"]) for e in epochs] == [(1, 22), (2, 44)]
    evals = of_type(events, "eval")
    assert [e["eval_loss"] for e in epochs] == [e["eval_loss"] for e in evals]
    for epoch in epochs:
        losses = [s["loss"] for s in of_type(events, "step") if s["epoch"] == epoch["epoch"]]
        assert epoch["train_loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-4)
    # The epoch-end checkpoint comes after its evaluation, so it holds the early-stopping state.
    kinds = [e["type"] for e in events]
    first_epoch_end = kinds.index("epoch")
    assert kinds[first_epoch_end + 1 : first_epoch_end + 3] == ["checkpoint", "step"]


def test_checkpoint_folders_are_complete_and_pruned_to_keep(checkpointed):
    import torch
    from safetensors.torch import load_file

    root = checkpointed.checkpoint_dir
    assert root is not None
    assert folders(root) == {"latest", "step-00000040", "step-00000044"}  # no .tmp-* left
    assert (root / "latest").read_text().strip() == "step-00000044"
    for name, step, epoch, batch in [("step-00000040", 40, 2, 18), ("step-00000044", 44, 2, 22)]:
        folder = root / name
        assert folders(folder) == CHECKPOINT_FILES
        state = json.loads((folder / "state.json").read_text())
        assert (state["step"], state["epoch"], state["batch"]) == (step, epoch, batch)
        assert state["files"] == {
            f: (folder / f).stat().st_size for f in CHECKPOINT_FILES - {"state.json"}
        }
        assert [h["step"] for h in state["history"] if h["type"] == "step"] == list(
            range(1, step + 1)
        )
        for pt in ("optimizer.pt", "scheduler.pt", "rng.pt"):
            torch.load(folder / pt, weights_only=True)  # plain tensors and numbers only
    # Early stopping keeps the best epoch: the checkpoint holds those weights, the store got them.
    final = json.loads((root / "step-00000044" / "state.json").read_text())
    best_epoch = 1 if final["best_step"] == STEPS_PER_EPOCH else 2
    assert final["best_step"] == best_epoch * STEPS_PER_EPOCH
    published = Store(checkpointed.settings.store_root).resolve("ck").path / "model.safetensors"
    best, served = load_file(root / "step-00000044" / "best.safetensors"), load_file(published)
    assert best.keys() == served.keys()
    assert all(torch.equal(best[k], served[k]) for k in best)


def test_stop_saves_a_checkpoint_publishes_nothing_and_resumes_exactly(
    uninterrupted, tiny_base, tmp_path
):
    settings = make_settings(tmp_path / "store", tiny_base)
    ckpt = tmp_path / "ckpt"
    stopped_events: list[dict[str, Any]] = []
    control = TrainControl(ckpt, EVERY, should_stop=stop_before_step(31, "stopped_budget"))
    with pytest.raises(TrainingStopped) as stopped:
        train_classifier(make_params(tiny_base), settings, stopped_events.append, control)
    error = stopped.value
    assert (error.reason, error.step, error.status, error.type) == (
        "stopped_budget",
        30,
        409,
        "training_stopped",
    )
    first_eval = {k: v for k, v in of_type(uninterrupted.events, "eval")[0].items() if k != "type"}
    assert error.metrics == first_eval
    assert stopped_events[-1] == {"type": "checkpoint", "step": 30, "epoch": 2}
    assert (ckpt / "latest").read_text().strip() == "step-00000030"
    assert Store(settings.store_root).list() == []

    events: list[dict[str, Any]] = []
    result = train_classifier(
        make_params(tiny_base), settings, events.append, TrainControl(ckpt, EVERY)
    )
    assert [e["type"] for e in events[:2]] == ["start", "log"]
    assert events[1]["message"] == "resumed from step 30"
    assert [s["step"] for s in of_type(events, "step")] == list(range(31, TOTAL_STEPS + 1))
    assert [(e["step"], e["epoch"]) for e in of_type(events, "checkpoint")] == [(40, 2), (44, 2)]
    assert_same_model(uninterrupted, result, settings)


def test_stop_without_a_checkpoint_folder_stops_all_the_same(tiny_base, tmp_path):
    settings = make_settings(tmp_path / "store", tiny_base)
    control = TrainControl(should_stop=lambda: "cancelled")
    with pytest.raises(TrainingStopped) as stopped:
        train_classifier(make_params(tiny_base), settings, control=control)
    assert (stopped.value.reason, stopped.value.step, stopped.value.metrics) == ("cancelled", 0, {})
    assert Store(settings.store_root).list() == []


def test_an_interrupted_write_and_a_checkpoint_without_state_are_ignored(
    uninterrupted, checkpointed, tiny_base, tmp_path
):
    assert checkpointed.checkpoint_dir is not None
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpointed.checkpoint_dir, ckpt)
    # A kill while writing step 44: the folder exists but its state.json does not.
    (ckpt / "step-00000044" / "state.json").unlink()
    # A kill before the rename, and a folder whose state.json is not JSON.
    (ckpt / ".tmp-0a1b2c").mkdir()
    shutil.copy(ckpt / "step-00000040" / "model.safetensors", ckpt / ".tmp-0a1b2c")
    (ckpt / "step-00000099").mkdir()
    (ckpt / "step-00000099" / "state.json").write_text('{"step": 99, "fil')
    settings = make_settings(tmp_path / "store", tiny_base)
    events: list[dict[str, Any]] = []
    result = train_classifier(
        make_params(tiny_base), settings, events.append, TrainControl(ckpt, EVERY)
    )
    assert events[1] == {"type": "log", "message": "resumed from step 40"}
    assert [s["step"] for s in of_type(events, "step")] == list(range(41, TOTAL_STEPS + 1))
    assert_same_model(uninterrupted, result, settings)
    # The broken leftovers are cleared once a newer checkpoint is complete.
    assert folders(ckpt) == {"latest", "step-00000040", "step-00000044"}
    assert (ckpt / "step-00000044" / "state.json").is_file()


def test_a_checkpoint_of_other_params_is_refused(checkpointed, tiny_base, tmp_path):
    assert checkpointed.checkpoint_dir is not None
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpointed.checkpoint_dir, ckpt)
    before = folders(ckpt)
    settings = make_settings(tmp_path / "store", tiny_base)
    events: list[dict[str, Any]] = []
    with pytest.raises(Conflict, match="other params or data"):
        train_classifier(
            make_params(tiny_base, learning_rate=2e-3),
            settings,
            events.append,
            TrainControl(ckpt, EVERY),
        )
    assert events == [
        {
            "type": "log",
            "message": "not resuming: checkpoint step-00000044 was written for other params or data",
        }
    ]
    assert folders(ckpt) == before
    assert Store(settings.store_root).list() == []


def test_a_checkpoint_of_other_data_is_refused(tiny_base, tmp_path):
    data = tmp_path / "data" / "reviews.csv"
    data.parent.mkdir()
    shutil.copy(REVIEWS, data)
    settings = make_settings(tmp_path / "store", tiny_base, data.parent)
    params = make_params(tiny_base, data=str(data))
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrainingStopped):  # a checkpoint at step 0, before any training
        train_classifier(params, settings, control=TrainControl(ckpt, should_stop=lambda: "x"))
    assert (ckpt / "latest").read_text().strip() == "step-00000000"
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    data.write_text("".join(lines[:-1]), encoding="utf-8")  # one review fewer
    with pytest.raises(Conflict):
        train_classifier(params, settings, control=TrainControl(ckpt))


def test_nan_weights_are_never_checkpointed(tiny_base, tmp_path):
    broken = nan_base(tiny_base, tmp_path / "broken-base")
    settings = make_settings(tmp_path / "store", tiny_base, tmp_path)
    params = make_params(broken)
    for control in (
        TrainControl(tmp_path / "every-step", checkpoint_every=1),
        TrainControl(tmp_path / "stop-at-once", should_stop=lambda: "cancelled"),
    ):
        with pytest.raises(TrainingFailed, match="diverged"):
            train_classifier(params, settings, control=control)
        assert control.checkpoint_dir is not None
        assert not control.checkpoint_dir.exists() or not any(control.checkpoint_dir.iterdir())
    assert Store(settings.store_root).list() == []


def written_events(path: Path) -> list[dict[str, Any]]:
    """The complete lines of an events file another process is appending to."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


KILLED_WORKER = """
import json, sys
from pathlib import Path
from fnbundle.settings import Settings
from fnbundle.training.control import TrainControl
from fnbundle.tasks.train_classifier.params import TrainClassifierParams
from fnbundle.training.text_classifier import train_classifier

params_json, store, roots, ckpt, every, events_path = sys.argv[1:]
settings = Settings(store=Path(store), data_roots=[Path(r) for r in json.loads(roots)])
with open(events_path, "a", encoding="utf-8") as events:
    def on_event(event):
        events.write(json.dumps(event) + "\\n")
        events.flush()
    control = TrainControl(Path(ckpt), checkpoint_every=int(every))
    train_classifier(TrainClassifierParams.model_validate_json(params_json), settings, on_event, control)
"""


def test_a_killed_worker_resumes_from_its_last_checkpoint(uninterrupted, tiny_base, tmp_path):
    settings = make_settings(tmp_path / "store", tiny_base)
    params = make_params(tiny_base)
    ckpt, events_path = tmp_path / "ckpt", tmp_path / "events.jsonl"
    roots = json.dumps([str(r) for r in settings.data_roots])
    args = [params.model_dump_json(), str(settings.store_root), roots, str(ckpt), str(EVERY)]
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-c", KILLED_WORKER, *args, str(events_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    deadline = time.monotonic() + KILL_DEADLINE_S
    try:
        while True:
            if any(e["type"] == "checkpoint" for e in written_events(events_path)):
                break
            assert worker.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no checkpoint from the worker"
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    assert worker.returncode == -signal.SIGKILL
    assert Store(settings.store_root).list() == []
    saved = written_events(events_path)
    last_saved = max(e["step"] for e in saved if e["type"] == "checkpoint")

    events: list[dict[str, Any]] = []
    result = train_classifier(params, settings, events.append, TrainControl(ckpt, EVERY))
    resumed_from = int(events[1]["message"].removeprefix("resumed from step "))
    assert resumed_from >= last_saved >= EVERY
    assert [s["step"] for s in of_type(events, "step")] == list(
        range(resumed_from + 1, TOTAL_STEPS + 1)
    )
    assert_same_model(uninterrupted, result, settings)
