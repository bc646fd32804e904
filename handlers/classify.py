"""RunPod worker for ``classify``: a job's ``input`` in, the gateway's response body out.

Key rules: importing this file loads nothing (no model, no onnxruntime, no torch), so
tests and tools can import it; under ``__main__`` the store's models load once, before
``runpod.serverless.start``. The handler never raises: bad input and failures come back
as ``{"error": "<JSON>"}``, the gateway's error object ``{"type", "message", "field"?}``
encoded as a string, because RunPod carries a failed job's error as a string (its dev
server refuses anything else); the ``type`` stands for the HTTP status a job has no place
for. A worker preloads its endpoint's model (``model`` in deploy/endpoints.toml) unless
``FNB_PRELOAD`` names others. The handler is async, so one worker runs
``FNB_WORKER_CONCURRENCY`` jobs at once (default: the endpoint's ``concurrency``) and
concurrent jobs share forward passes in the dynamic batcher.

    python handlers/classify.py --test_input '{"input": {"model": "sentiment", "texts": ["great"]}}'
    python handlers/classify.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8010
"""

from __future__ import annotations

import logging
from typing import Any

import runpod
from fnbundle.contract import error_result, run_task_async
from fnbundle.endpoints import get_endpoint
from fnbundle.runpod_worker import (
    job_output,
    preload_endpoint_model,
    worker_concurrency,
    worker_settings,
)
from fnbundle.runtime.host import ModelHost
from fnbundle.settings import Settings
from fnbundle.tasks import REGISTRY

TASK = REGISTRY.serving_task("classify")
ENDPOINT = TASK.slug  # its entry in deploy/endpoints.toml

log = logging.getLogger("fnbundle.handlers.classify")

# Built by setup(): under __main__ before the worker starts, or by the first job when a
# test imports the handler and calls it directly.
_service: ModelHost | None = None


def setup(settings: Settings | None = None) -> ModelHost:
    """Build the model host and load its models (``FNB_PRELOAD``, default: the endpoint's)."""
    global _service
    if settings is None:
        settings = preload_endpoint_model(worker_settings(), get_endpoint(ENDPOINT).model)
    service = ModelHost(settings)
    status = service.preload()
    log.info("store %s; models: %s", service.settings.store_root, status or "(store is empty)")
    _service = service
    return service


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """One RunPod job: the ``/v1/classify`` response body, or ``{"error": "<JSON>"}``."""
    try:
        service = _service or setup()
    except Exception as exc:  # no settings or store: answer the job, log the cause
        return job_output(error_result(exc)[1])
    _status, body = await run_task_async(
        TASK.request_model,
        job.get("input"),
        lambda request: service.serve(TASK, request),
        service.settings.max_body_bytes,
    )
    return job_output(body)


if __name__ == "__main__":
    # force: importing runpod already configured the root logger with its own format.
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)-7s| %(name)s | %(message)s", force=True
    )
    concurrency = worker_concurrency(setup().settings, ENDPOINT)  # jobs at once per worker
    # start() reads RunPod's own flags (--test_input, --rp_serve_api, ...) from sys.argv.
    runpod.serverless.start(
        {"handler": handler, "concurrency_modifier": lambda _current: concurrency}
    )
