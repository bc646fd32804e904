"""Modal app for ``embed``: the gateway's ``POST /v1/embeddings`` on autoscaling CPU containers.

    modal deploy functions/embed.py                                           # from the repo root
    modal run functions/embed.py --text "The quick brown fox."                # one request
    FNB_MODAL_SECRET=fnbundle-api-keys modal deploy functions/embed.py        # bearer keys on

The container's life cycle is ``functions/serving.py``'s (as for ``classify``), errors in
OpenAI's shape; every scaling number comes from ``deploy/endpoints.toml``. Importing this
file loads no model and imports no onnxruntime.
"""

from __future__ import annotations

import json
from typing import Any

import modal
from fnbundle.endpoints import get_endpoint
from fnbundle.tasks import REGISTRY

from functions.serving import ServingContainer, container_options

TASK = REGISTRY.serving_task("embed")
ENDPOINT = get_endpoint(TASK.slug)  # its entry in deploy/endpoints.toml

app = modal.App(ENDPOINT.modal.app)


@app.cls(**container_options(ENDPOINT))
@modal.concurrent(max_inputs=ENDPOINT.modal.max_inputs, target_inputs=ENDPOINT.modal.target_inputs)
class Embedder(ServingContainer):
    """One container: a model host whose embedding models load before the first request."""

    task = TASK
    endpoint = ENDPOINT

    @modal.method()
    def embed(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The body ``POST /v1/embeddings`` answers for ``payload``, errors in OpenAI's shape."""
        return self.answer(payload)


@app.local_entrypoint()
def main(text: str, model: str = ENDPOINT.model or "") -> None:
    """Embed one text on the deployed app and print the body."""
    body = Embedder().embed.remote({"model": model, "input": text})
    print(json.dumps(body, indent=2))  # noqa: T201 - the command's output is the body
