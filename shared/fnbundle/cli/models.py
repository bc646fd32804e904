"""``fnbundle models``: inspect the model store on this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from fnbundle.cli.output import console
from fnbundle.settings import get_settings

models_app = typer.Typer(no_args_is_help=True, help="Inspect the model store.")


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
