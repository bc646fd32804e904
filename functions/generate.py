"""Modal app for ``generate``: OpenAI-compatible chat and completions on a GPU with vLLM.

    modal deploy functions/generate.py                                        # from the repo root
    modal run functions/generate.py --prompt "Write a haiku about GPUs."      # one request
    FNB_MODAL_SECRET=fnbundle-api-keys modal deploy functions/generate.py     # bearer keys on

The web endpoint is the gateway app, so the OpenAI SDK works against it unchanged::

    OpenAI(base_url="https://<workspace>--fnbundle-generate-generator-web.modal.run/v1",
           api_key="<a key of FNB_API_KEYS>")

The base model (the endpoint's ``model``, imported into the store on the Volume with
``fnbundle models import``) loads once per container, before the memory snapshot: with
``enable_memory_snapshot`` and Modal's GPU snapshot, a cold start restores the loaded engine
(weights on the GPU, CUDA graphs captured) instead of loading 15 GB again. Adapters are
read from the Volume when first requested, after the restore, so a newly published
adapter version is served without a redeploy. The GPU is the endpoint's ``modal.gpu``, or
the cheapest the sizing finds for its ``llm`` table; every scaling number comes from
``deploy/endpoints.toml``. Importing this file loads no model and imports no vLLM.
"""

from __future__ import annotations

import json
from typing import Any

import modal
from fastapi import FastAPI
from fnbundle.api import create_app
from fnbundle.endpoints import Endpoint, get_endpoint, llm_env
from fnbundle.runpod_openai import call_app
from fnbundle.runtime.host import ModelHost
from fnbundle.tasks import REGISTRY

from functions.images import options, vllm_image, volume
from functions.serving import RELOAD_ON_MISS_EVERY_S, container_options, container_settings

MINUTES = 60  # seconds
# Loading a 7-8B base from the Volume and capturing CUDA graphs, on the first cold start
# (restores from the snapshot take seconds).
STARTUP_TIMEOUT_S = 20 * MINUTES

TASK = REGISTRY.serving_task("generate")
ENDPOINT = get_endpoint(TASK.slug)  # its entry in deploy/endpoints.toml


def gpu_options(endpoint: Endpoint) -> dict[str, Any]:
    """``@app.cls`` arguments: the serving container's, on the endpoint's GPU (declared or
    sized) in the vLLM image, the ``llm`` table's serving keys as settings, and a GPU
    memory snapshot when the endpoint takes snapshots."""
    sizing = endpoint.llm_gpus()
    if sizing is None:
        raise RuntimeError(f"[endpoints.{endpoint.name}] needs an llm table to size its GPU")
    snapshot = endpoint.modal.enable_memory_snapshot
    return {
        **container_options(endpoint),
        "image": vllm_image,
        "gpu": sizing["modal_gpu"],
        "env": llm_env(endpoint.llm),  # FNB_GENERATE_BACKEND=vllm, context, batch, adapters
        "startup_timeout": STARTUP_TIMEOUT_S,
        "experimental_options": {"enable_gpu_snapshot": True} if snapshot else {},
    }


app = modal.App(ENDPOINT.modal.app)


@app.cls(**gpu_options(ENDPOINT))
@modal.concurrent(max_inputs=ENDPOINT.modal.max_inputs, target_inputs=ENDPOINT.modal.target_inputs)
class Generator:
    """One container: the endpoint's base model on vLLM, behind the gateway app."""

    @modal.enter(snap=True)
    def load(self) -> None:
        """Load the base before the snapshot: a GPU snapshot keeps the engine resident."""
        on_modal = not modal.is_local()
        if on_modal:
            volume.reload()
        settings = container_settings(ENDPOINT)
        self.host = ModelHost(
            settings,
            refresh=volume.reload if on_modal else None,
            refresh_every_s=RELOAD_ON_MISS_EVERY_S,
        )
        self.host.mark_preloaded(self.host.preload())  # /readyz is ready from the first request
        self.web_app = create_app(settings, host=self.host, jobs=False)

    @modal.enter(snap=False)
    def see_new_versions(self) -> None:
        """After a restore: adapters published since the snapshot are on the Volume."""
        if not modal.is_local():
            volume.reload()

    @modal.asgi_app(requires_proxy_auth=options.proxy_auth)
    def web(self) -> FastAPI:
        """The gateway: /v1/chat/completions, /v1/completions, GET /v1/models, /readyz."""
        return self.web_app

    @modal.method()
    async def chat(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The body ``POST /v1/chat/completions`` answers for ``payload`` (not streamed),
        errors in OpenAI's shape."""
        response = await call_app(self.web_app, "POST", TASK.route, json.dumps(payload).encode())
        return json.loads(b"".join([chunk async for chunk in response.chunks]))


@app.local_entrypoint()
def main(prompt: str, model: str = ENDPOINT.model or "", max_tokens: int = 128) -> None:
    """Ask the deployed app one chat question and print the body."""
    body = Generator().chat.remote(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        }
    )
    print(json.dumps(body, indent=2))  # noqa: T201 - the command's output is the body
