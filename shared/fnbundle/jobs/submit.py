"""Checking a submitted job before any runtime takes it, and the queued :class:`Job` it
becomes.

Key rule: every backend (the local manager, Modal, RunPod) builds its new job here, so a
bad request is refused the same way on each: a 422 naming ``params.<field>`` for a schema
violation; a 400 for a webhook target the webhooks module would refuse, or for any webhook
while no ``FNB_WEBHOOK_SECRET`` is set; and, where the dataset can be read, the cost
estimate's own refusal (an unreadable dataset, an unknown base, a GPU too small) before
anything is queued or spawned. The task's declaration in the registry
(:mod:`fnbundle.tasks`) gives the params schema and the estimate; the trainer is never
imported here.

No remote call holds a submit: a Hub base is checked from the local cache or within a few
seconds (see :mod:`fnbundle.platforms.sizing`), else the job is accepted with an estimate marked
``approximate`` and its worker checks the base.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from fnbundle.contract import validation_failure
from fnbundle.errors import InvalidRequest
from fnbundle.jobs.schema import Job, JobStatus, JobSubmit, new_job_id
from fnbundle.logs import current_request_id
from fnbundle.settings import Settings

if TYPE_CHECKING:
    from fnbundle.tasks.base import TrainingTask


def training_task(slug: str) -> TrainingTask[Any]:
    """The registry's declaration of ``slug`` (a 400 naming ``task`` for an unknown one)."""
    from fnbundle.tasks import REGISTRY

    return REGISTRY.training_task(slug)


def validate_params(req: JobSubmit) -> dict[str, Any]:
    """The params with every default filled in, as JSON; a 422 naming ``params.<field>``."""
    try:
        params = training_task(req.task).params_model.model_validate(req.params)
    except ValidationError as exc:
        errors = [{**e, "loc": ("params", *e["loc"])} for e in exc.errors()]
        raise validation_failure(errors) from None
    return params.model_dump(mode="json")


def check_webhook(req: JobSubmit, settings: Settings) -> str | None:
    """The webhook URL as a string, if the request has one this server may call."""
    if req.webhook_url is None:
        return None
    webhook = str(req.webhook_url)
    if not settings.webhook_secret:
        raise InvalidRequest(
            "Webhooks are signed, and this server has no FNB_WEBHOOK_SECRET; set it "
            "or submit without webhook_url.",
            field="webhook_url",
        )
    from fnbundle.webhooks import check_target

    check_target(webhook, settings.webhook_allow_private, settings.webhook_allowed_hosts)
    return webhook


def anchor_data(params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """A relative ``data`` path names a file under the first data root (on Modal: the
    Volume's datasets folder), not under the process's working directory; a dataset id
    (``ds-...``) names an uploaded dataset."""
    from fnbundle.datasets import is_dataset_id

    data = params.get("data")
    if (
        isinstance(data, str)
        and data
        and not is_dataset_id(data)
        and not Path(data).is_absolute()
        and settings.data_roots
    ):
        return {**params, "data": str(settings.data_roots[0] / data)}
    return params


def new_job(
    req: JobSubmit,
    settings: Settings,
    *,
    job_id: str | None = None,
    platform: str = "local",
    gpu: str | None = None,
    estimate: bool = True,
) -> Job:
    """A queued job for ``req``, checked as the module docstring says.

    ``gpu`` is the GPU the job will run on when the request names none; ``estimate=False``
    skips the estimate (a client that cannot read the dataset: the worker checks it).
    """
    params = validate_params(req)
    webhook = check_webhook(req, settings)
    summary: dict[str, Any] | None = None
    chosen = req.gpu or gpu
    if estimate:
        task = training_task(req.task)
        found = task.estimate(
            task.params_model.model_validate(params), settings, platform=platform, gpu=chosen
        )
        summary = found.model_dump(mode="json", exclude_none=True)
        # An approximate estimate's GPU is a price, not a choice; "cpu" is no GPU at all.
        if not found.approximate and found.gpu != "cpu":
            chosen = chosen or found.gpu
    return Job(
        id=job_id or new_job_id(),
        task=req.task,
        status=JobStatus.queued,
        params=params,
        idempotency_key=req.idempotency_key,
        budget_usd=req.budget_usd,
        gpu=chosen,
        webhook_url=webhook,
        timeout_s=req.timeout_s or settings.jobs_timeout_s,
        estimate=summary,
        created_at=datetime.now(UTC),
        request_id=current_request_id(),
    )
