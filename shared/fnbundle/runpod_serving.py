"""What every RunPod serving worker shares: a model host, the handler, the worker's start.

A serving task's worker (``handlers/<task>.py``) is ``worker = ServingWorker("<task>")``,
its ``setup`` and ``handler``, and ``worker.start()`` under ``__main__``.

Key rules: building a worker loads nothing (no model, no onnxruntime, no torch, not even
the RunPod SDK), so tests and tools can import a handler file; :meth:`ServingWorker.start`
loads the store's models once (the endpoint's model unless ``FNB_PRELOAD`` names others),
then hands the handler to ``runpod.serverless.start``. The handler never raises: bad input
and failures come back as ``{"error": "<JSON>"}``, the gateway's error object in the task's
style (ours ``{"type", "message", "field"?}``, or OpenAI's ``{"message", "type", "param",
"code"}``) encoded as a string, because RunPod carries a failed job's error as a string
(its dev server refuses anything else). The handler is async, so one worker runs
``FNB_WORKER_CONCURRENCY`` jobs at once (default: the endpoint's ``concurrency``) and
concurrent jobs share forward passes in the dynamic batcher.
"""

from __future__ import annotations

import logging
from typing import Any

from fnbundle.api.errors import openai_error_body
from fnbundle.contract import error_result, run_task_async
from fnbundle.endpoints import get_endpoint
from fnbundle.logs import configure_logging
from fnbundle.runpod_worker import (
    job_output,
    preload_endpoint_model,
    worker_concurrency,
    worker_settings,
)
from fnbundle.runtime.host import ModelHost
from fnbundle.settings import Settings, get_settings
from fnbundle.tasks import REGISTRY


class ServingWorker:
    """One RunPod worker of the serving task ``slug`` (its endpoint has the same name)."""

    def __init__(self, slug: str):
        self.task = REGISTRY.serving_task(slug)
        self.endpoint = slug  # its entry in deploy/endpoints.toml
        self.log = logging.getLogger(f"fnbundle.handlers.{slug}")
        # Built by setup(): by start() before the worker takes jobs, or by the first job
        # when a test imports the handler and calls it directly.
        self.host: ModelHost | None = None

    def setup(self, settings: Settings | None = None) -> ModelHost:
        """Build the model host and load its models (``FNB_PRELOAD``, default: the endpoint's)."""
        if settings is None:
            settings = preload_endpoint_model(worker_settings(), get_endpoint(self.endpoint).model)
        host = ModelHost(settings)
        status = host.preload()
        self.log.info("store %s; models: %s", settings.store_root, status or "(store is empty)")
        self.host = host
        return host

    async def handler(self, job: dict[str, Any]) -> dict[str, Any]:
        """One RunPod job: the body the task's route answers, or ``{"error": "<JSON>"}``."""
        try:
            host = self.host or self.setup()
            status, body = await run_task_async(
                self.task.request_model,
                job.get("input"),
                lambda request: host.serve(self.task, request),
                host.settings.max_body_bytes,
            )
        except Exception as exc:  # no settings or store: answer the job, log the cause
            status, body = error_result(exc)
        if status != 200 and self.task.error_style == "openai":
            body = openai_error_body(status, body)
        return job_output(body)

    def start(self) -> None:
        """Load the models, then serve jobs (``--test_input``, ``--rp_serve_api`` and
        RunPod's other flags are read from ``sys.argv`` by the SDK)."""
        import runpod

        # force: importing runpod already configured the root logger with its own format.
        configure_logging(get_settings().log_format)  # RunPod's log stream: the gateway's lines
        concurrency = worker_concurrency(self.setup().settings, self.endpoint)
        runpod.serverless.start(
            {"handler": self.handler, "concurrency_modifier": lambda _current: concurrency}
        )
