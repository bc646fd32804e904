"""``fnbundle demo``: train the demo sentiment model if the store has none, then serve it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fnbundle.cli.output import console, setup_logging
from fnbundle.cli.serve import DEMO_NAME, run_server
from fnbundle.cli.train import train_classifier_cmd
from fnbundle.settings import get_settings

DEMO_DATA = Path("data/reviews.csv")


def demo(
    retrain: Annotated[bool, typer.Option(help="Train again even if the model exists.")] = False,
) -> None:
    """Train the demo sentiment model if the store has none, then serve it."""
    from fnbundle.store import Store

    settings = get_settings()
    if retrain or DEMO_NAME not in Store(settings.store_root).latest_ids():
        console.print(
            f"[bold]training the demo model[/] {DEMO_NAME!r} from {DEMO_DATA} (a few minutes on 2 cores)"
        )
        train_classifier_cmd(data=str(DEMO_DATA), name=DEMO_NAME)
    else:
        console.print(f"store already has {DEMO_NAME!r}; `fnbundle demo --retrain` trains it again")
    setup_logging()
    run_server(settings)
