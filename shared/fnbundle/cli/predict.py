"""``fnbundle predict``: run a model from the store in this process, no gateway needed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fnbundle.cli.output import console, fail
from fnbundle.cli.serve import DEMO_NAME
from fnbundle.errors import FnbError
from fnbundle.settings import get_settings

predict_app = typer.Typer(no_args_is_help=True, help="Run a model from the store.")


@predict_app.command("classify")
def predict_classify(
    texts: Annotated[list[str], typer.Argument(help="Texts to classify.")],
    model: Annotated[str, typer.Option(help="Store model name or id.")] = DEMO_NAME,
    backend: Annotated[
        str | None, typer.Option(help="auto | onnx-int8 | onnx-fp32 | openvino-bf16 | torch")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the API response body.")] = False,
) -> None:
    """Classify texts in-process with a model from the store."""
    from pydantic import ValidationError

    from fnbundle.runtime.host import ModelHost
    from fnbundle.tasks import REGISTRY
    from fnbundle.tasks.classify.schema import ClassifyRequest

    try:
        request = ClassifyRequest(model=model, texts=texts, backend=backend)
        response = ModelHost(get_settings()).serve_sync(REGISTRY.serving_task("classify"), request)
    except ValidationError as exc:
        raise fail(exc.errors()[0]["msg"], 2) from None
    except FnbError as exc:
        raise fail(exc.message) from None
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
