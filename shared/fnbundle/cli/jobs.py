"""``fnbundle jobs``: submit, watch, list, cancel and retry training jobs on a gateway.

Key rule: these commands are a client of the gateway (``--url``/``FNB_URL``,
``--api-key``/``FNB_API_KEY``) through :mod:`fnbundle.cli.client`, never of the job database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fnbundle.cli.client import DEFAULT_URL, Gateway
from fnbundle.cli.output import console, duration, err, fail, model_line, money
from fnbundle.cli.params import with_params
from fnbundle.cli.serve import is_loopback
from fnbundle.tasks import REGISTRY
from fnbundle.tasks.base import TrainingTask

jobs_app = typer.Typer(
    no_args_is_help=True, help="Training jobs on a gateway: submit, watch, list, cancel."
)

Url = Annotated[str, typer.Option("--url", envvar="FNB_URL", help="The gateway to talk to.")]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="FNB_API_KEY", help="Bearer key, if the gateway wants one."),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the API response body.")]


def _watch(gateway: Gateway, job_id: str) -> None:
    """Follow a job with a progress bar; exit 0 once it succeeded, 1 for any other end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  ETA {task.fields[eta]}  {task.fields[cost]}"),
        console=console,
    )
    bar: Any = None
    say = progress.console.print
    try:
        with progress:
            for event in gateway.events(job_id):
                kind, data = event["type"], event["data"]
                if kind == "step":
                    fields: dict[str, Any] = {
                        "loss": f"{data['loss']:.4f}" if data.get("loss") is not None else "-",
                        "eta": duration(data.get("eta_s")),
                        "cost": money(data.get("cost_usd")),
                    }
                    if bar is None:
                        bar = progress.add_task("train", total=data.get("total_steps"), **fields)
                    progress.update(
                        bar,
                        completed=data["step"],
                        total=data.get("total_steps"),
                        description=f"epoch {float(data.get('epoch', 0)):.2f}",
                        **fields,
                    )
                elif kind == "state":
                    reason = f" ({data['reason']})" if data.get("reason") else ""
                    say(f"{data.get('status')}{reason}")
                elif kind == "epoch":
                    say(
                        f"epoch {data.get('epoch')}: eval loss {data.get('eval_loss')}, "
                        f"train loss {data.get('train_loss')}"
                    )
                elif kind == "eval_metric":
                    say(f"epoch {data.get('epoch')}: {data.get('name')} {data.get('value')}")
                elif kind == "checkpoint":
                    say(f"checkpoint at step {data.get('step')}")
                elif kind == "cost_usd":
                    say(
                        f"cost {money(data.get('cost_usd'))} of the {money(data.get('budget_usd'))} budget"
                    )
                elif kind == "model":
                    say(model_line(data), markup=False)
                elif kind == "log":
                    say(f"{data.get('level', 'info')}: {data.get('message')}", markup=False)
    except KeyboardInterrupt:
        err.print(f"stopped watching; the job goes on (`fnbundle jobs cancel {job_id}` stops it)")
        raise typer.Exit(130) from None
    job = gateway.call("GET", f"/v1/jobs/{job_id}")
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        raise fail(f"job {job_id} {job['status']}: {error.get('message', 'no details')}")
    console.print(f"[bold green]succeeded[/] {job_id}: published {job.get('model_id')}")


submit_app = typer.Typer(
    no_args_is_help=True,
    help="Queue a training job on the gateway: one command per training task, its options "
    "generated from the task's params.",
)
jobs_app.add_typer(submit_app, name="submit")


def command_name(task: TrainingTask[Any]) -> str:
    """``train_classifier`` -> ``classifier``: the name under ``train`` and ``jobs submit``."""
    return task.slug.removeprefix("train_")


