"""``fnbundle train``: train a model in this process and publish it to the store.

Key rule: option help and defaults come from the training params schema, written once.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from fnbundle.cli.output import console, fail, setup_logging
from fnbundle.errors import FnbError
from fnbundle.settings import get_settings

train_app = typer.Typer(no_args_is_help=True, help="Train a model and publish it to the store.")


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


def param_help(field: str) -> str:
    """Help text from the training schema, so defaults are written once."""
    from fnbundle.training.text_classifier import TrainClassifierParams

    info = TrainClassifierParams.model_fields[field]
    return f"{info.description or field.replace('_', ' ').capitalize()} (default: {info.default})"


LabelSmoothing = Annotated[float | None, typer.Option(help=param_help("label_smoothing"))]
Device = Annotated[str | None, typer.Option(help=param_help("device"))]


@train_app.command("classifier")
def train_classifier_cmd(
    data: Annotated[str, typer.Option(help="CSV or JSONL with text and label columns.")],
    name: Annotated[str, typer.Option(help="Store name to publish under.")],
    base: Annotated[str | None, typer.Option(help=param_help("base"))] = None,
    epochs: Annotated[int | None, typer.Option(help=param_help("epochs"))] = None,
    learning_rate: Annotated[float | None, typer.Option(help=param_help("learning_rate"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=param_help("batch_size"))] = None,
    max_length: Annotated[int | None, typer.Option(help=param_help("max_length"))] = None,
    eval_split: Annotated[float | None, typer.Option(help=param_help("eval_split"))] = None,
    seed: Annotated[int | None, typer.Option(help=param_help("seed"))] = None,
    patience: Annotated[int | None, typer.Option(help=param_help("patience"))] = None,
    text_column: Annotated[str | None, typer.Option(help=param_help("text_column"))] = None,
    label_column: Annotated[str | None, typer.Option(help=param_help("label_column"))] = None,
    freeze_embeddings: Annotated[
        bool | None,
        typer.Option(
            "--freeze-embeddings/--train-embeddings", help=param_help("freeze_embeddings")
        ),
    ] = None,
    label_smoothing: LabelSmoothing = None,
    device: Device = None,
    no_onnx: Annotated[bool, typer.Option("--no-onnx", help="Skip the ONNX exports.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Fine-tune a text classifier, export it to ONNX and publish it."""
    from pydantic import ValidationError

    setup_logging()
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
        raise fail(f"--{option}: {first['msg']}", 2) from None
    progress, on_event = _progress_printer()
    try:
        with progress:
            result = train_classifier(params, get_settings(), on_event)
    except FnbError as exc:
        raise fail(exc.message) from None
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
