"""The ``fnbundle`` command line: serve, train, predict, models, jobs, demo.

Key rule: commands are thin wrappers over the same task code the HTTP API uses; errors
print as one clear line (no traceback) and exit non-zero. ``fnbundle jobs`` is the one
client of a gateway: it talks HTTP (``--url``/``FNB_URL``, ``--api-key``/``FNB_API_KEY``),
never to the job database, so it drives a local gateway and a remote one alike.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fnbundle.errors import FnbError
from fnbundle.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True, help="Train and serve custom ML models.")
train_app = typer.Typer(no_args_is_help=True, help="Train a model and publish it to the store.")
predict_app = typer.Typer(no_args_is_help=True, help="Run a model from the store.")
models_app = typer.Typer(no_args_is_help=True, help="Inspect the model store.")
jobs_app = typer.Typer(
    no_args_is_help=True, help="Training jobs on a gateway: submit, watch, list, cancel."
)
app.add_typer(train_app, name="train")
app.add_typer(predict_app, name="predict")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")

console = Console()
err = Console(stderr=True)
DEMO_DATA = Path("data/reviews.csv")
DEMO_NAME = "sentiment"


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fnbundle").setLevel(logging.DEBUG if verbose else logging.INFO)


# --- serve ------------------------------------------------------------------------------
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def curl_examples(settings: Settings, host: str, port: int) -> str:
    from fnbundle.store import Store

    names = sorted(Store(settings.store_root).latest_ids()) or [DEMO_NAME]
    auth = ' -H "Authorization: Bearer $FNB_API_KEY"' if settings.api_keys else ""
    base = f"http://{host}:{port}"
    body = json.dumps(
        {"model": names[0], "texts": ["Arrived early and works great.", "Cold food, rude staff."]}
    )
    return "\n".join(
        [
            f"curl -s {base}/v1/classify{auth} -H 'Content-Type: application/json' \\\n  -d '{body}'",
            f"curl -s {base}/v1/models{auth}",
            f"curl -s {base}/readyz",
            f"open {base}/docs   # interactive API docs",
        ]
    )


def run_server(settings: Settings) -> None:
    from fnbundle.api import create_app
    from fnbundle.api.server import build_server

    if (
        not settings.api_keys
        and not _is_loopback(settings.host)
        and not settings.allow_insecure_bind
    ):
        raise _fail(
            f"refusing to listen on {settings.host} without API keys: set FNB_API_KEYS, bind "
            "127.0.0.1, or set FNB_ALLOW_INSECURE_BIND=1 if something else guards the port.",
            2,
        )

    def started() -> None:
        console.print("[bold green]fnbundle gateway is up.[/] Try:\n")
        console.print(  # soft_wrap: never break a line someone will paste
            curl_examples(settings, settings.host, settings.port),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        console.print()

    build_server(create_app(settings), settings, on_started=started).run()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    preload: Annotated[
        str | None, typer.Option(help="Models to load at start, comma-separated; '*' = all.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="auto | onnx-int8 | onnx-fp32 | torch")
    ] = None,
) -> None:
    """Serve every model in the store over HTTP (the local gateway)."""
    _setup_logging()
    overrides = {
        k: v
        for k, v in {"host": host, "port": port, "preload": preload, "backend": backend}.items()
        if v is not None
    }
    from pydantic import ValidationError

    try:
        settings = Settings(**overrides) if overrides else get_settings()  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "FNB_" + "_".join(map(str, first["loc"])).upper()
        raise _fail(f"{name}: {first['msg'].removeprefix('Value error, ')}", 2) from None
    run_server(settings)


# --- train ------------------------------------------------------------------------------
def _progress_printer() -> tuple[Any, Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=console,
    )
    state: dict[str, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "start":
            progress.start()
            console.print(
                f"training on {event['train_examples']} examples, validating on "
                f"{event['eval_examples']}; labels: {', '.join(event['labels'])}"
            )
            state["task"] = progress.add_task("train", total=event["total_steps"], loss="-")
        elif kind == "step":
            progress.update(
                state["task"],
                completed=event["step"],
                loss=f"{event['loss']:.4f}",
                description=f"epoch {event['epoch']}",
            )
        elif kind == "eval":
            progress.console.print(
                f"epoch {event['epoch']}: eval loss {event['eval_loss']:.4f}, "
                f"accuracy {event['accuracy']:.3f}, macro-F1 {event['macro_f1']:.3f}"
            )
        elif kind == "log":
            progress.console.print(event["message"])

    return progress, on_event


def _opt(field: str) -> str:
    """Help text from the training schema, so defaults are written once."""
    from fnbundle.training.text_classifier import TrainClassifierParams

    info = TrainClassifierParams.model_fields[field]
    return f"{info.description or field.replace('_', ' ').capitalize()} (default: {info.default})"


LabelSmoothing = Annotated[float | None, typer.Option(help=_opt("label_smoothing"))]
Device = Annotated[str | None, typer.Option(help=_opt("device"))]


@train_app.command("classifier")
def train_classifier_cmd(
    data: Annotated[str, typer.Option(help="CSV or JSONL with text and label columns.")],
    name: Annotated[str, typer.Option(help="Store name to publish under.")],
    base: Annotated[str | None, typer.Option(help=_opt("base"))] = None,
    epochs: Annotated[int | None, typer.Option(help=_opt("epochs"))] = None,
    learning_rate: Annotated[float | None, typer.Option(help=_opt("learning_rate"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=_opt("batch_size"))] = None,
    max_length: Annotated[int | None, typer.Option(help=_opt("max_length"))] = None,
    eval_split: Annotated[float | None, typer.Option(help=_opt("eval_split"))] = None,
    seed: Annotated[int | None, typer.Option(help=_opt("seed"))] = None,
    patience: Annotated[int | None, typer.Option(help=_opt("patience"))] = None,
    text_column: Annotated[str | None, typer.Option(help=_opt("text_column"))] = None,
    label_column: Annotated[str | None, typer.Option(help=_opt("label_column"))] = None,
    freeze_embeddings: Annotated[
        bool | None,
        typer.Option("--freeze-embeddings/--train-embeddings", help=_opt("freeze_embeddings")),
    ] = None,
    label_smoothing: LabelSmoothing = None,
    device: Device = None,
    no_onnx: Annotated[bool, typer.Option("--no-onnx", help="Skip the ONNX exports.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Fine-tune a text classifier, export it to ONNX and publish it."""
    from pydantic import ValidationError

    _setup_logging()
    from fnbundle.training.text_classifier import TrainClassifierParams, train_classifier

    given = {
        "base": base, "epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size,
        "max_length": max_length, "eval_split": eval_split, "seed": seed, "patience": patience,
        "text_column": text_column, "label_column": label_column,
        "freeze_embeddings": freeze_embeddings, "label_smoothing": label_smoothing,
        "device": device,
    }  # fmt: skip
    try:
        params = TrainClassifierParams(
            data=data,
            name=name,
            export_onnx=not no_onnx,
            **{k: v for k, v in given.items() if v is not None},
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "-".join(map(str, first["loc"])).replace("_", "-")
        raise _fail(f"--{option}: {first['msg']}", 2) from None
    progress, on_event = _progress_printer()
    try:
        with progress:
            result = train_classifier(params, get_settings(), on_event)
    except FnbError as exc:
        raise _fail(exc.message) from None
    if json_out:
        console.print_json(result.model_dump_json())
        return
    m = result.metrics
    console.print(
        f"[bold green]published[/] {result.model_id}  (default backend {result.default_backend})"
    )
    console.print(
        f"held-out accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} on {m['eval_examples']} examples"
    )
    # Overall figures hide a gap on short texts, the ones people type first.
    table = Table(title="held-out by length")
    for column in ("words", "examples", "accuracy", "macro-F1"):
        table.add_column(column, justify="left" if column == "words" else "right")
    for bucket, row in (m.get("by_length") or {}).items():
        if row is None:
            table.add_row(bucket, "0", "-", "-")
        else:
            table.add_row(
                bucket, str(row["examples"]), f"{row['accuracy']:.3f}", f"{row['macro_f1']:.3f}"
            )
    console.print(table)


# --- predict ----------------------------------------------------------------------------
@predict_app.command("classify")
def predict_classify(
    texts: Annotated[list[str], typer.Argument(help="Texts to classify.")],
    model: Annotated[str, typer.Option(help="Store model name or id.")] = DEMO_NAME,
    backend: Annotated[
        str | None, typer.Option(help="auto | onnx-int8 | onnx-fp32 | torch")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the API response body.")] = False,
) -> None:
    """Classify texts in-process with a model from the store."""
    from pydantic import ValidationError

    from fnbundle.tasks.classify import ClassifyRequest, ClassifyService

    try:
        request = ClassifyRequest(model=model, texts=texts, backend=backend)
        response = ClassifyService(get_settings()).classify_sync(request)
    except ValidationError as exc:
        raise _fail(exc.errors()[0]["msg"], 2) from None
    except FnbError as exc:
        raise _fail(exc.message) from None
    if json_out:
        console.print_json(response.model_dump_json())
        return
    table = Table(title=f"{response.model} ({response.backend})")
    table.add_column("text")
    table.add_column("label", style="bold")
    table.add_column("score", justify="right")
    for text, p in zip(texts, response.predictions, strict=True):
        table.add_row(text, p.label, f"{p.score:.3f}")
    console.print(table)


# --- models -----------------------------------------------------------------------------
@models_app.command("list")
def models_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every model version in the store; the newest of each name is marked latest."""
    from fnbundle.store import Store

    store = Store(get_settings().store_root)
    latest = set(store.latest_ids().values())
    rows = [{**a.summary(), "latest": a.id in latest} for a in store.list()]
    if json_out:
        console.print_json(json.dumps(rows))
        return
    if not rows:
        console.print(
            f"the store at {store.root} is empty; train one with `fnbundle train classifier`"
        )
        return
    table = Table(title=str(store.root))
    table.add_column("id", no_wrap=True)
    for col in ("task", "labels", "accuracy", "backend", "latest"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["id"],
            r["task"],
            ", ".join(r["labels"]),
            str(r["metrics"].get("accuracy", "-")),
            str(r["default_backend"]),
            "yes" if r["latest"] else "",
        )
    console.print(table)


# --- jobs -------------------------------------------------------------------------------
DEFAULT_URL = "http://127.0.0.1:8000"
HTTP_TIMEOUT_S = 30.0  # seconds for one request to the gateway
STREAM_READ_S = 60.0  # seconds of silence before an event stream counts as dead (pings: 15)
RECONNECTS = 5  # tries to resume a dropped event stream, 1, 2, 4... seconds apart

Url = Annotated[str, typer.Option("--url", envvar="FNB_URL", help="The gateway to talk to.")]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="FNB_API_KEY", help="Bearer key, if the gateway wants one."),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the API response body.")]


class Gateway:
    """A small HTTP client of ``/v1/jobs``; every failure becomes one line and an exit."""

    def __init__(self, url: str, api_key: str | None):
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=HTTP_TIMEOUT_S)

    def unreachable(self, exc: Exception) -> typer.Exit:
        return _fail(
            f"cannot reach the gateway at {self.url} ({exc or type(exc).__name__}); is "
            "`fnbundle serve` running there? Point --url or FNB_URL at it."
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if response.status_code >= 400:
            raise _fail(_api_error(response))
        return response.json()

    def events(self, job_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Every event after ``after``, live, until the terminal state. A stream that ends
        or breaks without it is resumed with ``Last-Event-ID``, so no event is lost or
        repeated: at once after the server's planned end (its ``retry:``), with backoff after
        a failure."""
        import time

        import httpx

        from fnbundle.jobs.schema import TERMINAL

        timeout = httpx.Timeout(HTTP_TIMEOUT_S, read=STREAM_READ_S)
        failures, connected = 0, False
        while True:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
            retry_ms: list[int] = []  # the server's reconnect delay, when it sent one
            try:
                with self.http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _fail(_api_error(response))
                    connected = True
                    for event in _sse_events(response.iter_lines(), retry_ms.append):
                        failures = 0
                        after = event["seq"]
                        yield event
                        if event["type"] == "state" and event["data"].get("status") in TERMINAL:
                            return
                if retry_ms:  # the server's planned end (its stream time limit): resume
                    time.sleep(retry_ms[-1] / 1000)
                    continue
                problem: Exception = ConnectionError("the stream ended before the job did")
            except httpx.TransportError as exc:
                problem = exc
            failures += 1  # a restarting gateway, a dropped connection: resume where it stopped
            if failures > RECONNECTS or not connected:
                raise self.unreachable(problem) from None
            time.sleep(2 ** (failures - 1))


def _api_error(response: Any) -> str:
    """The gateway's ``{"error": {...}}`` as one line, with the option to fix named."""
    try:
        error = response.json()["error"]
        message, field = str(error["message"]), error.get("field")
    except (ValueError, KeyError, TypeError):
        return f"the gateway answered {response.status_code}: {response.text[:200]}"
    if field and message.startswith(f"{field}: "):
        option = field.removeprefix("params.").replace("_", "-")
        message = f"--{option}: {message.removeprefix(f'{field}: ')}"
    if response.status_code == 401:
        message += " Pass --api-key or set FNB_API_KEY."
    if response.headers.get("retry-after"):
        message += f" Try again in {response.headers['retry-after']} s."
    return message


def _sse_events(
    lines: Iterable[str], on_retry: Callable[[int], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Parse ``text/event-stream`` lines into JobEvent dicts (pings and comments skipped);
    a ``retry:`` field (milliseconds before reconnecting) goes to ``on_retry``."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield json.loads("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("retry:") and on_retry is not None:
            value = line[6:].strip()
            if value.isdigit():
                on_retry(int(value))
    if data:
        yield json.loads("\n".join(data))


def _money(value: Any) -> str:
    return f"${float(value):.4f}" if value is not None else "-"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


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
                        "eta": _duration(data.get("eta_s")),
                        "cost": _money(data.get("cost_usd")),
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
                        f"cost {_money(data.get('cost_usd'))} of the {_money(data.get('budget_usd'))} budget"
                    )
                elif kind == "log":
                    say(f"{data.get('level', 'info')}: {data.get('message')}", markup=False)
    except KeyboardInterrupt:
        err.print(f"stopped watching; the job goes on (`fnbundle jobs cancel {job_id}` stops it)")
        raise typer.Exit(130) from None
    job = gateway.call("GET", f"/v1/jobs/{job_id}")
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        raise _fail(f"job {job_id} {job['status']}: {error.get('message', 'no details')}")
    console.print(f"[bold green]succeeded[/] {job_id}: published {job.get('model_id')}")


@jobs_app.command("submit")
def jobs_submit(
    data: Annotated[
        str, typer.Option(help="CSV or JSONL with text and label columns, as the gateway sees it.")
    ],
    name: Annotated[str, typer.Option(help="Store name to publish under.")],
    base: Annotated[str | None, typer.Option(help=_opt("base"))] = None,
    epochs: Annotated[int | None, typer.Option(help=_opt("epochs"))] = None,
    learning_rate: Annotated[float | None, typer.Option(help=_opt("learning_rate"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=_opt("batch_size"))] = None,
    max_length: Annotated[int | None, typer.Option(help=_opt("max_length"))] = None,
    eval_split: Annotated[float | None, typer.Option(help=_opt("eval_split"))] = None,
    seed: Annotated[int | None, typer.Option(help=_opt("seed"))] = None,
    patience: Annotated[int | None, typer.Option(help=_opt("patience"))] = None,
    text_column: Annotated[str | None, typer.Option(help=_opt("text_column"))] = None,
    label_column: Annotated[str | None, typer.Option(help=_opt("label_column"))] = None,
    freeze_embeddings: Annotated[
        bool | None,
        typer.Option("--freeze-embeddings/--train-embeddings", help=_opt("freeze_embeddings")),
    ] = None,
    label_smoothing: LabelSmoothing = None,
    device: Device = None,
    no_onnx: Annotated[bool, typer.Option("--no-onnx", help="Skip the ONNX exports.")] = False,
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
    timeout_s: Annotated[float | None, typer.Option(help="Execution time limit (seconds).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow it until it ends.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Queue a text-classifier training job on the gateway (options as `train classifier`)."""
    from urllib.parse import urlsplit

    gateway = Gateway(url, api_key)
    if _is_loopback(urlsplit(gateway.url).hostname or "") and Path(data).is_file():
        data = str(Path(data).resolve())  # a local gateway may run in another folder
    given = {
        "base": base, "epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size,
        "max_length": max_length, "eval_split": eval_split, "seed": seed, "patience": patience,
        "text_column": text_column, "label_column": label_column,
        "freeze_embeddings": freeze_embeddings, "label_smoothing": label_smoothing,
        "device": device, "export_onnx": False if no_onnx else None,
    }  # fmt: skip
    body = {
        "task": "train_classifier",
        "params": {"data": data, "name": name, **{k: v for k, v in given.items() if v is not None}},
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
                f"estimate: {_duration(estimate['seconds'])} (m:ss), {_money(estimate.get('usd'))}"
                f" on {estimate.get('gpu', '?')} ({estimate.get('platform', '?')})",
                highlight=False,
            )
    if watch:
        _watch(gateway, accepted["id"])


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
        "cost": _money(job.get("cost_usd")),
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
        console.print("no jobs; queue one with `fnbundle jobs submit`")
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
            _money(job.get("cost_usd")),
            outcome,
        )
    console.print(table)


# --- demo -------------------------------------------------------------------------------
@app.command()
def demo(
    retrain: Annotated[bool, typer.Option(help="Train again even if the model exists.")] = False,
) -> None:
    """Train the demo sentiment model if the store has none, then serve it."""
    from fnbundle.store import Store

    settings = get_settings()
    if retrain or DEMO_NAME not in Store(settings.store_root).latest_ids():
        console.print(
            f"[bold]training the demo model[/] {DEMO_NAME!r} from {DEMO_DATA} (a few minutes on 2 cores)"
        )
        train_classifier_cmd(data=str(DEMO_DATA), name=DEMO_NAME)
    else:
        console.print(f"store already has {DEMO_NAME!r}; `fnbundle demo --retrain` trains it again")
    _setup_logging()
    run_server(settings)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
