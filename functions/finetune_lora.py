"""Modal app for ``finetune_lora``: LoRA fine-tuning of a causal LM on a GPU, publishing the
adapter (and the imported base) into the Volume's store for ``generate``, as a training job.

    modal deploy functions/finetune_lora.py        # LoraJobs: the LoRA jobs' GPU function
    modal run --detach functions/finetune_lora.py --data data/support_chat.jsonl \\
        --name support-bot --base hf:HuggingFaceTB/SmolLM2-135M-Instruct@<revision>

The local entrypoint uploads the JSONL file into the Volume's datasets folder, submits a
job and follows it in the terminal. The image is the training image plus bitsandbytes
(QLoRA, ``quantize=4bit``), pinned by requirements/runpod-finetune_lora.txt; the GPU is
the declaration's (deploy/endpoints.toml), sized for a 7-8 B base in bf16 or a larger one
in 4-bit.

Key rules: the Volume commits, resume and time limits are :mod:`functions.training`'s; a
container without a usable CUDA device fails the job before training instead of training
on its CPU. Importing this file imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import modal
from fnbundle.endpoints import get_endpoint
from fnbundle.jobs.modal_backend import DICT_NAME, ModalJobs
from fnbundle.settings import Settings
from fnbundle.tasks.finetune_lora.params import FinetuneLoraParams

from functions.images import (
    PIP_OPTIONS,
    locked_image,
    locked_packages,
    with_project,
)
from functions.training import (
    commit_volume,
    execution_limit_s,
    gpu_preflight,
    job_function_options,
    run_job,
    submit_from_terminal,
)

endpoint = get_endpoint("finetune_lora")  # its entry in deploy/endpoints.toml
spec = endpoint.modal
HARDWARE = "gpu"
DEFAULTS = {name: field.default for name, field in FinetuneLoraParams.model_fields.items()}
EXECUTION_LIMIT_S = execution_limit_s(spec)  # seconds one run of a job may train
# QLoRA's 4-bit kernels, at the version the RunPod worker's lock pins.
QLORA_PACKAGES = [
    line for line in locked_packages("runpod-finetune_lora.txt") if line.startswith("bitsandbytes")
]

image = with_project(
    locked_image("gpu_image").pip_install(*QLORA_PACKAGES, extra_options=PIP_OPTIONS)
)
app = modal.App(spec.app)
job_state = modal.Dict.from_name(DICT_NAME, create_if_missing=True)  # job records and events


gpu_check = gpu_preflight(spec)


@app.cls(**job_function_options(spec, image))
class LoraJobs:
    """The LoRA side of ``/v1/jobs``: one job per call."""

    @modal.method()
    def train_job(self, job_id: str, submit: dict[str, Any]) -> dict[str, Any]:
        """Run (or resume) job ``job_id``; the job as JSON."""
        return run_job(
            job_id,
            submit,
            job_state=job_state,
            commit=commit_volume,
            time_limit_s=EXECUTION_LIMIT_S,
            preflight=gpu_check,
        )


def spawn_job(job_id: str, submit: dict[str, Any]) -> str:
    return str(LoraJobs().train_job.spawn(job_id, submit).object_id)


@app.local_entrypoint()
def main(
    data: str,
    name: str,
    base: str,
    epochs: int = DEFAULTS["epochs"],
    learning_rate: float = DEFAULTS["learning_rate"],
    rank: int = DEFAULTS["rank"],
    quantize: str = DEFAULTS["quantize"],
    seed: int = DEFAULTS["seed"],
) -> None:
    """Upload ``data`` into the Volume, submit a fine-tuning job, follow it to its end."""
    submit_from_terminal(
        "finetune_lora",
        FinetuneLoraParams,
        Path(data),
        {
            "name": name,
            "base": base,
            "epochs": epochs,
            "learning_rate": learning_rate,
            "rank": rank,
            "quantize": quantize,
            "seed": seed,
        },
        spawn=spawn_job,
        jobs=ModalJobs(Settings(), spawn={HARDWARE: spawn_job}, state=job_state),
        job_state=job_state,
        app_name=spec.app,
    )
