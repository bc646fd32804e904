"""Training jobs over HTTP: estimate, submit, read, follow live, cancel, retry, list.

Key rules: routes only parse, call the job manager on ``app.state.jobs`` and format; a job
id is checked against :data:`JOB_ID` before it reaches the manager, so raw input never
touches the job database; every failure leaves in the one error shape of ``api/errors.py``
(a full queue is a 429 with ``Retry-After``). ``GET /v1/jobs/{id}/events`` is a
server-sent event stream (``id: <seq>``, ``event: <type>``, ``data: <JobEvent JSON>``):
it replays from the start, or after ``?after=N`` / ``Last-Event-ID`` (the header wins, so a
reconnecting browser ``EventSource`` resumes where it stopped), and ends after the
terminal ``state`` event, or, where the app sets ``app.state.max_stream_s`` (a platform
that cuts long requests, such as Modal's web timeout), cleanly before the cut with a
``retry:`` line and no terminal event, so clients resume without losing an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, StringConstraints
from sse_starlette import EventSourceResponse, ServerSentEvent

from fnbundle.api.errors import error_responses, stream_error_responses
from fnbundle.errors import InvalidRequest, NotFound
from fnbundle.jobs.schema import JOB_ID, Job, JobEvent, JobStatus, JobSubmit, Task

if TYPE_CHECKING:
    from fnbundle.jobs.backend import JobBackend

# Query and header rules stated in the OpenAPI document, so a client (or a schema fuzzer)
# knows them: ``before`` is empty (no cursor) or a job id; ``status`` is a comma-separated
# list of statuses; ``Last-Event-ID`` is an event's seq (digits, at most 18).
BEFORE_PATTERN = rf"^(?:{JOB_ID.pattern})?$"
_STATUS = "|".join(s.value for s in JobStatus)
STATUS_PATTERN = rf"^\s*(?:{_STATUS})\s*(?:,\s*(?:{_STATUS})\s*)*$"
SEQ_PATTERN = r"^\s*[0-9]{0,18}\s*$"
StatusList = Annotated[str, StringConstraints(pattern=STATUS_PATTERN)]
PING_S = 15  # seconds between keep-alive comments, under the usual proxy idle timeouts
RECONNECT_MS = 1000  # milliseconds a client waits before resuming a stream that hit its limit
MAX_LIST = 200  # jobs per page of GET /v1/jobs

router = APIRouter(tags=["jobs"])


class JobAccepted(BaseModel):
    """``POST /v1/jobs`` answer; ``GET`` the ``Location`` header for the whole job."""

    id: str
    status: JobStatus
    estimate: dict[str, Any] | None = None


class JobList(BaseModel):
    jobs: list[Job]


class JobEstimate(BaseModel):
    """``POST /v1/jobs/estimate`` answer: what the same body's submit would record."""

    task: str
    hardware: str  # cpu or gpu: the worker class the job would go to
    gpu: str | None  # the GPU it would run on (None: a CPU worker, or no choice yet)
    estimate: dict[str, Any] | None  # None where this platform checks the data at start
    budget_usd: float | None = None
    within_budget: bool | None = None  # None without a budget or a cost figure


class JobEventStream(EventSourceResponse):
    """sse-starlette's response, with its media type on the class so OpenAPI lists the
    stream as ``text/event-stream`` (each event's ``data`` is a :class:`JobEvent`)."""

    media_type = "text/event-stream"


def _manager(request: Request) -> JobBackend:
    manager: JobBackend = request.app.state.jobs
    return manager


def _checked_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise NotFound(f"No job {job_id[:80]!r}.", field="id")
    return job_id


def _location(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


LIST_QUERY = frozenset({"status", "task", "limit", "before"})


def _only_known_query(request: Request, known: frozenset[str]) -> None:
    """A misspelt filter (``?stauts=running``) is a 400 naming it, not silently every job."""
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter {unknown[0]!r}: use {', '.join(sorted(known))}.",
            field=unknown[0],
        )


def _parse_statuses(values: list[str] | None) -> list[JobStatus] | None:
    """``?status=running,queued`` and ``?status=running&status=queued`` both work (each
    value is checked against :data:`STATUS_PATTERN` before it gets here)."""
    names = [part.strip() for value in values or [] for part in value.split(",") if part.strip()]
    return [JobStatus(n) for n in names] or None


def _resume_point(after: int | None, last_event_id: str | None) -> int:
    if last_event_id is not None and last_event_id.strip():
        return int(last_event_id.strip())  # digits: checked against SEQ_PATTERN
    return after or 0


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses=error_responses(
        400,
        401,
        404,
        413,
        422,
        429,
        502,
        503,
        ok={"model": JobAccepted, "description": "The job this idempotency key created"},
    ),
)
def submit_job(body: JobSubmit, request: Request, response: Response) -> JobAccepted:
    """Queue a training job. 202 with a ``Location`` header; the same ``idempotency_key``
    again answers 200 with the job it created. 404 for a dataset or base model that does not
    exist; 429 with ``Retry-After`` when the queue is full; 502 when the training platform
    refused or did not answer; 503 when it cannot take jobs now.
    """
    job, created = _manager(request).submit(body)
    response.status_code = 202 if created else 200
    response.headers["Location"] = _location(job.id)
    return JobAccepted(id=job.id, status=job.status, estimate=job.estimate)


