"""What every Modal serving app shares: the container class's options and its life cycle.

A serving task's app (``functions/<task>.py``) declares ``app``, a class that subclasses
:class:`ServingContainer` naming its registry task and endpoint, decorated with
``@app.cls(**container_options(endpoint))`` and ``@modal.concurrent(...)``, and one
``@modal.method()`` that returns :meth:`ServingContainer.answer`. Modal finds the enter
hooks and the web endpoint defined here through the class's MRO.

Key rules: a container loads its models once, in ``@modal.enter``, from the store on the
Volume (its endpoint's model unless ``FNB_PRELOAD`` names others); a request for a model the
container does not see reloads the Volume (at most once per ``RELOAD_ON_MISS_EVERY_S``) and
looks again, so a model published after the container started is served; the web endpoint
*is* the gateway app (``create_app``), so routes, fields, limits, bearer-key check and error
bodies (the task's style) are the gateway's; every scaling number comes from
``deploy/endpoints.toml``. Importing this file loads no model and imports no inference
runtime.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any, ClassVar

import modal
from fastapi import FastAPI
from fnbundle.api import create_app
from fnbundle.api.errors import openai_error_body
from fnbundle.contract import run_task
from fnbundle.endpoints import Endpoint
from fnbundle.logs import configure_logging
from fnbundle.runpod_worker import preload_endpoint_model
from fnbundle.runtime.host import ModelHost
from fnbundle.settings import Settings
from fnbundle.tasks.base import ServingTask

from functions.images import VOLUME_DIR, cpu_image, options, volume

log = logging.getLogger("fnbundle.functions.serving")

RELOAD_ON_MISS_EVERY_S = 5.0  # seconds: the most often a model miss reloads the Volume
RUNTIME_MODULES = ("onnxruntime", "tokenizers")  # imported before a memory snapshot


def container_options(endpoint: Endpoint) -> dict[str, Any]:
    """``@app.cls`` arguments of a serving endpoint, from its declaration."""
    spec = endpoint.modal
    return {
        "image": cpu_image,
        "volumes": {VOLUME_DIR: volume},
        "secrets": options.secrets(),  # FNB_API_KEYS, when FNB_MODAL_SECRET names a Secret
        "cpu": spec.cpu,  # cores
        "memory": spec.memory_mib,  # MiB
        "min_containers": spec.min_containers,  # 0: scale to zero when idle
        "max_containers": spec.max_containers,
        "buffer_containers": spec.buffer_containers,  # idle spares kept while under load
        "scaledown_window": spec.scaledown_window_s,  # seconds up with no requests
        "timeout": spec.timeout_s,  # seconds for one request
        "retries": spec.retries,
        "enable_memory_snapshot": spec.enable_memory_snapshot,
    }


def container_settings(endpoint: Endpoint) -> Settings:
    """``FNB_*`` settings; unless ``FNB_PRELOAD`` says otherwise, preload the endpoint's model."""
    return preload_endpoint_model(Settings(), endpoint.model)


class ServingContainer:
    """One container of a serving task: a model host whose models load before the first
    request. Subclasses set :attr:`task` and :attr:`endpoint`."""

    task: ClassVar[ServingTask[Any, Any, Any]]
    endpoint: ClassVar[Endpoint]

    @modal.enter(snap=True)
    def import_runtime(self) -> None:
        """Before a memory snapshot: import the inference runtime, but read no model.

        A snapshot outlives new model versions, so models load after the restore."""
        for module in RUNTIME_MODULES:
            import_module(module)

    @modal.enter(snap=False)
    def load(self) -> None:
        on_modal = not modal.is_local()
        if on_modal:
            volume.reload()  # see versions committed after this container's snapshot
        settings = container_settings(self.endpoint)
        configure_logging(settings.log_format)  # Modal's log stream: the gateway's lines
        # A model published after this container started is on the Volume but not in this
        # container's view of it: a miss reloads the Volume (rate-limited) and looks again.
        self.host = ModelHost(
            settings,
            refresh=volume.reload if on_modal else None,
            refresh_every_s=RELOAD_ON_MISS_EVERY_S,
        )
        status = self.host.preload()
        self.host.mark_preloaded(status)  # /readyz is ready from the first request
        log.info("store %s; models: %s", settings.store_root, status or "(store is empty)")
        self.web_app = create_app(settings, host=self.host, jobs=False)

    @modal.asgi_app(requires_proxy_auth=options.proxy_auth)
    def web(self) -> FastAPI:
        """The gateway: the task's route, GET /v1/models, /healthz, /readyz."""
        return self.web_app

    def answer(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The body the task's route answers for ``payload``, errors in the task's style
        (ours, or OpenAI's ``{"error": {...}}``); the HTTP status exists only on the web
        endpoint."""
        task = self.task
        status, body = run_task(
            task.request_model,
            payload,
            lambda request: self.host.serve_sync(task, request),
            self.host.settings.max_body_bytes,
        )
        if status != 200 and task.error_style == "openai":
            return openai_error_body(status, body)
        return body
