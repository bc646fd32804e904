"""RunPod worker for ``embed``: a job's ``input`` in, the ``/v1/embeddings`` body out.

Key rules: as ``handlers/classify.py``: importing this file loads nothing (no model, no
onnxruntime), under ``__main__`` the store's models load once before
``runpod.serverless.start``, and the handler never raises. Its errors are in OpenAI's
shape, as the gateway's ``/v1/embeddings`` answers them (``{"message", "type", "param",
"code"}``), encoded as a JSON string under ``error`` because RunPod carries a failed
job's error as a string. A worker preloads its endpoint's model (``minilm``) unless
``FNB_PRELOAD`` names others; concurrent jobs share forward passes in the batcher.

    python handlers/embed.py --test_input '{"input": {"model": "minilm", "input": "hello"}}'
    python handlers/embed.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8011
"""

from __future__ import annotations

import logging
from typing import Any

import runpod
from fnbundle.api.errors import openai_error_body
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

TASK = REGISTRY.serving_task("embed")
ENDPOINT = TASK.slug  # its entry in deploy/endpoints.toml

log = logging.getLogger("fnbundle.handlers.embed")

# Built by setup(): under __main__ before the worker starts, or by the first job when a
# test imports the handler and calls it directly.
_host: ModelHost | None = None


def setup(settings: Settings | None = None) -> ModelHost:
    """Build the model host and load its models (``FNB_PRELOAD``, default: the endpoint's)."""
    global _host
    if settings is None:
        settings = preload_endpoint_model(worker_settings(), get_endpoint(ENDPOINT).model)
    host = ModelHost(settings)
    status = host.preload()
    log.info("store %s; models: %s", host.settings.store_root, status or "(store is empty)")
    _host = host
    return host


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """One RunPod job: the ``/v1/embeddings`` body, or ``{"error": "<JSON>"}``."""
    try:
        host = _host or setup()
        status, body = await run_task_async(
            TASK.request_model,
            job.get("input"),
            lambda request: host.serve(TASK, request),
            host.settings.max_body_bytes,
        )
    except Exception as exc:  # no settings or store: answer the job, log the cause
        status, body = error_result(exc)
    return job_output(body if status == 200 else openai_error_body(status, body))


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
