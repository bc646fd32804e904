"""SIGKILL the training worker at random moments; every job must still end with the very
model an uninterrupted run trains.

Two jobs are killed five and six times (11 kills, seeded), each at every moment that can
lose work: while the worker starts up, at a random step, twice while a checkpoint is being
written (a ``.tmp-*`` folder is in the checkpoint directory), right after a checkpoint
completed, and, once, after the last step while it evaluates and publishes. The scheduler
notices each death, requeues the job and a new worker resumes from the newest complete
checkpoint. A third job with the same params runs untouched beside them as the reference.

Tolerance: none. Training is deterministic for a seed on one thread and a checkpoint
holds the weights, optimizer, scheduler and every RNG state, so a resumed job publishes
the same weights (byte for byte) and the same metrics as the reference.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from fnbundle.jobs.manager import JobManager
from fnbundle.jobs.schema import TERMINAL, JobStatus
from fnbundle.store import Store

from tests.model.test_jobs import (
    WAIT_S,
    assert_monotone,
    job_settings,
    states,
    submit,
    wait_for,
    wait_terminal,
)

pytestmark = [pytest.mark.model, pytest.mark.slow]  # 11 worker kills and resumes: a minute

SEED = 20261123
VICTIMS = 2
KILLS_PER_JOB = 5  # every kind, a second half-written checkpoint; one job also publishing
CHECKPOINT_EVERY = 7  # steps: kills land between checkpoints as well as on them
TOTAL_STEPS = 88  # 2 epochs of 44 batches of the test reviews' training split
KINDS = ("startup", "step", "writing_checkpoint", "after_checkpoint")


class Killer:
    """Kills the workers of one job according to a seeded plan, one kill per worker."""

    def __init__(self, manager: JobManager, job_id: str, plan: list[str], rng: random.Random):
        self.manager, self.job_id, self.plan, self.rng = manager, job_id, plan, rng
        self.ckpt_dir = manager.settings.jobs_root / job_id / "checkpoints"
        self.killed: list[tuple[str, int]] = []  # (kind, step of the job when killed)
        self.error: BaseException | None = None
        self.last_pid: int | None = None

    def _row(self):
        return self.manager.db.get(self.job_id)

    def _fresh_worker(self) -> int:
        def pid() -> int | None:
            row = self._row()
            assert row.status not in TERMINAL, f"job ended {row.status} before its kills"
            fresh = row.status == JobStatus.running and row.worker_pid not in (None, self.last_pid)
            return row.worker_pid if fresh else None

        found: int = wait_for(f"a new worker for {self.job_id}", pid, every=0.005)
        return found

    def _wait_step(self, target: int) -> None:
        wait_for(f"step {target}", lambda: self._row().progress.step >= target, every=0.005)

    def _wait_checkpoint_writing(self, give_up_at_step: int) -> str:
        """Until a checkpoint is half written; ``step`` if the job got too far first."""
        while True:
            if any(p.name.startswith(".tmp-") for p in self._listing()):
                return "writing_checkpoint"
            if self._row().progress.step >= give_up_at_step:
                return "step"
            time.sleep(0.002)

    def _listing(self) -> list[Path]:
        try:
            return list(self.ckpt_dir.iterdir())
        except FileNotFoundError:
            return []

    def _kill(self, pid: int, kind: str) -> None:
        step = self._row().progress.step
        os.kill(pid, signal.SIGKILL)
        self.killed.append((kind, step))
        self.last_pid = pid

    def run(self) -> None:
        try:
            for n, kind in enumerate(self.plan):
                pid = self._fresh_worker()
                high = self._row().progress.step
                room = TOTAL_STEPS - 1 - high
                # Leave room for the kills still to come; the last one may come at the very end.
                ceiling = max(1, room // (len(self.plan) - n))
                if kind == "startup":
                    pass
                elif kind == "step":
                    self._wait_step(min(high + self.rng.randint(1, ceiling), TOTAL_STEPS - 1))
                elif kind == "writing_checkpoint":
                    give_up = high + max(ceiling, CHECKPOINT_EVERY + 1)
                    kind = self._wait_checkpoint_writing(min(give_up, TOTAL_STEPS - 1))
                elif kind == "after_checkpoint":
                    seen = self._row().last_checkpoint_step or 0
                    wait_for(
                        "a new checkpoint",
                        lambda seen=seen: (self._row().last_checkpoint_step or 0) > seen,
                        every=0.005,
                    )
                elif kind == "publishing":
                    self._wait_step(TOTAL_STEPS)
                self._kill(pid, kind)
        except BaseException as exc:
            self.error = exc


def plans(rng: random.Random) -> list[list[str]]:
    """Every kind in every job, at least two half-written checkpoints per job, a kill during
    publishing at the end of one job, the rest at random."""
    out = []
    for i in range(VICTIMS):
        plan = [*KINDS, "writing_checkpoint"]
        plan += [rng.choice(KINDS) for _ in range(KILLS_PER_JOB - len(plan) - (i == 0))]
        rng.shuffle(plan)
        out.append([*plan, "publishing"] if i == 0 else plan)
    return out


def test_killed_workers_resume_to_the_same_model(tmp_path, tiny_base):
    settings = job_settings(tmp_path, tiny_base, jobs_checkpoint_every=CHECKPOINT_EVERY)
    manager = JobManager(settings, max_running=2)
    reference = submit(manager, tiny_base, "reference")
    victims = [submit(manager, tiny_base, f"victim{i}") for i in range(VICTIMS)]
    rng = random.Random(SEED)
    killers = [
        Killer(manager, v.id, plan, random.Random(rng.random()))
        for v, plan in zip(victims, plans(rng), strict=True)
    ]
    threads = [threading.Thread(target=k.run, name=f"killer-{k.job_id}") for k in killers]
    manager.start()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=WAIT_S)
        for k in killers:
            assert k.error is None, f"{k.job_id}: {k.error!r}"
        expected = wait_terminal(manager, reference.id)
        finished = [wait_terminal(manager, v.id) for v in victims]
    finally:
        manager.stop()

    assert expected.status == JobStatus.succeeded and expected.attempts == 1
    store = Store(settings.store_root)
    weights = store.get(expected.model_id).manifest["files"]["model.safetensors"]["sha256"]  # type: ignore[arg-type]
    kinds: list[str] = []
    for killer, done in zip(killers, finished, strict=True):
        events = manager.events(done.id)
        deaths = [
            e for e in events if e.type == "log" and e.data["message"].startswith("worker died")
        ]
        assert len(deaths) == len(killer.killed), (killer.killed, [e.data for e in deaths])
        assert done.status == JobStatus.succeeded, done.error
        assert done.attempts == len(killer.killed) + 1
        assert states(events) == ["queued"] + ["running", "queued"] * len(deaths) + [
            "running",
            "succeeded",
        ]
        assert_monotone(events)  # no step is reported twice or out of order
        assert [e.data["step"] for e in events if e.type == "step"] == list(range(1, 89))
        assert done.metrics == expected.metrics
        artifact = store.get(done.model_id)  # type: ignore[arg-type]
        assert artifact.manifest["files"]["model.safetensors"]["sha256"] == weights
        kinds += [kind for kind, _ in killer.killed]

    assert len(kinds) == VICTIMS * KILLS_PER_JOB + 1  # one job's kill while publishing
    assert kinds.count("writing_checkpoint") >= 2, kinds  # a torn checkpoint is never loaded
    assert {"startup", "step", "after_checkpoint", "publishing"} <= set(kinds)
