"""RunPod worker for ``train_classifier``: one job trains, publishes and streams its progress.

Key rules: importing this file loads nothing (torch and transformers are imported by
``setup()`` under ``__main__``, once per worker, before ``runpod.serverless.start``). The
handler is an async generator that never raises: it yields the trainer's typed events
(``{"type": "start" | "step" | "eval" | "log" | "published", ...}``) as they happen, then
exactly one ``{"type": "result", "model_id", "metrics", ...}``, or a single
``{"error": "<JSON>"}`` when the input is bad or training fails: the gateway's error
object ``{"type", "message", "field"?}`` encoded as a string, because RunPod carries a
failed job's error as a string (a yielded error object would reach the caller as its
Python repr). With ``return_aggregate_stream`` a ``/runsync`` call returns the whole list.
Datasets and local base models must sit inside ``FNB_DATA_ROOTS`` (default: the volume).

Training runs in a worker thread so the SDK's event loop stays free while it runs; step
and eval events also go to RunPod's progress updates (``/status`` shows the latest), step
events at most once per ``PROGRESS_EVERY_S``: each update is an HTTP call to RunPod.

    python handlers/train_classifier.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8011
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import threading
import time
from collections.abc import AsyncIterator
from importlib import import_module
from typing import Any

import runpod
from fnbundle.contract import error_result, run_task
from fnbundle.endpoints import get_endpoint
from fnbundle.runpod_worker import job_output, worker_settings
from fnbundle.settings import Settings
from fnbundle.training.text_classifier import TrainClassifierParams, train_classifier

ENDPOINT = "train_classifier"  # its entry in deploy/endpoints.toml
PROGRESS_EVERY_S = 5.0  # seconds: the least time between two step progress updates

log = logging.getLogger("fnbundle.handlers.train_classifier")

_settings: Settings | None = None
_DONE = object()  # the training thread's last message


def setup(settings: Settings | None = None) -> Settings:
    """Choose the settings and import the training stack once, before the first job."""
    global _settings
    _settings = settings or worker_settings()
    for name in ("torch", "transformers"):
        import_module(name)
    log.info("store %s; data roots %s", _settings.store_root, _settings.data_roots)
    return _settings


def on_runpod() -> bool:
    # The SDK posts progress to this URL; off RunPod it is unset and every update would
    # only log a failed post.
    return "RUNPOD_WEBHOOK_POST_OUTPUT" in os.environ


class ProgressReporter:
    """Forwards step events (rate-limited) and eval events to RunPod's progress updates."""

    def __init__(self, job: dict[str, Any]):
        self.job = job
        self.enabled = on_runpod()
        self.last_step_at = -math.inf  # monotonic seconds

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled or event.get("type") not in {"step", "eval"}:
            return
        if event["type"] == "step":
            now = time.monotonic()
            if now - self.last_step_at < PROGRESS_EVERY_S:
                return
            self.last_step_at = now
        try:  # sends from a daemon thread; a failed post is the SDK's to log, not the job's
            runpod.serverless.progress_update(self.job, event)
        except Exception:
            log.warning("progress update failed", exc_info=True)


def final_event(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """The last event: the result, or the error body with its object as a JSON string."""
    if status == 200:
        return {"type": "result", **body}
    return job_output(body)


async def handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """One RunPod job: progress events, then the result or one ``{"error": "<JSON>"}``."""
    events: queue.Queue[Any] = queue.Queue()

    def train() -> None:
        try:
            settings = _settings or setup()
            status, body = run_task(
                TrainClassifierParams,
                job.get("input"),
                lambda params: train_classifier(params, settings, events.put),
                settings.max_body_bytes,
            )
        except Exception as exc:  # setup failed: this worker cannot train at all
            status, body = error_result(exc)
        events.put(final_event(status, body))
        events.put(_DONE)

    threading.Thread(target=train, name=f"train-{job.get('id')}", daemon=True).start()
    report = ProgressReporter(job)
    while (event := await asyncio.to_thread(events.get)) is not _DONE:
        report(event)
        yield event


if __name__ == "__main__":
    # force: importing runpod already configured the root logger with its own format.
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)-7s| %(name)s | %(message)s", force=True
    )
    setup()
    concurrency = get_endpoint(ENDPOINT).runpod.concurrency  # training runs at once per worker
    # start() reads RunPod's own flags (--test_input, --rp_serve_api, ...) from sys.argv.
    runpod.serverless.start(
        {
            "handler": handler,
            "return_aggregate_stream": True,  # /runsync answers with every yielded event
            "concurrency_modifier": lambda _current: concurrency,
        }
    )
