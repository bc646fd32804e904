"""``fnbundle serve``: the local gateway, and the curl lines it prints once it is up.

Key rule: without API keys it binds loopback only, unless told something else guards the port.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Annotated

import typer

from fnbundle.cli.output import console, fail, setup_logging
from fnbundle.logs import configure_logging
from fnbundle.settings import Settings, get_settings

DEMO_NAME = "sentiment"  # the model the curl examples name when the store is empty


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def curl_examples(settings: Settings, host: str, port: int) -> str:
    from fnbundle.store import Store

    names = sorted(Store(settings.store_root).latest_ids()) or [DEMO_NAME]
    auth = ' -H "Authorization: Bearer $FNB_API_KEY"' if settings.api_keys else ""
    base = f"http://{host}:{port}"
    body = json.dumps(
        {"model": names[0], "texts": ["Arrived early and works great.", "Cold food, rude staff."]}
    )
    return "\n".join(
        [
            f"curl -s {base}/v1/classify{auth} -H 'Content-Type: application/json' \\\n  -d '{body}'",
            f"curl -s {base}/v1/models{auth}",
            f"curl -s {base}/readyz",
            f"open {base}/docs   # interactive API docs",
        ]
    )


def run_server(settings: Settings) -> None:
    from fnbundle.api import create_app
    from fnbundle.api.server import build_server

    if (
        not settings.api_keys
        and not is_loopback(settings.host)
        and not settings.allow_insecure_bind
    ):
        raise fail(
            f"refusing to listen on {settings.host} without API keys: set FNB_API_KEYS, bind "
            "127.0.0.1, or set FNB_ALLOW_INSECURE_BIND=1 if something else guards the port.",
            2,
        )

    configure_logging(settings.log_format, level=logging.WARNING, package_level=logging.INFO)

    def started() -> None:
        console.print("[bold green]fnbundle gateway is up.[/] Try:\n")
        console.print(  # soft_wrap: never break a line someone will paste
            curl_examples(settings, settings.host, settings.port),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        console.print()

    build_server(create_app(settings), settings, on_started=started).run()


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    preload: Annotated[
        str | None, typer.Option(help="Models to load at start, comma-separated; '*' = all.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="auto | onnx-int8 | onnx-fp32 | openvino-bf16 | torch")
    ] = None,
) -> None:
    """Serve every model in the store over HTTP (the local gateway)."""
    setup_logging()
    overrides = {
        k: v
        for k, v in {"host": host, "port": port, "preload": preload, "backend": backend}.items()
        if v is not None
    }
    from pydantic import ValidationError

    try:
        settings = Settings(**overrides) if overrides else get_settings()  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "FNB_" + "_".join(map(str, first["loc"])).upper()
        raise fail(f"{name}: {first['msg'].removeprefix('Value error, ')}", 2) from None
    run_server(settings)
