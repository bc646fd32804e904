"""The job routes as an app of their own: what a platform's jobs web endpoint serves (Modal's
``JobsApi.web``), beside the training functions rather than a whole gateway. The dataset
routes come with them (a job trains on a dataset uploaded there), kept where the training
functions read them by ``dataset_sync`` (on Modal: a Volume commit after each change).

Key rule: the same routes, error bodies, API-key check and limits as the gateway's
``/v1/jobs``; a platform's web timeout is passed as ``max_stream_s`` so an event stream ends
cleanly (and the client resumes) before the platform would cut it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fnbundle import __version__
from fnbundle.api import datasets
from fnbundle.api import jobs as jobs_api
from fnbundle.api.errors import install_error_handlers
from fnbundle.api.middleware import install_middleware
from fnbundle.dataset_sync import DatasetSync, LocalDatasets
from fnbundle.jobs.backend import JobBackend
from fnbundle.settings import Settings


def jobs_app(
    settings: Settings,
    jobs: JobBackend,
    *,
    max_stream_s: float | None = None,
    dataset_sync: DatasetSync | None = None,
) -> FastAPI:
    """The job routes alone, with the gateway's error bodies, API-key check and limits.
    ``max_stream_s``: how long an event stream may last before it ends cleanly (under the
    web function's timeout, which would cut it without a final event)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        jobs.start()
        try:
            yield
        finally:
            jobs.stop()

    app = FastAPI(
        title="fnbundle jobs",
        version=__version__,
        summary="Training jobs and their datasets on Modal.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.jobs = jobs
    app.state.max_stream_s = max_stream_s
    app.state.dataset_sync = dataset_sync or LocalDatasets()
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(jobs_api.router)
    app.include_router(datasets.router)
    install_middleware(app, settings)
    return app
