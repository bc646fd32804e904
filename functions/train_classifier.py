"""Modal app for ``train_classifier``: fine-tune, export and publish a classifier into the
Volume as a training job (on a GPU), and the job API every training task shares.

    modal deploy functions/train_classifier.py     # JobsApi.web serves /v1/jobs
    modal run --detach functions/train_classifier.py --data data/reviews.csv --name sentiment

The local entrypoint uploads the CSV into the Volume's datasets folder, submits a job to
``TrainJobs.train_job`` and follows it in the terminal; ``--detach`` keeps the job running
if the terminal goes (then watch it with ``fnbundle jobs watch <id>`` against JobsApi).
``JobsApi.web`` answers the job routes (and ``/v1/datasets``: an upload is committed to
the Volume before it is answered) with
:class:`~fnbundle.jobs.modal_backend.ModalJobs`, which spawns each job on the training
function of its hardware class: ``TrainJobs.train_job`` here for GPU jobs, the deployed
``functions/train_tabular.py``'s ``TabularJobs.train_job`` for CPU jobs (looked up by
name when a job is spawned). Job records and events live in the ``fnbundle-jobs`` Dict,
checkpoints under ``/vol/jobs/<job id>/checkpoints``.

Key rules (the Volume commits and time limits are :mod:`functions.training`'s): Modal
retries nothing (``retries=0``): a preempted input restarts and resumes from its last
committed checkpoint. On Modal, a container without a usable CUDA device fails the job
before training instead of training on its CPU. JobsApi's timeout is the declaration's
``web_timeout_s``, and its event streams end cleanly before it (clients reconnect with
``Last-Event-ID``). Importing this file imports no torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import modal
from fastapi import FastAPI
from fnbundle.api.jobs_app import jobs_app
from fnbundle.dataset_sync import VolumeDatasets
from fnbundle.endpoints import get_endpoint
from fnbundle.jobs.modal_backend import DICT_NAME, ModalJobs
from fnbundle.settings import Settings
from fnbundle.tasks import REGISTRY
from fnbundle.tasks.train_classifier.params import TrainClassifierParams

from functions.images import VOLUME_DIR, gpu_image, options, volume
from functions.training import (
    commit_volume,
    execution_limit_s,
    gpu_preflight,
    job_function_options,
    reload_volume,
    run_job,
    submit_from_terminal,
)

log = logging.getLogger("fnbundle.functions.train_classifier")

endpoint = get_endpoint("train_classifier")  # its entry in deploy/endpoints.toml
spec = endpoint.modal
# The hardware class TrainJobs serves: ModalJobs routes each job to the function of its
# task's class, so another class's tasks get their own function and GPU.
HARDWARE = REGISTRY.training["train_classifier"].hardware
DEFAULTS = {name: field.default for name, field in TrainClassifierParams.model_fields.items()}
WEB_MAX_INPUTS = 100  # requests per web container: an event stream stays open for a whole job
WEB_TIMEOUT_S = spec.web_timeout_s or spec.timeout_s  # seconds one web request may last
EXECUTION_LIMIT_S = execution_limit_s(spec)  # seconds one run of a job may train
STREAM_END_MARGIN_S = 30  # seconds: an event stream ends cleanly before WEB_TIMEOUT_S
# The CPU training function (functions/train_tabular.py), deployed as its own app.
CPU_ENDPOINT = get_endpoint("train_tabular").modal
# LoRA jobs' own GPU function (functions/finetune_lora.py), deployed as its own app.
LORA_ENDPOINT = get_endpoint("finetune_lora").modal

app = modal.App(spec.app)
job_state = modal.Dict.from_name(DICT_NAME, create_if_missing=True)  # job records and events


gpu_check = gpu_preflight(spec)


@app.cls(**job_function_options(spec, gpu_image))
class TrainJobs:
    """The training side of ``/v1/jobs``: one job per call, spawned by ModalJobs."""

    @modal.method()
    def train_job(self, job_id: str, submit: dict[str, Any]) -> dict[str, Any]:
        """Run (or resume) job ``job_id``; ``submit`` is its JobSubmit JSON, read only when
        the Dict has no record of it. Returns the job as JSON."""
        return run_job(
            job_id,
            submit,
            job_state=job_state,
            commit=commit_volume,
            time_limit_s=EXECUTION_LIMIT_S,
            preflight=gpu_check,
        )


def spawn_job(job_id: str, submit: dict[str, Any]) -> str:
    return str(TrainJobs().train_job.spawn(job_id, submit).object_id)


def spawn_cpu_job(job_id: str, submit: dict[str, Any]) -> str:
    """A CPU job on the deployed tabular app's function (a lookup by name: a Modal call)."""
    jobs = modal.Cls.from_name(CPU_ENDPOINT.app, "TabularJobs")
    return str(jobs().train_job.spawn(job_id, submit).object_id)


def spawn_lora_job(job_id: str, submit: dict[str, Any]) -> str:
    """A LoRA job on the deployed finetune_lora app's function (its GPU, its QLoRA
    packages), looked up by name."""
    jobs = modal.Cls.from_name(LORA_ENDPOINT.app, "LoraJobs")
    return str(jobs().train_job.spawn(job_id, submit).object_id)


def modal_jobs(settings: Settings, **extra: Any) -> ModalJobs:
    """The job service over the Dict, spawning each job on its task's function when it has
    one (LoRA), else on its hardware class's."""
    return ModalJobs(
        settings,
        spawn={HARDWARE: spawn_job, "cpu": spawn_cpu_job, "finetune_lora": spawn_lora_job},
        state=job_state,
        gpu={HARDWARE: spec.gpu, "finetune_lora": LORA_ENDPOINT.gpu},
        **extra,
    )


@app.cls(
    image=gpu_image,  # the training packages: a submit estimates from the base model's files
    volumes={VOLUME_DIR: volume},
    secrets=options.secrets(),  # FNB_API_KEYS, when FNB_MODAL_SECRET names a Secret
    min_containers=spec.min_containers,
    scaledown_window=spec.scaledown_window_s,  # seconds an idle container stays up
    timeout=WEB_TIMEOUT_S,  # Modal's default of 300 s would cut every event stream
)
@modal.concurrent(max_inputs=WEB_MAX_INPUTS)
class JobsApi:
    """``/v1/jobs`` on Modal: the gateway's job routes, backed by ModalJobs."""

    @modal.enter()
    def build(self) -> None:
        reload_volume()
        settings = Settings()
        jobs = modal_jobs(settings, refresh=reload_volume)
        self.web_app = jobs_app(
            settings,
            jobs,
            max_stream_s=WEB_TIMEOUT_S - STREAM_END_MARGIN_S,
            # Uploaded datasets go into the Volume the training functions reload.
            dataset_sync=VolumeDatasets(reload=reload_volume, commit=lambda: commit_volume()),
        )

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
    """Upload ``data`` into the Volume, submit a training job, follow it to its end."""
    submit_from_terminal(
        "train_classifier",
        TrainClassifierParams,
        Path(data),
        {
            "name": name,
            "base": base,
            "epochs": epochs,
            "learning_rate": learning_rate,
            "batch_size": batch_size,
            "max_length": max_length,
            "seed": seed,
        },
        spawn=spawn_job,
        jobs=modal_jobs(Settings()),
        job_state=job_state,
        app_name=spec.app,
    )
