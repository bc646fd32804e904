"""The playground: a page at ``/`` for the people who call the endpoints.

Connect with a URL and a key, try every serving task with a form built from ``GET /v1/tasks``
(each answer with its latency and the same call as curl, fetch and the openai SDK), upload a
table and train on it, watch a job live from its event stream, list jobs and models.

Key rules: the page and its assets ship in this package (``static/``: plain JS modules and
CSS, no build step, no CDN), so it works with no internet; it is public, like ``/healthz``,
and holds no data: every call it makes goes to a ``/v1`` route with the key the user typed
(kept in the browser's session storage), so the key check is the gateway's as for any client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from fnbundle.errors import NotFound

STATIC_DIR = Path(__file__).with_name("static")
ASSETS_PATH = "/playground"  # where the page's scripts and styles are served

router = APIRouter(tags=["playground"])


@router.get("/", include_in_schema=False)
def playground() -> FileResponse:
    """The playground page; a 404 saying so where a deployment left its files out."""
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise NotFound(
            "This deployment has no playground: its files (fnbundle/playground/static) were "
            "not shipped with the package."
        )
    return FileResponse(page, headers={"Cache-Control": "no-cache"})


def install_playground(app: FastAPI) -> None:
    """``GET /`` (the page) and its assets under :data:`ASSETS_PATH`. An image that ships
    only the package's ``.py`` files still starts: the page is then a 404, not a crash."""
    app.include_router(router)
    if STATIC_DIR.is_dir():
        app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="playground")
