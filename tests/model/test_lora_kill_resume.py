"""SIGKILL the worker of a LoRA fine-tuning job: it must still publish the very adapter an
uninterrupted run trains (sha256 of adapter_model.safetensors), with the same metrics.

A job is killed three times: at a step between checkpoints, right after a checkpoint
completed, and while a checkpoint is being written (a ``.tmp-*`` folder in its checkpoint
directory) or, if the job gets past the next one first, at a step. A reference job with the
same params runs untouched beside it. LoRA dropout is on, so the restored RNG states matter.

Tolerance: none. On CPU with one thread training is deterministic for a seed, and a
checkpoint holds the adapters, the optimizer, the scheduler and every RNG state.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from fnbundle.jobs.manager import JobManager
from fnbundle.jobs.schema import Job, JobStatus, JobSubmit
from fnbundle.store import Store

from tests.model.test_finetune_lora import door_rows, write_jsonl
from tests.model.test_jobs import assert_monotone, job_settings, states, wait_for, wait_terminal

pytestmark = [pytest.mark.model, pytest.mark.slow]  # five worker starts: ~2 min on 2 cores

CHECKPOINT_EVERY = 5  # steps
TOTAL_STEPS = 28  # 2 epochs of 14 micro-batches of 4 (54 training rows)


def submit(manager: JobManager, data: Path, base: Path, name: str) -> Job:
    params = {"data": str(data), "name": name, "base": str(base), "rank": 8, "epochs": 2,
              "learning_rate": 5e-3, "max_seq_length": 64, "dropout": 0.1}  # fmt: skip
    job, created = manager.submit(JobSubmit(task="finetune_lora", params=params))
    assert created
    return job


def test_a_killed_lora_job_publishes_the_same_adapter(tmp_path, tiny_llm_base):
    data = write_jsonl(tmp_path / "doors.jsonl", door_rows())
    settings = job_settings(tmp_path, tiny_llm_base, jobs_checkpoint_every=CHECKPOINT_EVERY)
    manager = JobManager(settings, max_running=2)
    reference = submit(manager, data, tiny_llm_base, "reference")
    victim = submit(manager, data, tiny_llm_base, "victim")
    ckpt_dir = settings.jobs_root / victim.id / "checkpoints"
    killed: list[tuple[str, int]] = []
    last_pid: int | None = None

    def row():
        return manager.db.get(victim.id)

    def fresh_worker() -> int:
        def pid() -> int | None:
            r = row()
            assert r.status not in {JobStatus.succeeded, JobStatus.failed}, r.error
            fresh = r.status == JobStatus.running and r.worker_pid not in (None, last_pid)
            return r.worker_pid if fresh else None

        found: int = wait_for("a new worker", pid, every=0.005)
        return found

    def kill(pid: int, kind: str) -> None:
        nonlocal last_pid
        killed.append((kind, row().progress.step))
        os.kill(pid, signal.SIGKILL)
        last_pid = pid

    manager.start()
    try:
        pid = fresh_worker()
        wait_for("step 3", lambda: row().progress.step >= 3, every=0.005)
        kill(pid, "step")
        pid = fresh_worker()
        seen = row().last_checkpoint_step or 0
        wait_for("a new checkpoint", lambda: (row().last_checkpoint_step or 0) > seen, every=0.005)
        kill(pid, "after_checkpoint")
        pid = fresh_worker()
        kind = ""
        while not kind:
            if any(p.name.startswith(".tmp-") for p in ckpt_dir.iterdir()):
                kind = "writing_checkpoint"
            elif row().progress.step >= TOTAL_STEPS - 2:
                kind = "step"
        kill(pid, kind)
        expected = wait_terminal(manager, reference.id)
        done = wait_terminal(manager, victim.id)
    finally:
        manager.stop()

    assert expected.status == JobStatus.succeeded and expected.attempts == 1
    assert done.status == JobStatus.succeeded, done.error
    assert done.attempts == len(killed) + 1, killed
    events = manager.events(done.id)
    assert states(events) == ["queued"] + ["running", "queued"] * 3 + ["running", "succeeded"]
    assert_monotone(events)  # no step reported twice or out of order
    assert [e.data["step"] for e in events if e.type == "step"] == list(range(1, TOTAL_STEPS + 1))
    store = Store(settings.store_root)
    ours, theirs = store.get(done.model_id), store.get(expected.model_id)  # type: ignore[arg-type]
    digest = "adapter_model.safetensors"
    assert ours.manifest["files"][digest]["sha256"] == theirs.manifest["files"][digest]["sha256"]
    assert done.metrics == expected.metrics
    assert ours.manifest["base"] == theirs.manifest["base"]  # one imported base, reused
    metrics = json.loads((ours.path / "metrics.json").read_text())
    assert metrics["steps"] == TOTAL_STEPS and metrics["perplexity"] > 1
