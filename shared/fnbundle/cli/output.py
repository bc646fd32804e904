"""What every command prints through: the consoles, one-line failures, logging, figures.

Key rule: a failure is one red line on stderr and a non-zero exit, never a traceback;
``fail`` returns the ``typer.Exit`` so call sites read ``raise fail(...)``.
"""

from __future__ import annotations

import logging
from typing import Any

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fnbundle").setLevel(logging.DEBUG if verbose else logging.INFO)


def money(value: Any) -> str:
    return f"${float(value):.4f}" if value is not None else "-"


def duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def model_line(data: dict[str, Any]) -> str:
    """One model of a compare run, as a line: ``[2/7] random_forest done: accuracy 0.74``."""
    head = f"[{data.get('index')}/{data.get('of')}] {data.get('model')} {data.get('state')}"
    if data.get("state") == "failed":
        return f"{head}: {data.get('reason')}"
    scores = data.get("scores") or {}
    figures = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    took = f" in {data['fit_s']:.1f} s" if data.get("fit_s") is not None else ""
    return f"{head}{': ' + figures if figures else ''}{took}"
