"""Modal app for ``train_classifier``: fine-tune, export and publish a classifier into the Volume.

    modal run functions/train_classifier.py --data data/reviews.csv --name sentiment

The local entrypoint uploads the CSV into the Volume's datasets folder and runs ``train``
on a GPU container; a Python caller can ``train.spawn(params)`` and keep the call id as the
job id. Key rules: ``train`` takes the same parameters as ``fnbundle train classifier`` and
answers like the other runtimes (the result, or ``{"error": {...}}``); the new version is
committed to the Volume only once it is completely published, so a serving container never
sees half a model. Importing this file imports no torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import modal
from fnbundle.contract import run_task
from fnbundle.endpoints import get_endpoint
from fnbundle.settings import Settings
from fnbundle.training.text_classifier import TrainClassifierParams, train_classifier

from functions.images import DATASETS_DIR, VOLUME_DIR, gpu_image, volume

log = logging.getLogger("fnbundle.functions.train_classifier")

endpoint = get_endpoint("train_classifier")  # its entry in deploy/endpoints.toml
spec = endpoint.modal
STEP_LOG_EVERY = 20  # steps between progress lines in the function's log
DEFAULTS = {name: field.default for name, field in TrainClassifierParams.model_fields.items()}

app = modal.App(spec.app)


def log_event(event: dict[str, Any]) -> None:
    if event.get("type") != "step" or event["step"] % STEP_LOG_EVERY == 0:
        log.info("%s", json.dumps(event))


@app.function(
    image=gpu_image,
    volumes={VOLUME_DIR: volume},
    gpu=spec.gpu,
    cpu=spec.cpu,  # cores: tokenization and the ONNX parity check run on CPU
    memory=spec.memory_mib,  # MiB
    min_containers=spec.min_containers,
    max_containers=spec.max_containers,
    scaledown_window=spec.scaledown_window_s,  # seconds an idle container stays up
    timeout=spec.timeout_s,  # seconds for one training run
    retries=spec.retries,  # a preempted container runs the job again
)
def train(params: dict[str, Any]) -> dict[str, Any]:
    """Train and publish; return the TrainResult body or ``{"error": {...}}``.

    A relative ``data`` path names a file under the first data root (on Modal: the Volume's
    datasets folder, where the local entrypoint uploads it)."""
    settings = Settings()
    data = params.get("data")
    if isinstance(data, str) and data and not Path(data).is_absolute() and settings.data_roots:
        params = {**params, "data": str(settings.data_roots[0] / data)}
    _status, body = run_task(
        TrainClassifierParams, params, lambda p: train_classifier(p, settings, log_event)
    )
    if "error" not in body and not modal.is_local():
        volume.commit()  # publish to every container that mounts the Volume
    return body


@app.local_entrypoint()
def main(
    data: str,
    name: str,
    base: str = DEFAULTS["base"],
    epochs: int = DEFAULTS["epochs"],
    learning_rate: float = DEFAULTS["learning_rate"],
    batch_size: int = DEFAULTS["batch_size"],
    max_length: int = DEFAULTS["max_length"],
    seed: int = DEFAULTS["seed"],
) -> None:
    """Upload ``data`` into the Volume, train on Modal, print the result as JSON."""
    local = Path(data)
    if not local.is_file():
        raise SystemExit(f"{data}: no such file")
    with volume.batch_upload(force=True) as batch:  # force: a re-run replaces the upload
        batch.put_file(local, f"/{DATASETS_DIR.relative_to(VOLUME_DIR)}/{local.name}")
    params = {
        "data": local.name,
        "name": name,
        "base": base,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "max_length": max_length,
        "seed": seed,
    }
    result = train.remote(params)
    print(json.dumps(result, indent=2))  # noqa: T201 - the command's output is the result
    if "error" in result:
        raise SystemExit(1)
