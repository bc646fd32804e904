"""Modal app for ``classify``: the gateway's ``POST /v1/classify`` on autoscaling CPU containers.

    modal deploy functions/classify.py                                        # from the repo root
    modal run functions/classify.py --text "Arrived broken."                  # one request
    FNB_MODAL_SECRET=fnbundle-api-keys modal deploy functions/classify.py     # bearer keys on
    FNB_MODAL_PROXY_AUTH=1 modal deploy functions/classify.py                 # Modal proxy auth on

The container's life cycle (models loaded once in ``@modal.enter``, the Volume reloaded on
a model miss, the gateway app as the web endpoint) is ``functions/serving.py``'s; every
scaling number comes from ``deploy/endpoints.toml``. Importing this file loads no model and
imports no torch or onnxruntime.
"""

from __future__ import annotations

import json
from typing import Any

import modal
from fnbundle.endpoints import get_endpoint
from fnbundle.tasks import REGISTRY

from functions.serving import ServingContainer, container_options

TASK = REGISTRY.serving_task("classify")
ENDPOINT = get_endpoint(TASK.slug)  # its entry in deploy/endpoints.toml

app = modal.App(ENDPOINT.modal.app)


@app.cls(**container_options(ENDPOINT))
@modal.concurrent(max_inputs=ENDPOINT.modal.max_inputs, target_inputs=ENDPOINT.modal.target_inputs)
class Classifier(ServingContainer):
    """One container: a model host whose models load before the first request."""

    task = TASK
    endpoint = ENDPOINT

    @modal.method()
    def classify(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The body ``POST /v1/classify`` answers for ``payload``, errors included."""
        return self.answer(payload)


@app.local_entrypoint()
def main(text: str, model: str = ENDPOINT.model or "") -> None:
    """Classify one text on the deployed app and print the body."""
    body = Classifier().classify.remote({"model": model, "texts": [text]})
    print(json.dumps(body, indent=2))  # noqa: T201 - the command's output is the body
