"""Modal app for ``train_classifier``: fine-tune, export and publish a classifier into the
Volume, as one call or as a training job behind the gateway's ``/v1/jobs`` routes.

    modal run functions/train_classifier.py --data data/reviews.csv --name sentiment
    modal deploy functions/train_classifier.py     # JobsApi.web serves /v1/jobs

The local entrypoint uploads the CSV into the Volume's datasets folder and runs ``train``
on a GPU container. ``JobsApi.web`` answers the job routes with
:class:`~fnbundle.jobs.modal_backend.ModalJobs`, which spawns ``TrainJobs.train_job``; job
records and events live in the ``fnbundle-jobs`` Dict, checkpoints under
``/vol/jobs/<job id>/checkpoints``. Key rules: ``train`` takes the same parameters as
``fnbundle train classifier`` and answers like the other runtimes (the result, or
``{"error": {...}}``); a new model version is committed to the Volume only once it is
completely published, so a serving container never sees half a model; ``train_job``
commits after every checkpoint, so the container Modal starts after a preemption resumes
instead of starting over. Importing this file imports no torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import modal
from fastapi import FastAPI
from fnbundle.contract import run_task
from fnbundle.endpoints import get_endpoint
from fnbundle.jobs.modal_backend import DICT_NAME, ModalJobs, web_app
from fnbundle.jobs.modal_run import run_modal_job
from fnbundle.jobs.submit import anchor_data
from fnbundle.settings import Settings
from fnbundle.training.text_classifier import TrainClassifierParams, train_classifier

from functions.images import DATASETS_DIR, VOLUME_DIR, gpu_image, options, volume

log = logging.getLogger("fnbundle.functions.train_classifier")

endpoint = get_endpoint("train_classifier")  # its entry in deploy/endpoints.toml
spec = endpoint.modal
STEP_LOG_EVERY = 20  # steps between progress lines in the function's log
DEFAULTS = {name: field.default for name, field in TrainClassifierParams.model_fields.items()}
JOBS_DIR = VOLUME_DIR / "jobs"  # one folder per job: /vol/jobs/<job id>/checkpoints
WEB_MAX_INPUTS = 100  # requests per web container: an event stream stays open for a whole job

app = modal.App(spec.app)
job_state = modal.Dict.from_name(DICT_NAME, create_if_missing=True)  # job records and events
gpu_function = dict(
    image=gpu_image,
    volumes={VOLUME_DIR: volume},
    gpu=spec.gpu,
    cpu=spec.cpu,  # cores: tokenization and the ONNX parity check run on CPU
    memory=spec.memory_mib,  # MiB
    min_containers=spec.min_containers,
    max_containers=spec.max_containers,
    scaledown_window=spec.scaledown_window_s,  # seconds an idle container stays up
    timeout=spec.timeout_s,  # seconds for one training run
    retries=spec.retries,  # a preempted or crashed container runs the job again
)


def log_event(event: dict[str, Any]) -> None:
    if event.get("type") != "step" or event["step"] % STEP_LOG_EVERY == 0:
        log.info("%s", json.dumps(event))


@app.function(**gpu_function)
def train(params: dict[str, Any]) -> dict[str, Any]:
    """Train and publish; return the TrainResult body or ``{"error": {...}}``.

    A relative ``data`` path names a file under the first data root (on Modal: the Volume's
    datasets folder, where the local entrypoint uploads it)."""
    settings = Settings()
    _status, body = run_task(
        TrainClassifierParams,
        anchor_data(params, settings),
        lambda p: train_classifier(p, settings, log_event),
    )
    if "error" not in body and not modal.is_local():
        volume.commit()  # publish to every container that mounts the Volume
    return body


def jobs_root() -> Path:
    """Job folders (checkpoints): on the Volume in a container, FNB_JOBS_DIR when local."""
    return Settings().jobs_root if modal.is_local() else Path(JOBS_DIR)


def commit_volume() -> None:
    if not modal.is_local():
        volume.commit()


def reload_volume() -> None:
    if not modal.is_local():
        volume.reload()  # see checkpoints and datasets committed by other containers


@app.cls(**gpu_function)
class TrainJobs:
    """The training side of ``/v1/jobs``: one job per call, spawned by ModalJobs."""

    @modal.method()
    def train_job(self, job_id: str, submit: dict[str, Any]) -> dict[str, Any]:
        """Run (or resume) job ``job_id``; ``submit`` is its JobSubmit JSON, read only when
        the Dict has no record of it. Returns the job as JSON."""
        reload_volume()
        return run_modal_job(
            job_id, submit, Settings(), job_state, jobs_root=jobs_root(), commit=commit_volume
        )


def spawn_job(job_id: str, submit: dict[str, Any]) -> str:
    return str(TrainJobs().train_job.spawn(job_id, submit).object_id)


@app.cls(
    image=gpu_image,  # the training packages: a submit estimates from the base model's files
    volumes={VOLUME_DIR: volume},
    secrets=options.secrets(),  # FNB_API_KEYS, when FNB_MODAL_SECRET names a Secret
    min_containers=spec.min_containers,
    scaledown_window=spec.scaledown_window_s,  # seconds an idle container stays up
)
@modal.concurrent(max_inputs=WEB_MAX_INPUTS)
class JobsApi:
    """``/v1/jobs`` on Modal: the gateway's job routes, backed by ModalJobs."""

    @modal.enter()
    def build(self) -> None:
        reload_volume()
        settings = Settings()
        jobs = ModalJobs(
            settings, spawn=spawn_job, state=job_state, gpu=spec.gpu, refresh=reload_volume
        )
        self.web_app = web_app(settings, jobs)

    @modal.asgi_app(requires_proxy_auth=options.proxy_auth)
    def web(self) -> FastAPI:
        return self.web_app


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
