"""The ``fnbundle`` command line: serve, train, predict, models, jobs, data, demo, export.

Key rule: commands are thin wrappers over the same task code the HTTP API uses; errors
print as one clear line (no traceback) and exit non-zero. One module per command group;
``fnbundle jobs`` talks to a gateway through :mod:`fnbundle.cli.client`, never to the job
database, so it drives a local gateway and a remote one alike.
"""

from __future__ import annotations

import sys

import typer

from fnbundle.cli.data import data_app
from fnbundle.cli.demo import demo
from fnbundle.cli.export import export
from fnbundle.cli.jobs import jobs_app
from fnbundle.cli.models import models_app
from fnbundle.cli.predict import predict_app
from fnbundle.cli.serve import serve
from fnbundle.cli.train import train_app

app = typer.Typer(no_args_is_help=True, help="Train and serve custom ML models.")
app.command()(serve)
app.add_typer(train_app, name="train")
app.add_typer(predict_app, name="predict")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
app.add_typer(data_app, name="data")
app.command()(demo)
app.command()(export)

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
