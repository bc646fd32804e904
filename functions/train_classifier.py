"""Modal app for ``train_classifier``: fine-tune, export and publish a classifier into the
Volume as a training job, behind the gateway's ``/v1/jobs`` routes or from your terminal.

    modal deploy functions/train_classifier.py     # JobsApi.web serves /v1/jobs
    modal run --detach functions/train_classifier.py --data data/reviews.csv --name sentiment

The local entrypoint uploads the CSV into the Volume's datasets folder, submits a job to
``TrainJobs.train_job`` and follows it in the terminal; ``--detach`` keeps the job running
if the terminal goes (then watch it with ``fnbundle jobs watch <id>`` against JobsApi).
``JobsApi.web`` answers the job routes with
:class:`~fnbundle.jobs.modal_backend.ModalJobs`, which spawns ``TrainJobs.train_job``; job
records and events live in the ``fnbundle-jobs`` Dict, checkpoints under
``/vol/jobs/<job id>/checkpoints``.

Key rules: a new model version is committed to the Volume only once it is completely
published, so a serving container never sees half a model; ``train_job`` commits after
every checkpoint, so the container Modal starts after a preemption resumes instead of
starting over. Modal retries nothing else (``retries=0``): a run ends ``timed_out`` with a
checkpoint :data:`FINISH_MARGIN_S` before the function's timeout, and ``POST
/v1/jobs/<id>/retry`` resumes it. On Modal, a container without a usable CUDA device
fails the job before training instead of training on its CPU. JobsApi's timeout is the
declaration's ``web_timeout_s``, and its event streams end cleanly before it (clients
reconnect with ``Last-Event-ID``). Importing this file imports no torch.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import modal
from fastapi import FastAPI
from fnbundle.api.jobs_app import jobs_app
from fnbundle.contract import parse
from fnbundle.endpoints import get_endpoint
from fnbundle.errors import FnbError, NotFound
from fnbundle.jobs.db import new_job_id
from fnbundle.jobs.modal_backend import DICT_NAME, DictState, ModalJobs
from fnbundle.jobs.modal_run import run_modal_job
from fnbundle.jobs.schema import TERMINAL, JobStatus, JobSubmit
from fnbundle.runpod_worker import require_cuda
from fnbundle.settings import Settings
from fnbundle.tasks import REGISTRY
from fnbundle.tasks.train_classifier.params import TrainClassifierParams

from functions.images import DATASETS_DIR, VOLUME_DIR, gpu_image, options, volume

log = logging.getLogger("fnbundle.functions.train_classifier")

endpoint = get_endpoint("train_classifier")  # its entry in deploy/endpoints.toml
spec = endpoint.modal
# The hardware class TrainJobs serves: ModalJobs routes each job to the function of its
# task's class, so another class's tasks get their own function and GPU.
HARDWARE = REGISTRY.training["train_classifier"].hardware
MINUTES = 60  # seconds
DEFAULTS = {name: field.default for name, field in TrainClassifierParams.model_fields.items()}
JOBS_DIR = VOLUME_DIR / "jobs"  # one folder per job: /vol/jobs/<job id>/checkpoints
WEB_MAX_INPUTS = 100  # requests per web container: an event stream stays open for a whole job
WEB_TIMEOUT_S = spec.web_timeout_s or spec.timeout_s  # seconds one web request may last
# Seconds kept after a job's own time limit for the last checkpoint, export and publish,
# so the job ends timed_out before Modal kills the container at the function's timeout.
FINISH_MARGIN_S = min(10 * MINUTES, spec.timeout_s // 4)
EXECUTION_LIMIT_S = spec.timeout_s - FINISH_MARGIN_S  # seconds one run of a job may train
STREAM_END_MARGIN_S = 30  # seconds: an event stream ends cleanly before WEB_TIMEOUT_S
WATCH_POLL_S = 2.0  # seconds between reads of the job's events in the terminal

app = modal.App(spec.app)
job_state = modal.Dict.from_name(DICT_NAME, create_if_missing=True)  # job records and events


def jobs_root() -> Path:
    """Job folders (checkpoints): on the Volume in a container, FNB_JOBS_DIR when local."""
    return Settings().jobs_root if modal.is_local() else Path(JOBS_DIR)


def commit_volume() -> None:
    if not modal.is_local():
        volume.commit()


def reload_volume() -> None:
    if not modal.is_local():
        volume.reload()  # see checkpoints and datasets committed by other containers


def gpu_check() -> None:
    """In a GPU container: a usable CUDA device, or the job fails (a local run uses the CPU)."""
    if spec.gpu and not modal.is_local():
        require_cuda()


@app.cls(
    image=gpu_image,
    volumes={VOLUME_DIR: volume},
    gpu=spec.gpu,
    cpu=spec.cpu,  # cores: tokenization and the ONNX parity check run on CPU
    memory=spec.memory_mib,  # MiB
    min_containers=spec.min_containers,
    max_containers=spec.max_containers,
    scaledown_window=spec.scaledown_window_s,  # seconds an idle container stays up
    timeout=spec.timeout_s,  # seconds for one run of a job
    # Modal restarts a preempted input without any retries; a retry would only rerun a
    # timed-out one, which ends timed_out by itself (see FINISH_MARGIN_S).
    retries=0,
)
class TrainJobs:
    """The training side of ``/v1/jobs``: one job per call, spawned by ModalJobs."""

    @modal.method()
    def train_job(self, job_id: str, submit: dict[str, Any]) -> dict[str, Any]:
        """Run (or resume) job ``job_id``; ``submit`` is its JobSubmit JSON, read only when
        the Dict has no record of it. Returns the job as JSON."""
        reload_volume()
        return run_modal_job(
            job_id,
            submit,
            Settings(),
            job_state,
            jobs_root=jobs_root(),
            commit=commit_volume,
            preflight=gpu_check,
            time_limit_s=EXECUTION_LIMIT_S,
        )


def spawn_job(job_id: str, submit: dict[str, Any]) -> str:
    return str(TrainJobs().train_job.spawn(job_id, submit).object_id)


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
        jobs = ModalJobs(
            settings,
            spawn={HARDWARE: spawn_job},
            state=job_state,
            gpu={HARDWARE: spec.gpu},
            refresh=reload_volume,
        )
        self.web_app = jobs_app(settings, jobs, max_stream_s=WEB_TIMEOUT_S - STREAM_END_MARGIN_S)

    @modal.asgi_app(requires_proxy_auth=options.proxy_auth)
    def web(self) -> FastAPI:
        return self.web_app


def watch(job_id: str, call_id: str) -> JobStatus:
    """Print the job's events from the Dict until it ends; return how it ended."""
    jobs = ModalJobs(
        Settings(), spawn={HARDWARE: spawn_job}, state=job_state, gpu={HARDWARE: spec.gpu}
    )
    after = 0
    while True:
        try:
            job = jobs.get(job_id)
        except NotFound:  # the container has not written the record yet
            if jobs.check_call(call_id) != "pending":
                raise SystemExit(
                    f"job {job_id} was refused before it started; `modal app logs {spec.app}` "
                    "has the reason"
                ) from None
            time.sleep(WATCH_POLL_S)
            continue
        for event in jobs.events(job_id, after):
            after = event.seq
            if event.type != "step":  # steps: the progress in the job record
                print(f"{event.type}: {json.dumps(event.data)}")  # noqa: T201 - the command's output
        if job.status in TERMINAL:
            return job.status
        time.sleep(WATCH_POLL_S)


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
    local = Path(data)
    if not local.is_file():
        raise SystemExit(f"{data}: no such file")
    try:
        params = parse(
            TrainClassifierParams,
            {
                "data": local.name,  # relative: under the Volume's datasets folder
                "name": name,
                "base": base,
                "epochs": epochs,
                "learning_rate": learning_rate,
                "batch_size": batch_size,
                "max_length": max_length,
                "seed": seed,
            },
        )
    except FnbError as exc:
        raise SystemExit(f"--{(exc.field or '').replace('_', '-')}: {exc.message}") from None
    with volume.batch_upload(force=True) as batch:  # force: a re-run replaces the upload
        batch.put_file(local, f"/{DATASETS_DIR.relative_to(VOLUME_DIR)}/{local.name}")
    job_id = new_job_id()
    submit = JobSubmit(task="train_classifier", params=params.model_dump(exclude_unset=True))
    call_id = spawn_job(job_id, submit.model_dump(mode="json"))
    DictState(job_state).set_call(job_id, call_id)  # the deployed JobsApi can check the call
    print(  # noqa: T201 - the command's output
        f"job {job_id} submitted (Modal call {call_id}).\n"
        f"Run with `modal run --detach` to keep it training if this terminal goes; watch it\n"
        f"with `fnbundle jobs watch {job_id} --url <JobsApi URL>` after `modal deploy "
        f"functions/train_classifier.py`."
    )
    status = watch(job_id, call_id)
    print(f"job {job_id} {status.value}")  # noqa: T201 - the command's output
    if status != JobStatus.succeeded:
        raise SystemExit(1)
