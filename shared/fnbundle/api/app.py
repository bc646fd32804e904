"""The app factory: one FastAPI app for the local gateway and for Modal's ``asgi_app``.

Key rule: routes are thin (parse, call the task service, return); everything they need
hangs off ``app.state``, built here once per process. Models in ``FNB_PRELOAD`` load in a
background thread at start-up; ``/readyz`` answers 503 until they have. The job backend
(``/v1/jobs``: local worker processes, or a RunPod endpoint when ``FNB_JOBS_RUNPOD_ENDPOINT``
is set) starts with the app and stops with it, so no local worker outlives the gateway.
The OpenAPI document lists what the guards answer and the bearer scheme (``api/openapi.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from fnbundle import __version__
from fnbundle.api import classify, health, models
from fnbundle.api import jobs as jobs_api
from fnbundle.api.errors import install_error_handlers
from fnbundle.api.middleware import install_middleware
from fnbundle.api.openapi import install_openapi
from fnbundle.settings import Settings, get_settings
from fnbundle.tasks.classify import ClassifyService

if TYPE_CHECKING:
    from fnbundle.jobs.backend import JobBackend

log = logging.getLogger("fnbundle.api")


class Readiness:
    """What ``/readyz`` reports: preloads still running, or each preload's outcome."""

    def __init__(self) -> None:
        self.done = False
        self.models: dict[str, str] = {}

    @property
    def ready(self) -> bool:
        if not self.done:
            return False
        return not self.models or any(v == "ready" for v in self.models.values())


def create_app(
    settings: Settings | None = None,
    classify_service: ClassifyService | None = None,
    job_manager: JobBackend | None = None,
    *,
    jobs: bool = True,
) -> FastAPI:
    """The gateway app. Runtimes that load models themselves (Modal's ``@modal.enter``)
    pass their ``classify_service``; its already-loaded models count as preloaded.
    ``jobs=False`` leaves out ``/v1/jobs`` (a serving-only deployment)."""
    settings = settings or get_settings()
    service = classify_service or ClassifyService(settings)
    readiness = Readiness()
    manager: JobBackend | None = None
    if jobs:
        if job_manager is None:
            from fnbundle.jobs.backend import job_backend

            job_manager = job_backend(settings)
        manager = job_manager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def preload() -> None:
            readiness.models = {ref: "loading" for ref in service.preload_refs()}
            readiness.models = await asyncio.to_thread(service.preload)
            readiness.done = True
            log.info("models ready: %s", readiness.models or "(store is empty)")

        if manager is not None:
            manager.start()
        task = asyncio.create_task(preload())
        try:
            yield
        finally:
            task.cancel()
            if manager is not None:
                manager.stop()
            await service.close()

    app = FastAPI(
        title="fnbundle",
        version=__version__,
        summary="Train and serve custom ML models: the local gateway.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.classify = service
    app.state.readiness = readiness
    app.state.jobs = manager
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(classify.router)
    if manager is not None:
        app.include_router(jobs_api.router)
    install_middleware(app, settings)
    install_openapi(app, keys=bool(settings.api_keys))
    return app
