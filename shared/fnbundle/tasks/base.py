"""What a task declares, so that runtimes can serve and train it without naming it.

A **serving task** (``classify``, ``embed``, ...) answers one request from a loaded model:
its slug (also the ``task`` of the artifacts it serves), route, request and response
schemas, error style, the artifact files a backend reads, how to load a model once, how
to check a request's limits, and how to run it (batched through the model host, or alone).
A **training task** (``train_classifier``, ...) produces artifacts for a serving task: its
params schema (from which the CLI options, the job params and the docs are generated), its
cost estimate, its train function (typed events, checkpoints, stop control) and its
hardware class (which the platforms route to a CPU or a GPU worker).

Key rules: nothing outside a task's own folder names a task; the gateway, the Modal apps,
the RunPod handlers, the job service, the CLI and deploy read :mod:`fnbundle.tasks` (the
registry) instead. Declaring a task imports nothing heavy: torch, transformers and
onnxruntime are imported inside ``load`` / ``train``, so the registry is cheap to import.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from fnbundle.runtime.host import ModelHost
    from fnbundle.settings import Settings
    from fnbundle.store import Artifact
    from fnbundle.training.control import TrainControl

ErrorStyle = Literal["fnbundle", "openai"]  # our {"error": {type, message, field}} or OpenAI's
# How the playground (GET /) renders a route's form; None: from the request schema's shape.
UiHint = Literal["texts", "rows", "chat", "similarity", "form"]
Hardware = Literal["cpu", "gpu"]  # where a training task's jobs run on a cloud platform

Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)
Model = TypeVar("Model", bound="LoadedModel")
Params = TypeVar("Params", bound=BaseModel)


class LoadedModel(Protocol):
    """What every loaded model tells the host about itself."""

    model_id: str  # the artifact's version id
    backend: str  # e.g. onnx-int8, onnx-fp32, torch


class Batch(Protocol):
    """The host's dynamic batcher for one loaded model: items in, one row per item out."""

    async def submit(self, items: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Route:
    """One POST route of a serving task: its path, schemas and summary."""

    path: str
    request_model: type[BaseModel]
    response_model: type[BaseModel]
    summary: str
    # A client that goes away cancels its request (long generations), streamed or not.
    cancel_on_disconnect: bool = False
    # It may answer server-sent events (a request with ``stream: true``).
    streams: bool = False
    # The playground's renderer for it (None: chosen from the request schema's shape).
    ui: UiHint | None = None


class ServingTask(ABC, Generic[Req, Resp, Model]):
    """One request in, one response out (or a stream: an async iterator of chunks, which
    the gateway sends as server-sent events), from a model loaded once."""

    slug: ClassVar[str]  # the task name, and the manifest's ``task`` of its artifacts
    route: ClassVar[str]  # e.g. /v1/classify
    summary: ClassVar[str]  # one line for the OpenAPI document and the CLI
    request_model: ClassVar[type[BaseModel]]
    response_model: ClassVar[type[BaseModel]]
    noun: ClassVar[str]  # what its models are called in messages: "a classifier"
    error_style: ClassVar[ErrorStyle] = "fnbundle"
    example: ClassVar[dict[str, Any]]  # a request body that works against the demo store

    def routes(self) -> list[Route]:
        """Every POST route of the task (the first is ``route``); a task with several
        (chat completions and completions) returns them all, each request model its own."""
        return [Route(self.route, self.request_model, self.response_model, self.summary)]

    def model_ref(self, request: Req) -> str:
        """The store model a request names (name or version id)."""
        return str(request.model)  # type: ignore[attr-defined]

    def default_backend(self, settings: Settings) -> str:
        """The backend of a request that names none (and of preloads, GET /v1/models)."""
        return "auto"

    def backend(self, request: Req, settings: Settings) -> str:
        """The backend a request asks for; ``auto`` lets the artifact choose."""
        return self.default_backend(settings)

    def check_artifact(self, artifact: Artifact) -> None:
        """Refuse (400) a model published for another task."""
        from fnbundle.errors import InvalidRequest

        if artifact.task != self.slug:
            raise InvalidRequest(
                f"Model {artifact.id} is a {artifact.task!r} model, not {self.noun}.",
                field="model",
            )

    def check_limits(self, request: Req, settings: Settings) -> None:
        """Raise a LimitExceeded / InvalidRequest naming the field; runs before model work."""

    def document(self, schema: dict[str, Any], settings: Settings) -> None:
        """Write limits that come from ``settings`` into the request's OpenAPI schema."""

    def served_by(self, artifact: Artifact) -> str:
        """The artifact id whose loaded model serves ``artifact``: itself, or for a model
        served on top of another (a LoRA adapter on its base) that other one."""
        return artifact.id

    def describe(self, artifact: Artifact) -> dict[str, Any]:
        """Task-specific fields of a model in GET /v1/models (a classifier's labels)."""
        return {}

    def import_base(self, ref: str, name: str, settings: Settings) -> Artifact:
        """Publish base model ``ref`` (``builtin:``, ``hf:``, a folder) to the store as
        ``name``, ready to serve (``fnbundle models import``); tasks whose models come
        from training only refuse."""
        from fnbundle.errors import InvalidRequest

        raise InvalidRequest(
            f"{self.slug} models are trained, not imported: see `fnbundle train`.", field="task"
        )

    @abstractmethod
    def pick_backend(self, artifact: Artifact, requested: str) -> str:
        """The backend that will serve ``artifact`` (``auto`` resolved)."""

    @abstractmethod
    def files(self, artifact: Artifact, backend: str) -> list[str]:
        """The artifact files ``backend`` reads (their hashes are checked before loading)."""

    @abstractmethod
    def load(self, artifact: Artifact, backend: str, settings: Settings) -> Model:
        """Load once per process; raise ArtifactCorrupt for a model that cannot serve."""

    def batch_fn(self, model: Model) -> Callable[[list[Any]], Any] | None:
        """What the host's batcher runs on gathered items; None: requests run alone."""
        return None

    @abstractmethod
    async def run(
        self, model: Model, request: Req, batch: Batch | None, settings: Settings
    ) -> Resp:
        """Answer one request (``batch`` is the model's batcher when ``batch_fn`` gave one);
        limits that depend on the model (its vocabulary, its width) are checked here, before
        any inference."""

    @abstractmethod
    def run_sync(self, model: Model, request: Req, settings: Settings) -> Resp:
        """The same answer without batching (the CLI, single-request workers)."""

    async def serve(self, host: ModelHost, request: Req) -> Resp:
        """One request through ``host``: limits first, then its model (loaded once),
        batched. A task whose request names more than one artifact (an adapter on its
        base) overrides this."""
        self.check_limits(request, host.settings)
        backend = self.backend(request, host.settings)
        model, batch = await host.acquire(self, self.model_ref(request), backend)
        return await self.run(model, request, batch, host.settings)

    def serve_sync(self, host: ModelHost, request: Req) -> Resp:
        """The same answer without batching (the CLI, Modal's method, single-request
        workers)."""
        self.check_limits(request, host.settings)
        backend = self.backend(request, host.settings)
        model = host.load_sync(self, self.model_ref(request), backend)
        return self.run_sync(model, request, host.settings)


class TrainingTask(ABC, Generic[Params]):
    """A job that trains and publishes an artifact for the serving task ``serves``."""

    slug: ClassVar[str]  # e.g. train_classifier
    serves: ClassVar[str]  # the serving task of the artifacts it publishes
    summary: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]  # CLI options, job params and docs come from it
    hardware: ClassVar[Hardware]
    # Params of a job on a file of data/ (``data``: the file's name), for deploy's examples.
    example: ClassVar[dict[str, Any]]

    def hardware_for(self, params: dict[str, Any]) -> Hardware:
        """The hardware class one job of this task runs on (its params JSON); by default
        the task's own ``hardware``."""
        return self.hardware

    @abstractmethod
    def estimate(
        self, params: Params, settings: Settings, *, platform: str, gpu: str | None
    ) -> Any:
        """The cost and time estimate shown at submit (a ``costs.Estimate``)."""

    @abstractmethod
    def train(
        self,
        params: Params,
        settings: Settings,
        on_event: Callable[[Any], None],
        control: TrainControl,
    ) -> Any:
        """Train, publish, return the result (``model_id``, ``metrics``); emits typed events,
        checkpoints into ``control.checkpoint_dir`` and stops when ``control`` says so."""


