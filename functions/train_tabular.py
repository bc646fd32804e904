"""Modal app for ``train_tabular``: train one of the 13 tabular models (or compare them) on
CPU cores and publish the best for ``predict``, as a training job.

    modal deploy functions/train_tabular.py        # TabularJobs: CPU jobs of JobsApi
    modal run --detach functions/train_tabular.py --data data/churn.csv --name churn

``JobsApi`` (``functions/train_classifier.py``) spawns every job of the CPU hardware class
on ``TabularJobs.train_job`` here, found by this app's name; the local entrypoint uploads
the table into the Volume's datasets folder, submits a job and follows it in the terminal.
An MLP asked to train on ``device=cuda`` is a GPU job: it runs on the GPU function.

Key rules: the Volume commits, resume and time limits are :mod:`functions.training`'s; the
container has the declaration's cores and memory (scikit-learn's forests and boosting use
them all) and no GPU. Importing this file imports no scikit-learn or torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import modal
from fnbundle.endpoints import get_endpoint
from fnbundle.jobs.modal_backend import DICT_NAME, ModalJobs
from fnbundle.settings import Settings
from fnbundle.tasks.train_tabular.params import TrainTabularParams

from functions.images import gpu_image
from functions.training import (
    commit_volume,
    execution_limit_s,
    job_function_options,
    run_job,
    submit_from_terminal,
)

endpoint = get_endpoint("train_tabular")  # its entry in deploy/endpoints.toml
spec = endpoint.modal

EXECUTION_LIMIT_S = execution_limit_s(spec)  # seconds one run of a job may train

app = modal.App(spec.app)
job_state = modal.Dict.from_name(DICT_NAME, create_if_missing=True)  # job records and events


@app.cls(**job_function_options(spec, gpu_image))
class TabularJobs:
    """The CPU side of ``/v1/jobs``: one job per call, spawned by JobsApi."""

    @modal.method()
    def train_job(self, job_id: str, submit: dict[str, Any]) -> dict[str, Any]:
        """Run (or resume) job ``job_id``; the job as JSON."""
        return run_job(
            job_id,
            submit,
            job_state=job_state,
            commit=commit_volume,
            time_limit_s=EXECUTION_LIMIT_S,
        )


def spawn_job(job_id: str, submit: dict[str, Any]) -> str:
    return str(TabularJobs().train_job.spawn(job_id, submit).object_id)


@app.local_entrypoint()
def main(
    data: str,
    name: str,
    target: str = "",
    model: str = "compare",
    seed: int = 0,
) -> None:
    """Upload ``data`` into the Volume, submit a training job, follow it to its end."""
    params: dict[str, Any] = {"name": name, "model": model, "seed": seed}
    if target:
        params["target"] = target
    submit_from_terminal(
        "train_tabular",
        TrainTabularParams,
        Path(data),
        params,
        spawn=spawn_job,
        jobs=ModalJobs(Settings(), spawn={"cpu": spawn_job}, state=job_state),
        job_state=job_state,
        app_name=spec.app,
    )
