"""What every Modal training app shares: the Volume's job folders, the commit after each
checkpoint, the time limit of one run, and submitting a job from a terminal.

A training task's app (``functions/train_<task>.py``) declares its own ``app`` and a class
whose ``@modal.method() train_job`` calls :func:`run_job`; ``functions/train_classifier.py``
also serves the job API (``JobsApi``), which spawns each job on the training function of
its hardware class (a GPU function there, a CPU one in ``functions/train_tabular.py``).

Key rules: a new model version is committed to the Volume only once it is completely
published, so a serving container never sees half a model; :func:`run_job` commits after
every checkpoint, so the container Modal starts after a preemption resumes instead of
starting over. A run ends ``timed_out`` with a checkpoint :func:`finish_margin_s` before
the function's timeout, and ``POST /v1/jobs/<id>/retry`` resumes it. Importing this file
imports no torch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import modal
from fnbundle.contract import parse
from fnbundle.endpoints import ModalSpec
from fnbundle.errors import FnbError, NotFound
from fnbundle.jobs.modal_backend import DictState, ModalJobs
from fnbundle.jobs.modal_run import run_modal_job
from fnbundle.jobs.schema import TERMINAL, JobStatus, JobSubmit, new_job_id
from fnbundle.logs import configure_logging
from fnbundle.runpod_worker import require_cuda
from fnbundle.settings import Settings
from pydantic import BaseModel

from functions.images import DATASETS_DIR, VOLUME_DIR, volume

MINUTES = 60  # seconds
JOBS_DIR = VOLUME_DIR / "jobs"  # one folder per job: /vol/jobs/<job id>/checkpoints
WATCH_POLL_S = 2.0  # seconds between reads of the job's events in the terminal


def finish_margin_s(spec: ModalSpec) -> int:
    """Seconds kept after a job's own time limit for the last checkpoint, export and
    publish, so the job ends timed_out before Modal kills the container."""
    return min(10 * MINUTES, spec.timeout_s // 4)


def execution_limit_s(spec: ModalSpec) -> int:
    """Seconds one run of a job may train: the function's timeout minus the margin."""
    return spec.timeout_s - finish_margin_s(spec)


def job_function_options(spec: ModalSpec, image: modal.Image) -> dict[str, Any]:
    """``@app.cls`` settings of a training function, from its declaration: the Volume, the
    hardware, scale to zero, one run per call for at most ``timeout_s``. No retries: Modal
    restarts a preempted input by itself (it resumes from its checkpoint), and a retry
    would only rerun a timed-out one, which ends timed_out (:func:`finish_margin_s`)."""
    return {
        "image": image,
        "volumes": {VOLUME_DIR: volume},
        "gpu": spec.gpu,
        "cpu": spec.cpu,  # cores
        "memory": spec.memory_mib,  # MiB
        "min_containers": spec.min_containers,
        "max_containers": spec.max_containers,
        "scaledown_window": spec.scaledown_window_s,  # seconds an idle container stays up
        "timeout": spec.timeout_s,  # seconds for one run of a job
        "retries": 0,
    }


def gpu_preflight(spec: ModalSpec) -> Callable[[], None]:
    """Run before a job in a GPU function's container: no usable CUDA device fails the job
    instead of training on the CPU (a local run, ``modal run`` on this machine, uses it)."""

    def check() -> None:
        if spec.gpu and not modal.is_local():
            require_cuda()

    return check


def jobs_root() -> Path:
    """Job folders (checkpoints): on the Volume in a container, FNB_JOBS_DIR when local."""
    return Settings().jobs_root if modal.is_local() else Path(JOBS_DIR)


def commit_volume() -> None:
    if not modal.is_local():
        volume.commit()


def reload_volume() -> None:
    if not modal.is_local():
        volume.reload()  # see checkpoints and datasets committed by other containers


def run_job(
    job_id: str,
    submit: dict[str, Any],
    *,
    job_state: Any,
    commit: Callable[[], None],
    time_limit_s: float,
    preflight: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) job ``job_id`` in this container, training at most
    ``time_limit_s`` (see :func:`execution_limit_s`); the job as JSON."""
    reload_volume()
    settings = Settings()
    configure_logging(settings.log_format)  # Modal's log stream: the gateway's lines
    return run_modal_job(
        job_id,
        submit,
        settings,
        job_state,
        jobs_root=jobs_root(),
        commit=commit,
        preflight=preflight,
        time_limit_s=time_limit_s,
    )


def watch(jobs: ModalJobs, job_id: str, call_id: str, app_name: str) -> JobStatus:
    """Print the job's events from the Dict until it ends; return how it ended."""
    after = 0
    while True:
        try:
            job = jobs.get(job_id)
        except NotFound:  # the container has not written the record yet
            if jobs.check_call(call_id) != "pending":
                raise SystemExit(
                    f"job {job_id} was refused before it started; `modal app logs {app_name}` "
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


def submit_from_terminal(
    task: str,
    params_model: type[BaseModel],
    local: Path,
    params: dict[str, Any],
    *,
    spawn: Callable[[str, dict[str, Any]], str],
    jobs: ModalJobs,
    job_state: Any,
    app_name: str,
) -> None:
    """Upload ``local`` into the Volume's datasets folder, submit a ``task`` job reading it,
    follow it to its end (``modal run`` entrypoints)."""
    if not local.is_file():
        raise SystemExit(f"{local}: no such file")
    try:
        checked = parse(params_model, {**params, "data": local.name})  # under the datasets folder
    except FnbError as exc:
        raise SystemExit(f"--{(exc.field or '').replace('_', '-')}: {exc.message}") from None
    with volume.batch_upload(force=True) as batch:  # force: a re-run replaces the upload
        batch.put_file(local, f"/{DATASETS_DIR.relative_to(VOLUME_DIR)}/{local.name}")
    job_id = new_job_id()
    submit = JobSubmit(task=task, params=checked.model_dump(exclude_unset=True))
    call_id = spawn(job_id, submit.model_dump(mode="json"))
    DictState(job_state).set_call(job_id, call_id)  # the deployed JobsApi can check the call
    print(  # noqa: T201 - the command's output
        f"job {job_id} submitted (Modal call {call_id}).\n"
        f"Run with `modal run --detach` to keep it training if this terminal goes; watch it\n"
        f"with `fnbundle jobs watch {job_id} --url <JobsApi URL>` after `modal deploy "
        f"functions/train_classifier.py`."
    )
    status = watch(jobs, job_id, call_id, app_name)
    print(f"job {job_id} {status.value}")  # noqa: T201 - the command's output
    if status != JobStatus.succeeded:
        raise SystemExit(1)
