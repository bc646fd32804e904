"""The app factory: one FastAPI app for the local gateway and for Modal's ``asgi_app``.

Key rule: routes are thin (parse, call the task through the model host, return);
everything they need hangs off ``app.state``, built here once per process. Each serving
task in the registry gets its POST routes (``api/serving.py``). Models in ``FNB_PRELOAD``
load in a background thread at start-up; ``/readyz`` answers 503 until they have. The job backend
(``/v1/jobs``: local worker processes, or a RunPod endpoint when ``FNB_JOBS_RUNPOD_ENDPOINT``
is set) starts with the app and stops with it, so no local worker outlives the gateway.
The OpenAPI document lists what the guards answer and the bearer scheme (``api/openapi.py``).
``GET /metrics``, the request id and ``Server-Timing`` come from ``api/observability.py``,
whose middleware is the outermost: it sees every request, the guards' refusals included.
``GET /`` is the playground page (``fnbundle.playground``); ``GET /v1/tasks`` lists the
registry's tasks for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from fnbundle import __version__
from fnbundle.api import datasets, health, models, tasks
from fnbundle.api import jobs as jobs_api
from fnbundle.api.errors import install_error_handlers
from fnbundle.api.middleware import install_middleware
from fnbundle.api.observability import install_observability
from fnbundle.api.openapi import install_openapi
from fnbundle.api.serving import openai_paths, task_router
from fnbundle.dataset_sync import dataset_sync
from fnbundle.playground import install_playground
from fnbundle.runtime.host import ModelHost
from fnbundle.settings import Settings, get_settings
from fnbundle.tasks import REGISTRY

if TYPE_CHECKING:
    from fnbundle.jobs.backend import JobBackend


def create_app(
    settings: Settings | None = None,
    host: ModelHost | None = None,
    job_manager: JobBackend | None = None,
    *,
    jobs: bool = True,
) -> FastAPI:
    """The gateway app. Runtimes that load models themselves (Modal's ``@modal.enter``)
    pass their ``host``; its already-loaded models count as preloaded.
    ``jobs=False`` leaves out ``/v1/jobs`` (a serving-only deployment)."""
    settings = settings or get_settings()
    host = host or ModelHost(settings)
    manager: JobBackend | None = None
    if jobs:
        if job_manager is None:
            from fnbundle.jobs.backend import job_backend

            job_manager = job_backend(settings)
        manager = job_manager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manager is not None:
            manager.start()
        # A host whose models loaded before the app (Modal's enter) keeps its readiness.
        task = None if host.readiness.done else asyncio.create_task(host.preload_async())
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            if manager is not None:
                manager.stop()
            await host.close()

    app = FastAPI(
        title="fnbundle",
        version=__version__,
        summary="Train and serve custom ML models: the local gateway.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.host = host
    app.state.jobs = manager
    app.state.dataset_sync = dataset_sync(settings)  # a RunPod volume to copy datasets to
    app.state.openai_paths = openai_paths(list(REGISTRY.serving.values()))
    install_error_handlers(app)
    # The inference routes first: a request is matched against the routes in order, and
    # these take nearly all of the traffic.
    for serving in REGISTRY.serving.values():
        app.include_router(task_router(serving))
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(datasets.router)
    app.include_router(tasks.router)
    if manager is not None:
        app.include_router(jobs_api.router)
    install_playground(app)  # GET /: the page, its assets under /playground
    install_middleware(app, settings)
    install_observability(app, settings, host)  # last: its middleware sees every request
    install_openapi(app, settings)
    return app