def _submit_command(task: TrainingTask[Any]) -> Any:
    def jobs_submit(
        params: dict[str, Any],
        budget_usd: Annotated[
            float | None, typer.Option(help="Stop (with a checkpoint) when the cost reaches this.")
        ] = None,
        gpu: Annotated[
            str | None, typer.Option(help="GPU name; default: the cheapest that fits.")
        ] = None,
        idempotency_key: Annotated[
            str | None, typer.Option(help="Submitting the same key again returns the same job.")
        ] = None,
        webhook_url: Annotated[
            str | None, typer.Option(help="POSTed the job when it ends (signed).")
        ] = None,
        timeout_s: Annotated[
            float | None, typer.Option(help="Execution time limit (seconds).")
        ] = None,
        watch: Annotated[bool, typer.Option("--watch", help="Follow it until it ends.")] = False,
        url: Url = DEFAULT_URL,
        api_key: ApiKey = None,
        json_out: JsonOut = False,
    ) -> None:
        from urllib.parse import urlsplit

        gateway = Gateway(url, api_key)
        data = params["data"]
        if is_loopback(urlsplit(gateway.url).hostname or "") and Path(data).is_file():
            params["data"] = str(Path(data).resolve())  # a local gateway may run elsewhere
        body = {
            "task": task.slug,
            "params": params,
            "budget_usd": budget_usd,
            "gpu": gpu,
            "idempotency_key": idempotency_key,
            "webhook_url": webhook_url,
            "timeout_s": timeout_s,
        }
        accepted = gateway.call(
            "POST", "/v1/jobs", json={k: v for k, v in body.items() if v is not None}
        )
        if json_out:
            console.print_json(json.dumps(accepted))
        else:
            console.print(f"job {accepted['id']} {accepted['status']}", highlight=False)
            estimate = accepted.get("estimate") or {}
            if "seconds" in estimate:
                console.print(
                    f"estimate: ~{duration(estimate['seconds'])} (m:ss), "
                    f"~{money(estimate.get('usd'))} on {estimate.get('gpu', '?')} "
                    f"({estimate.get('platform', '?')})",
                    highlight=False,
                )
        if watch:
            _watch(gateway, accepted["id"])

    jobs_submit.__doc__ = (
        f"Queue a {task.slug} job: {task.summary} "
        f"(options as `fnbundle train {command_name(task)}`)."
    )
    return with_params(task.params_model)(jobs_submit)


for _task in REGISTRY.training.values():
    submit_app.command(command_name(_task))(_submit_command(_task))


@jobs_app.command("watch")
def jobs_watch(job_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Follow a job live: progress bar, checkpoints and logs; exit 0 once it succeeded."""
    _watch(Gateway(url, api_key), job_id)


def _print_job(job: dict[str, Any]) -> None:
    p = job.get("progress") or {}
    rows = {
        "job": job["id"],
        "status": job["status"],
        "name": job.get("params", {}).get("name"),
        "progress": f"step {p.get('step', 0)}/{p.get('total_steps') or '?'}, epoch {p.get('epoch', 0)}",
        "loss": p.get("loss"),
        "cost": money(job.get("cost_usd")),
        "model": job.get("model_id"),
        "metrics": ", ".join(
            f"{k} {v}"
            for k, v in (job.get("metrics") or {}).items()
            if not isinstance(v, dict | list)
        ),
        "error": (job.get("error") or {}).get("message"),
    }
    for key, value in rows.items():
        if value not in (None, ""):
            console.print(f"{key:>9}  {value}", highlight=False, markup=False)


@jobs_app.command("status")
def jobs_status(
    job_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False
) -> None:
    """One job: status, progress, cost, the published model or the error."""
    job = Gateway(url, api_key).call("GET", f"/v1/jobs/{job_id}")
    if json_out:
        console.print_json(json.dumps(job))
    else:
        _print_job(job)


def _job_action(action: str, job_id: str, url: str, api_key: str | None, json_out: bool) -> None:
    job = Gateway(url, api_key).call("POST", f"/v1/jobs/{job_id}/{action}")
    if json_out:
        console.print_json(json.dumps(job))
    elif action == "cancel" and job["status"] == "running":
        console.print(f"job {job['id']} is stopping (saving a checkpoint first)", highlight=False)
    else:
        console.print(f"job {job['id']} {job['status']}", highlight=False)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False
) -> None:
    """Stop a queued or running job."""
    _job_action("cancel", job_id, url, api_key, json_out)


@jobs_app.command("retry")
def jobs_retry(
    job_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False
) -> None:
    """Queue a failed or timed-out job again (it resumes from its last checkpoint)."""
    _job_action("retry", job_id, url, api_key, json_out)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None, typer.Option(help="Only these statuses, comma-separated (e.g. running,queued).")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """The gateway's jobs, newest first."""
    query: dict[str, Any] = {"limit": limit} | ({"status": status} if status else {})
    jobs = Gateway(url, api_key).call("GET", "/v1/jobs", params=query)["jobs"]
    if json_out:
        console.print_json(json.dumps(jobs))
        return
    if not jobs:
        console.print("no jobs; queue one with `fnbundle jobs submit <task>`")
        return
    table = Table()
    for col in ("id", "status", "name", "step", "loss", "cost", "outcome"):
        table.add_column(col, no_wrap=col in {"id", "status"})
    for job in jobs:
        p = job.get("progress") or {}
        outcome = job.get("model_id") or (job.get("error") or {}).get("message") or ""
        table.add_row(
            job["id"],
            job["status"],
            str(job.get("params", {}).get("name", "")),
            f"{p.get('step', 0)}/{p.get('total_steps') or '?'}",
            f"{p['loss']:.4f}" if p.get("loss") is not None else "-",
            money(job.get("cost_usd")),
            outcome,
        )
    console.print(table)