class Registry:
    """Every task, by slug. Lookups of unknown slugs are clear errors, never KeyErrors."""

    def __init__(self) -> None:
        self.serving: dict[str, ServingTask[Any, Any, Any]] = {}
        self.training: dict[str, TrainingTask[Any]] = {}

    def add(self, task: ServingTask[Any, Any, Any] | TrainingTask[Any]) -> None:
        table: dict[str, Any] = self.serving if isinstance(task, ServingTask) else self.training
        if task.slug in self.serving or task.slug in self.training:
            raise ValueError(f"task {task.slug!r} is declared twice")
        table[task.slug] = task

    def serving_task(self, slug: str) -> ServingTask[Any, Any, Any]:
        from fnbundle.errors import InvalidRequest

        try:
            return self.serving[slug]
        except KeyError:
            known = ", ".join(sorted(self.serving)) or "(none)"
            raise InvalidRequest(f"Unknown task {slug!r}; known: {known}.", field="task") from None

    def training_task(self, slug: str) -> TrainingTask[Any]:
        from fnbundle.errors import InvalidRequest

        try:
            return self.training[slug]
        except KeyError:
            known = ", ".join(sorted(self.training)) or "(none)"
            raise InvalidRequest(f"Unknown task {slug!r}; known: {known}.", field="task") from None

    def slugs(self) -> list[str]:
        return sorted([*self.serving, *self.training])