@router.post(
    "/v1/jobs/estimate",
    response_model=JobEstimate,
    responses=error_responses(400, 401, 404, 413, 422),
)
def estimate_job(body: JobSubmit, request: Request) -> JobEstimate:
    """The cost and time estimate and the hardware a ``POST /v1/jobs`` of the same body
    would record, checked the same way (422 naming ``params.<field>``, 404 for a dataset
    that does not exist); nothing is queued."""
    from fnbundle.jobs.service import JobService, hardware_of
    from fnbundle.jobs.submit import new_job

    manager = _manager(request)
    if isinstance(manager, JobService):  # the platform's own check: its prices, its GPU
        job = manager.launcher.new_job(body)
    else:
        job = new_job(body, request.app.state.settings)
    usd = (job.estimate or {}).get("usd")
    return JobEstimate(
        task=job.task,
        hardware=hardware_of(job.task, job.params),
        gpu=job.gpu,
        estimate=job.estimate,
        budget_usd=job.budget_usd,
        within_budget=None if job.budget_usd is None or usd is None else usd <= job.budget_usd,
    )


@router.get("/v1/jobs", response_model=JobList, responses=error_responses(400, 401, 404, 422))
def list_jobs(
    request: Request,
    status: Annotated[
        list[StatusList] | None,
        Query(
            description="Comma-separated statuses, e.g. running,queued; one of: "
            + ", ".join(s.value for s in JobStatus),
        ),
    ] = None,
    task: Annotated[Task | None, Query(description="Only jobs of this task.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST, description="Jobs per page.")] = 50,
    before: Annotated[
        str | None,
        Query(
            description="A job id: the page of jobs older than it (empty: the first page).",
            pattern=BEFORE_PATTERN,
        ),
    ] = None,
) -> JobList:
    """Jobs, newest first; page with ``before=<last id of the previous page>``."""
    _only_known_query(request, LIST_QUERY)
    jobs = _manager(request).list(
        status=_parse_statuses(status), task=task, limit=limit, before=before or None
    )
    return JobList(jobs=jobs)


@router.get("/v1/jobs/{job_id}", response_model=Job, responses=error_responses(401, 404, 422))
def get_job(job_id: str, request: Request) -> Job:
    """One job: status, progress, metrics, cost, the published model id or the error."""
    return _manager(request).get(_checked_id(job_id))


@router.post(
    "/v1/jobs/{job_id}/cancel", response_model=Job, responses=error_responses(401, 404, 409, 422)
)
def cancel_job(job_id: str, request: Request) -> Job:
    """Stop a queued or running job (a running one keeps its last checkpoint). Cancelling a
    cancelled job answers it again; any other finished job is a 409."""
    return _manager(request).cancel(_checked_id(job_id))


@router.post(
    "/v1/jobs/{job_id}/retry",
    status_code=202,
    response_model=Job,
    responses=error_responses(401, 404, 409, 422, 429),
)
def retry_job(job_id: str, request: Request, response: Response) -> Job:
    """Queue a failed or timed-out job again; it resumes from its last checkpoint."""
    job = _manager(request).retry(_checked_id(job_id))
    response.headers["Location"] = _location(job.id)
    return job


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=JobEventStream,
    responses={
        **stream_error_responses(400, 401, 404, 422),
        200: {
            "model": JobEvent,
            "description": "Server-sent events: `id: <seq>`, `event: <type>`, "
            "`data: <JobEvent JSON>`; the stream ends after the terminal `state` event.",
        },
    },
)
def job_events(
    job_id: str,
    request: Request,
    after: Annotated[
        int | None, Query(ge=0, description="Replay the events after this seq.")
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            description="Set by a reconnecting EventSource (an event's seq); wins over 'after'.",
            pattern=SEQ_PATTERN,
        ),
    ] = None,
) -> JobEventStream:
    """Follow a job live: every event since ``after`` (default: the start), then new ones.
    Where the platform cuts long requests, the stream ends before it with a ``retry:`` and
    a comment, without a terminal ``state`` event: reconnect with ``Last-Event-ID``."""
    start = _resume_point(after, last_event_id)
    manager = _manager(request)
    manager.get(_checked_id(job_id))  # a 404 before the stream starts, not inside it
    max_stream_s: float | None = getattr(request.app.state, "max_stream_s", None)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        loop = asyncio.get_running_loop()
        deadline = None if max_stream_s is None else loop.time() + max_stream_s
        events = manager.follow(job_id, after=start)
        try:
            while True:
                left = None if deadline is None else max(deadline - loop.time(), 0.0)
                try:  # wait_for, not timeout(): a deadline must not fire while we yield
                    event = await asyncio.wait_for(anext(events), left)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    yield ServerSentEvent(
                        comment="stream time limit; reconnect with Last-Event-ID",
                        retry=RECONNECT_MS,
                    )
                    return
                yield ServerSentEvent(
                    data=event.model_dump_json(), event=event.type, id=str(event.seq)
                )
        finally:
            close = getattr(events, "aclose", None)  # an async generator: end its polling
            if close is not None:
                await close()

    return JobEventStream(stream(), ping=PING_S)
