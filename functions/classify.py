"""Modal app for ``classify``: the gateway's ``POST /v1/classify`` on autoscaling CPU containers.

    modal deploy functions/classify.py                                        # from the repo root
    modal run functions/classify.py --text "Arrived broken."                  # one request
    FNB_MODAL_SECRET=fnbundle-api-keys modal deploy functions/classify.py     # bearer keys on
    FNB_MODAL_PROXY_AUTH=1 modal deploy functions/classify.py                 # Modal proxy auth on

Key rules: a container loads its models once, in ``@modal.enter``, from the store on the
Volume (its endpoint's model unless ``FNB_PRELOAD`` names others); a request for a model
the container does not see reloads the Volume (at most once per few seconds) and looks
again, so a model published after the container started is served; the web endpoint
*is* the gateway app (``create_app``), so routes, fields, limits, bearer-key check and
error bodies are the gateway's; every scaling number comes from ``deploy/endpoints.toml``.
Importing this file loads no model and imports no torch or onnxruntime.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import modal
from fastapi import FastAPI
from fnbundle.api import create_app
from fnbundle.contract import run_task
from fnbundle.endpoints import get_endpoint
from fnbundle.runpod_worker import preload_endpoint_model
from fnbundle.runtime.host import ModelHost
from fnbundle.settings import Settings
from fnbundle.tasks import REGISTRY

from functions.images import VOLUME_DIR, cpu_image, options, volume

log = logging.getLogger("fnbundle.functions.classify")

task = REGISTRY.serving_task("classify")
endpoint = get_endpoint(task.slug)  # its entry in deploy/endpoints.toml
spec = endpoint.modal
RELOAD_ON_MISS_EVERY_S = 5.0  # seconds: the most often a model miss reloads the Volume

app = modal.App(spec.app)


def container_settings() -> Settings:
    """``FNB_*`` settings; unless ``FNB_PRELOAD`` says otherwise, preload the endpoint's model."""
    return preload_endpoint_model(Settings(), endpoint.model)


@app.cls(
    image=cpu_image,
    volumes={VOLUME_DIR: volume},
    secrets=options.secrets(),  # FNB_API_KEYS, when FNB_MODAL_SECRET names a Secret
    cpu=spec.cpu,  # cores
    memory=spec.memory_mib,  # MiB
    min_containers=spec.min_containers,  # 0: scale to zero when idle
    max_containers=spec.max_containers,
    buffer_containers=spec.buffer_containers,  # idle spares kept while under load
    scaledown_window=spec.scaledown_window_s,  # seconds a container stays up with no requests
    timeout=spec.timeout_s,  # seconds for one request
    retries=spec.retries,
    enable_memory_snapshot=spec.enable_memory_snapshot,
)
@modal.concurrent(max_inputs=spec.max_inputs, target_inputs=spec.target_inputs)
class Classifier:
    """One container: a model host whose models load before the first request."""

    @modal.enter(snap=True)
    def import_runtime(self) -> None:
        """Before a memory snapshot: import the inference runtime, but read no model.

        A snapshot outlives new model versions, so models load after the restore."""
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401

    @modal.enter(snap=False)
    def load(self) -> None:
        on_modal = not modal.is_local()
        if on_modal:
            volume.reload()  # see versions committed after this container's snapshot
        settings = container_settings()
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
        """The gateway: POST /v1/classify, GET /v1/models, /healthz, /readyz."""
        return self.web_app

    @modal.method()
    def classify(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The body ``POST /v1/classify`` answers for ``payload``, errors included as
        ``{"error": {...}}``; the HTTP status exists only on the web endpoint."""
        _status, body = run_task(
            task.request_model,
            payload,
            lambda request: self.host.serve_sync(task, request),
            self.host.settings.max_body_bytes,
        )
        return body


@app.local_entrypoint()
def main(text: str, model: str = endpoint.model or "") -> None:
    """Classify one text on the deployed app and print the body."""
    body = Classifier().classify.remote({"model": model, "texts": [text]})
    print(json.dumps(body, indent=2))  # noqa: T201 - the command's output is the body
