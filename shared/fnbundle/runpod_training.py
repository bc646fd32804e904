"""What every RunPod training worker shares: one job in, its events streamed out.

A training handler (``handlers/train_<task>.py``) is a :class:`TrainingWorker` naming its
endpoint in deploy/endpoints.toml and the packages it imports before its first job. Its
input is a training job, ``{"job": <JobSubmit>, "job_id": <id>, "after_seq": n}``, from
:class:`~fnbundle.jobs.runpod_backend.RunPodJobs` (everything is a job: any other input is
one clear error): its record, events and checkpoints live under
``<volume>/fnbundle/jobs/<id>/``, so a second run of the same job on any worker resumes
from its checkpoint. A job yields typed job events (JobEvent JSON: ``{"seq", "type", "at",
"data"}``) and ends with its terminal ``state`` event; when RunPod cancels the run, the
handler tells the trainer to stop (it saves a checkpoint first). On RunPod, a worker of a
GPU endpoint without a usable CUDA device (an old host driver, a CPU torch) refuses to
train: the job ends failed naming the cause, instead of a CPU run billed as a GPU one
(``cuda_versions`` in deploy/endpoints.toml keeps such hosts away). Any training task of
the registry runs on any training worker: the gateway routes a job to the endpoint of its
hardware class.

Key rules: building a worker loads nothing (its packages are imported by ``setup()``
under ``__main__``, once per worker, before ``runpod.serverless.start``). The handler is an
async generator that never raises: it yields the job's events as they happen (step events
thinned to one per ``STEP_EVENTS_EVERY_S``, the last step before any other event always
kept; see :class:`~fnbundle.jobs.runpod_run.StepThinner`) and ends with the job's terminal
``state`` event, or yields a single ``{"error": "<JSON>"}`` when the input is not a job or
the worker cannot set up: the gateway's error object ``{"type", "message", "field"?}``
encoded as a string, because RunPod carries a failed job's error as a string. With
``return_aggregate_stream`` a ``/runsync`` call returns the whole list. Datasets and local
base models must sit inside ``FNB_DATA_ROOTS`` (default: the volume).

Training runs in a worker thread so the SDK's event loop stays free while it runs; epoch,
model and state events go to RunPod's progress updates (``/status`` shows the latest),
step events at most once per ``PROGRESS_EVERY_S``: each update is an HTTP call to RunPod.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from importlib import import_module
from typing import Any

import runpod

from fnbundle.contract import error_result
from fnbundle.endpoints import get_endpoint
from fnbundle.errors import InvalidRequest
from fnbundle.jobs.runpod_run import run_volume_job
from fnbundle.logs import configure_logging
from fnbundle.runpod_worker import job_output, require_cuda, worker_concurrency, worker_settings
from fnbundle.settings import Settings, get_settings

PROGRESS_EVERY_S = 5.0  # seconds: the least time between two step progress updates

log = logging.getLogger("fnbundle.runpod_training")

_DONE = object()  # the training thread's last message


def on_runpod() -> bool:
    # The SDK posts progress to this URL; off RunPod it is unset and every update would
    # only log a failed post.
    return "RUNPOD_WEBHOOK_POST_OUTPUT" in os.environ


class ProgressReporter:
    """Forwards events to RunPod's progress updates: step events at most once per
    ``PROGRESS_EVERY_S``, the ``always`` types each time."""

    def __init__(self, job: dict[str, Any], always: frozenset[str] = frozenset({"eval"})):
        self.job = job
        self.always = always
        self.enabled = on_runpod()
        self.last_step_at = -math.inf  # monotonic seconds

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if not self.enabled or (kind != "step" and kind not in self.always):
            return
        if kind == "step":
            now = time.monotonic()
            if now - self.last_step_at < PROGRESS_EVERY_S:
                return
            self.last_step_at = now
        try:  # sends from a daemon thread; a failed post is the SDK's to log, not the job's
            runpod.serverless.progress_update(self.job, event)
        except Exception:
            log.warning("progress update failed", exc_info=True)


async def stream(
    job: dict[str, Any], work: Callable[[Callable[[Any], None], threading.Event], None]
) -> AsyncIterator[dict[str, Any]]:
    """Run ``work(emit, stop)`` in a thread and yield what it emits; if the run is stopped
    (RunPod cancels it), ``stop`` is set so the work ends too."""
    events: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def run() -> None:
        try:
            work(events.put, stop)
        finally:
            events.put(_DONE)

    threading.Thread(target=run, name=f"train-{job.get('id')}", daemon=True).start()
    try:
        while (event := await asyncio.to_thread(events.get)) is not _DONE:
            yield event
    finally:
        stop.set()


class TrainingWorker:
    """One training endpoint's worker: ``setup``, ``handler`` and ``start``."""

    def __init__(self, endpoint: str, stack: tuple[str, ...]):
        self.endpoint = endpoint  # its entry in deploy/endpoints.toml
        self.stack = stack  # modules imported once, before the first job
        self.settings: Settings | None = None

    def setup(self, settings: Settings | None = None) -> Settings:
        """Choose the settings and import the training stack once, before the first job."""
        self.settings = settings or worker_settings()
        for name in self.stack:
            import_module(name)
        log.info("store %s; data roots %s", self.settings.store_root, self.settings.data_roots)
        return self.settings

    def gpu_check(self) -> Callable[[], None] | None:
        """What a worker of a GPU endpoint checks before it trains: a usable CUDA device.
        None off RunPod (it sets RUNPOD_POD_ID on every worker) and on CPU endpoints: a
        local ``--rp_serve_api`` or ``--test_input`` run trains on the CPU it has."""
        spec = get_endpoint(self.endpoint).runpod
        if spec.compute != "GPU" or "RUNPOD_POD_ID" not in os.environ:
            return None
        return lambda: require_cuda(spec.cuda_versions)

    async def handler(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """One RunPod job: job events, then the terminal state, or one ``{"error": "<JSON>"}``."""
        payload = job.get("input")
        report = ProgressReporter(job, frozenset({"epoch", "model", "state"}))

        def train(emit: Callable[[Any], None], stop: threading.Event) -> None:
            try:
                if not (isinstance(payload, dict) and "job" in payload):
                    raise InvalidRequest(
                        "This worker runs training jobs only: submit one with POST /v1/jobs on "
                        'a gateway (input {"job": ..., "job_id": ...}), or `fnbundle jobs '
                        "submit`.",
                        field="input",
                    )
                settings = self.settings or self.setup()
                gpus = get_endpoint(self.endpoint).runpod.gpu_ids
                gpu = gpus[0] if gpus else None
                run_volume_job(
                    payload, settings, gpu=gpu, emit=emit, stop=stop, preflight=self.gpu_check()
                )
            except Exception as exc:  # a bad job, or setup failed: this worker cannot train
                emit(job_output(error_result(exc)[1]))

        async for event in stream(job, train):
            report(event)
            yield event

    def start(self) -> None:
        """Serve jobs: ``runpod.serverless.start`` reads RunPod's own flags
        (``--test_input``, ``--rp_serve_api``, ...) from sys.argv."""
        # force: importing runpod already configured the root logger with its own format.
        configure_logging(get_settings().log_format)  # RunPod's log stream: the gateway's lines
        concurrency = worker_concurrency(self.setup(), self.endpoint)  # runs at once
        runpod.serverless.start(
            {
                "handler": self.handler,
                "return_aggregate_stream": True,  # /runsync answers with every yielded event
                "concurrency_modifier": lambda _current: concurrency,
            }
        )
