"""``fnbundle train``: train a model in this process and publish it to the store.

Key rule: option help and defaults come from the training params schema, written once.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from fnbundle.cli.output import console, fail, model_line, setup_logging
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
            labels = f"; labels: {', '.join(event['labels'])}" if event["labels"] else ""
            console.print(
                f"training on {event['train_examples']} examples, validating on "
                f"{event['eval_examples']}{labels}"
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
            figures = ", ".join(
                f"{name.replace('_', '-')} {event[name]:.3f}"
                for name in ("accuracy", "macro_f1", "r2", "rmse", "perplexity")
                if event.get(name) is not None
            )
            progress.console.print(
                f"epoch {event['epoch']}: eval loss {event['eval_loss']:.4f}, {figures}"
            )
        elif kind == "model":
            progress.console.print(model_line(event), markup=False)
            done = event["index"] - (event["state"] == "training")
            progress.update(state["task"], completed=done, description="models")
        elif kind == "log":
            progress.console.print(event["message"])

    return progress, on_event


TRAIN_CLASSIFIER = REGISTRY.training_task("train_classifier")


def _train(task: Any, params: dict[str, Any]) -> Any:
    """Train ``task`` in this process with a live progress display; its result."""
    from fnbundle.training.control import TrainControl

    setup_logging()
    checked = _checked(task.params_model, params)
    progress, on_event = _progress_printer()
    try:
        with progress:
            return task.train(checked, get_settings(), on_event, TrainControl())
    except FnbError as exc:
        raise fail(exc.message) from None


def _checked(model: Any, params: dict[str, Any]) -> Any:
    """The params, or exit 2 naming the option that is wrong."""
    from pydantic import ValidationError

    try:
        return model.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        option = "-".join(map(str, first["loc"][:1])).replace("_", "-")
        raise fail(f"--{option}: {first['msg']}", 2) from None


@train_app.command("classifier")
@with_params(TRAIN_CLASSIFIER.params_model)
def train_classifier_cmd(
    params: dict[str, Any],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Fine-tune a text classifier, export it to ONNX and publish it."""
    result = _train(TRAIN_CLASSIFIER, params)
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


FINETUNE_LORA = REGISTRY.training_task("finetune_lora")


@train_app.command("finetune_lora")
@with_params(FINETUNE_LORA.params_model)
def finetune_lora_cmd(
    params: dict[str, Any],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Fine-tune a causal LM with LoRA on chats or prompt/completion pairs; publish the adapter."""
    result = _train(FINETUNE_LORA, params)
    if json_out:
        console.print_json(result.model_dump_json())
        return
    m = result.metrics
    console.print(f"[bold green]published[/] adapter {result.model_id} on base {result.base_id}")
    console.print(
        f"held-out loss {m['eval_loss']:.4f}, perplexity {m['perplexity']:.2f} on "
        f"{m['eval_examples']} examples"
    )
    if result.merged_id:
        console.print(f"[bold green]published[/] merged model {result.merged_id}")


TRAIN_TABULAR = REGISTRY.training_task("train_tabular")


@train_app.command("tabular")
@with_params(TRAIN_TABULAR.params_model)
def train_tabular_cmd(
    params: dict[str, Any],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train one of 13 models on a table (or compare them), export it to ONNX and publish it."""
    result = _train(TRAIN_TABULAR, params)
    if json_out:
        console.print_json(result.model_dump_json(by_alias=True))
        return
    target = result.schema_.target
    console.print(
        f"[bold green]published[/] {result.model_id}: {result.best} predicts "
        f"{target.column!r} ({target.task})"
    )
    table = Table(title="leaderboard (held-out rows)")
    scores = [k for k, v in result.leaderboard[0].metrics.items() if isinstance(v, float)]
    for column in ("model", *scores, "fit s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for c in result.leaderboard:
        table.add_row(
            c.model, *(f"{c.metrics.get(k, float('nan')):.4f}" for k in scores), f"{c.fit_s:.2f}"
        )
    console.print(table)
    top = list((result.leaderboard[0].metrics.get("feature_importances") or {}).items())[:5]
    if top:
        console.print("most important columns: " + ", ".join(f"{k} {v:.3f}" for k, v in top))
