"""``fnbundle data``: look at a table's detected schema here, or upload it to a gateway.

``inspect`` reads a local file (no gateway needed) and prints what the gateway's
``GET /v1/datasets/{id}/schema`` would: each column's kind, missing share, distinct values
and role, and the proposed target and task with the reason. ``upload``, ``list`` and
``delete`` are clients of a gateway's ``/v1/datasets``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fnbundle.cli.client import DEFAULT_URL, Gateway
from fnbundle.cli.jobs import ApiKey, JsonOut, Url
from fnbundle.cli.output import console, fail
from fnbundle.errors import FnbError

data_app = typer.Typer(no_args_is_help=True, help="Tables: inspect their schema, upload them.")


def print_schema(schema: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    for head in ("column", "kind", "missing", "distinct", "role", "examples / note"):
        table.add_column(head, justify="right" if head in ("missing", "distinct") else "left")
    for c in schema["columns"]:
        shown = ", ".join(c.get("examples") or [])
        note = shown if c["role"] == "target" else c.get("reason") or shown
        if c.get("parsed"):
            note = f"read as {c['parsed']}; {note}"
        if c.get("parts"):
            note = f"parts: {', '.join(c['parts'])}"
        role = {"target": "[bold green]target[/]", "dropped": "[dim]dropped[/]"}.get(
            c["role"], "feature"
        )
        table.add_row(
            c["name"], c["kind"], f"{c['missing']:.0%}", str(c["distinct"]), role, note[:60]
        )
    console.print(table)
    target = schema.get("target")
    if target:
        console.print(f"target: [bold]{target['column']}[/] ({target['task']}): {target['reason']}")
    else:
        console.print("target: none proposed (no numeric, boolean or categorical column)")
    console.print(f"{schema['rows']} rows, {len(schema['features'])} features")


@data_app.command("inspect")
def data_inspect(
    file: Annotated[Path, typer.Argument(help="A CSV, TSV, JSONL or Parquet file.")],
    target: Annotated[str | None, typer.Option(help="The column to predict.")] = None,
    json_out: JsonOut = False,
) -> None:
    """Detect each column's type and propose the target and task, from a local file."""
    from fnbundle.tabular.read import read_table
    from fnbundle.tabular.schema import check_trainable, detect, resolve

    if not file.is_file():
        raise fail(f"{file} is not a file.", code=2)
    try:
        frame = read_table(file)
        schema = detect(frame)
        if target is not None:
            schema = resolve(schema, target=target)
    except FnbError as exc:
        raise fail(exc.message) from None
    try:
        check_trainable(frame, schema)
        problem = None
    except FnbError as exc:
        problem = exc.message
    body = schema.model_dump(mode="json")
    if json_out:
        console.print_json(json.dumps({**body, "problem": problem}))
    else:
        print_schema(body, file.name)
    if problem:
        raise fail(f"cannot train on it as it is: {problem}")


@data_app.command("upload")
def data_upload(
    file: Annotated[Path, typer.Argument(help="A CSV, TSV, JSONL or Parquet file.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    json_out: JsonOut = False,
) -> None:
    """Upload a file to the gateway's datasets; print its id and detected schema."""
    if not file.is_file():
        raise fail(f"{file} is not a file.", code=2)
    gateway = Gateway(url, api_key)
    with file.open("rb") as f:
        info = gateway.call("POST", "/v1/datasets", params={"name": file.name}, content=f)
    schema = gateway.call("GET", f"/v1/datasets/{info['id']}/schema")
    if json_out:
        console.print_json(json.dumps({"dataset": info, "schema": schema}))
        return
    console.print(f"dataset [bold]{info['id']}[/] ({info['rows']} rows, {info['bytes']} bytes)")
    print_schema(schema, info["name"])


@data_app.command("list")
def data_list(url: Url = DEFAULT_URL, api_key: ApiKey = None, json_out: JsonOut = False) -> None:
    """The gateway's datasets, newest first."""
    found = Gateway(url, api_key).call("GET", "/v1/datasets")
    if json_out:
        console.print_json(json.dumps(found))
        return
    table = Table()
    for head in ("id", "name", "rows", "columns", "bytes", "created"):
        table.add_column(head)
    for d in found["data"]:
        table.add_row(
            d["id"],
            d["name"],
            str(d["rows"]),
            str(len(d["columns"])),
            str(d["bytes"]),
            d["created"][:19],
        )
    console.print(table)


@data_app.command("delete")
def data_delete(dataset_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Delete a dataset from the gateway."""
    gateway = Gateway(url, api_key)
    import httpx

    try:
        response = gateway.http.delete(f"/v1/datasets/{dataset_id}")
    except httpx.TransportError as exc:
        raise gateway.unreachable(exc) from None
    if response.status_code >= 400:
        from fnbundle.cli.client import api_error

        raise fail(api_error(response))
    console.print(f"deleted {dataset_id}")
