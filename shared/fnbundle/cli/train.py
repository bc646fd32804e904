"""``fnbundle train``: train a model in this process and publish it to the store.

Key rule: option help and defaults come from the training params schema, written once.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from fnbundle.cli.output import console, fail, setup_logging
from fnbundle.cli.params import with_params
from fnbundle.errors import FnbError
from fnbundle.settings import get_settings
from fnbundle.tasks import REGISTRY

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


TRAIN_CLASSIFIER = REGISTRY.training_task("train_classifier")


@train_app.command("classifier")
@with_params(TRAIN_CLASSIFIER.params_model)
def train_classifier_cmd(
    params: dict[str, Any],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Fine-tune a text classifier, export it to ONNX and publish it."""
    from pydantic import ValidationError

    setup_logging()
    from fnbundle.training.text_classifier import train_classifier

    try:
        checked: Any = TRAIN_CLASSIFIER.params_model.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "-".join(map(str, first["loc"])).replace("_", "-")
        raise fail(f"--{option}: {first['msg']}", 2) from None
    progress, on_event = _progress_printer()
    try:
        with progress:
            result = train_classifier(checked, get_settings(), on_event)
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
