"""``fnbundle export``: write a store model in a layout another runtime loads.

Key rule: the export reads the published artifact as it is (its parity-checked ONNX
graphs and serving tokenizer) and never overwrites a folder holding files unless
``--force``; failures are one line (unknown model, a task or format that cannot be
exported, a folder that is not empty).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fnbundle.cli.output import console, fail
from fnbundle.errors import FnbError
from fnbundle.settings import get_settings


def export(
    model: Annotated[str, typer.Argument(help="Store model name (its newest version) or id.")],
    folder: Annotated[Path, typer.Argument(help="Folder to write (created if missing).")],
    fmt: Annotated[
        str, typer.Option("--format", help="Export format: transformers.js.")
    ] = "transformers.js",
    force: Annotated[
        bool, typer.Option("--force", help="Write into a folder that already holds files.")
    ] = False,
) -> None:
    """Export a text classifier or embedder for Transformers.js (browser or Node)."""
    from fnbundle.export_web import check_format, export_transformers_js
    from fnbundle.store import Store

    settings = get_settings()
    try:
        check_format(fmt)
        artifact = Store(settings.store_root).resolve(model)
        record = export_transformers_js(artifact, folder, settings, force=force)
    except FnbError as exc:
        raise fail(exc.message) from None
    console.print(f"exported [bold]{artifact.id}[/] to {folder} ({record['pipeline']})")
    for rel in record["files"]:
        console.print(f"  {rel}")
    options = ""
    if "call_with" in record:
        pooling, normalize = record["call_with"]["pooling"], record["call_with"]["normalize"]
        options = f', {{ pooling: "{pooling}", normalize: {str(normalize).lower()} }}'
    parent = folder.resolve().parent.as_posix().rstrip("/") + "/"
    console.print("load it with @huggingface/transformers (v3):", highlight=False)
    console.print(
        f'  env.allowRemoteModels = false; env.localModelPath = "{parent}";\n'
        f'  const run = await pipeline("{record["pipeline"]}", "{folder.name}");\n'
        f"  const output = await run(texts{options});",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
