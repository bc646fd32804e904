"""The ``fnbundle`` command line: serve, train, predict, models, demo.

Key rule: commands are thin wrappers over the same task code the HTTP API uses; errors
print as one clear line (no traceback) and exit non-zero.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
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
app.add_typer(train_app, name="train")
app.add_typer(predict_app, name="predict")
app.add_typer(models_app, name="models")

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
    import uvicorn

    from fnbundle.api import create_app

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

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                console.print("[bold green]fnbundle gateway is up.[/] Try:\n")
                console.print(
                    curl_examples(settings, settings.host, settings.port),
                    markup=False,
                    highlight=False,
                )
                console.print()

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=10,  # seconds to finish in-flight requests on Ctrl-C
    )
    Server(config).run()


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
    settings = Settings(**overrides) if overrides else get_settings()  # type: ignore[arg-type]
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
        "freeze_embeddings": freeze_embeddings,
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
            f"[bold]training the demo model[/] {DEMO_NAME!r} from {DEMO_DATA} (about a minute on 2 cores)"
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
