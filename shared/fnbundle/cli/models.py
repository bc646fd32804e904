"""``fnbundle models``: inspect the model store on this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from fnbundle.cli.output import console, fail
from fnbundle.errors import FnbError
from fnbundle.settings import get_settings

models_app = typer.Typer(no_args_is_help=True, help="Inspect the model store.")


@models_app.command("list")
def models_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every model version in the store; the newest of each name is marked latest."""
    from fnbundle.store import Store
    from fnbundle.tasks import REGISTRY

    store = Store(get_settings().store_root)
    latest = set(store.latest_ids().values())
    rows = []
    for a in store.list():
        task = REGISTRY.serving.get(a.task)
        rows.append({**a.summary(), **(task.describe(a) if task else {}), "latest": a.id in latest})
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
            ", ".join(r.get("labels", [])),
            str(r["metrics"].get("accuracy", "-")),
            str(r["default_backend"]),
            "yes" if r["latest"] else "",
        )
    console.print(table)


@models_app.command("import")
def models_import(
    ref: Annotated[
        str, typer.Argument(help="Base model: builtin:minilm, hf:org/name@rev, a folder.")
    ],
    task: Annotated[str, typer.Option(help="The serving task it is published for, e.g. embed.")],
    name: Annotated[str, typer.Option(help="Store name to publish it under.")],
) -> None:
    """Publish a base model to the store, checked and ready to serve."""
    from fnbundle.tasks import REGISTRY

    try:
        artifact = REGISTRY.serving_task(task).import_base(ref, name, get_settings())
    except FnbError as exc:
        raise fail(exc.message) from None
    backend = artifact.manifest.get("default_backend")
    console.print(f"published [bold]{artifact.id}[/] ({task}, default backend {backend})")
