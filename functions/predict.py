"""Modal app for ``predict``: the gateway's ``POST /v1/predict`` on autoscaling CPU containers.

    modal deploy functions/predict.py                                         # from the repo root
    modal run functions/predict.py --row '{"plan": "pro", "seats": 4, ...}'   # one request
    FNB_MODAL_SECRET=fnbundle-api-keys modal deploy functions/predict.py      # bearer keys on

The container's life cycle is ``functions/serving.py``'s (as for ``classify``); every
scaling number comes from ``deploy/endpoints.toml``. Importing this file loads no model
and imports no onnxruntime.
"""

from __future__ import annotations

import json
from typing import Any

import modal
from fnbundle.endpoints import get_endpoint
from fnbundle.tasks import REGISTRY

from functions.serving import ServingContainer, container_options

TASK = REGISTRY.serving_task("predict")
ENDPOINT = get_endpoint(TASK.slug)  # its entry in deploy/endpoints.toml

app = modal.App(ENDPOINT.modal.app)


@app.cls(**container_options(ENDPOINT))
@modal.concurrent(max_inputs=ENDPOINT.modal.max_inputs, target_inputs=ENDPOINT.modal.target_inputs)
class Predictor(ServingContainer):
    """One container: a model host whose tabular models load before the first request."""

    task = TASK
    endpoint = ENDPOINT

    @modal.method()
    def predict(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The body ``POST /v1/predict`` answers for ``payload`` (errors in the same shape)."""
        return self.answer(payload)


@app.local_entrypoint()
def main(row: str, model: str = ENDPOINT.model or "") -> None:
    """Predict one row (a JSON object) on the deployed app and print the body."""
    body = Predictor().predict.remote({"model": model, "rows": [json.loads(row)]})
    print(json.dumps(body, indent=2))  # noqa: T201 - the command's output is the body
