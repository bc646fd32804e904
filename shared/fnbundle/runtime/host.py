"""The model host: every serving task's models, loaded once per process and kept in bounds.

It does for any task what a serving process needs besides the task's own logic: resolve a
name through the store (an artifact is read once per id; a miss calls ``refresh``, e.g. a
Modal Volume reload, at most once per ``refresh_every_s``), load a model once however many
requests wait for it, preload ``FNB_PRELOAD`` at start-up and report readiness, answer 503
while a model loads for longer than ``load_wait_s``, give each loaded model one dynamic
batcher, and evict the least recently used models when the loaded artifacts' files add up
to more than ``FNB_MODEL_CACHE_MIB`` (a model with an async ``close()``, such as a
generation engine and its worker, is closed when it leaves, and when the host closes).

Key rules: a failed load is a state with its reason (a 503 naming it, shown in
GET /v1/models), not a crash and not a permanent verdict: it is retried once
``model_retry_s`` has passed (the file may have been fixed), and a name whose alias moves
to a new version loads that version. A model's size is the size of the artifact files its
backend reads, as the manifest lists them: cheap, known before loading, and what the
process maps into memory. The most recently loaded model is never evicted, so one model
larger than the bound still serves.

For operators: each load is timed (GET /metrics shows the loaded models and their load
times through :attr:`ModelHost.observer`), and the request being served learns its task,
its model and, when no batcher timed it, how long the model took to answer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fnbundle.errors import FnbError, ModelNotReady, NotFound
from fnbundle.logs import current_request
from fnbundle.runtime.batching import DynamicBatcher
from fnbundle.settings import MIB, Settings
from fnbundle.store import Artifact, Store

if TYPE_CHECKING:
    from fnbundle.tasks.base import ServingTask

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (artifact id, backend)
State = Literal["loading", "ready", "failed"]


class HostObserver(Protocol):
    """What the host reports as it works (the gateway's metrics)."""

    def model_loaded(self, task: str, model: str, backend: str, load_s: float) -> None: ...

    def batch_observer(self, task: str, model: str) -> Callable[[int], None]:
        """Called with each forward pass's size of this model's batcher."""
        ...


class _Entry:
    def __init__(self, size_bytes: int, task: str) -> None:
        self.done = threading.Event()
        self.model: Any = None
        self.error: BaseException | None = None
        self.failed_at = 0.0  # monotonic seconds
        self.size_bytes = size_bytes
        self.task = task
        self.load_s: float | None = None  # how long the load took, once it succeeded
        self.batcher: DynamicBatcher | None = None

    @property
    def state(self) -> State:
        if not self.done.is_set():
            return "loading"
        return "failed" if self.error is not None else "ready"

    def backend(self, key_backend: str) -> str:
        """The backend serving: the model's own ``backend`` where it names one (a key
        ``auto`` is resolved at load: OpenVINO or ONNX Runtime), else the key's."""
        served = getattr(self.model, "backend", None)
        return served if isinstance(served, str) and served else key_backend


async def close_model(model: Any) -> None:
    """Stop what a model runs besides its weights (a generation engine's worker): models
    with an async ``close()`` are closed when they leave the host."""
    close = getattr(model, "close", None)
    if close is not None and inspect.iscoroutinefunction(close):
        try:
            await close()
        except Exception:  # a model that fails to close is gone all the same
            log.warning("closing model %s failed", getattr(model, "model_id", "?"), exc_info=True)


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


class ModelHost:
    """Loaded models of every serving task in one process (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        *,
        refresh: Callable[[], None] | None = None,
        refresh_every_s: float = 5.0,
    ):
        self.settings = settings
        self.store = store or Store(settings.store_root)
        self.readiness = Readiness()
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._artifacts: dict[str, Artifact] = {}
        self.refresh = refresh
        self.refresh_every_s = refresh_every_s
        self._refreshed_at = -math.inf  # monotonic seconds
        self._refresh_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.observer: HostObserver | None = None  # the app's metrics, when it keeps any

    # --- the store ----------------------------------------------------------------------
    def artifact(self, ref: str) -> Artifact:
        """Resolve a name or id; artifacts are immutable, so each id is read once. On a miss
        the store is refreshed (see ``refresh``) and looked at once more."""
        try:
            artifact_id = self.store.resolve_id(ref)
        except NotFound:
            if self.refresh is None:
                raise
            with self._refresh_lock:
                now = time.monotonic()
                if now - self._refreshed_at >= self.refresh_every_s:
                    self._refreshed_at = now
                    try:
                        self.refresh()
                    except Exception:  # the miss stands; the next window tries again
                        log.warning("refreshing the store after a miss failed", exc_info=True)
            artifact_id = self.store.resolve_id(ref)  # still missing: NotFound again
        artifact = self._artifacts.get(artifact_id)
        if artifact is None:
            artifact = self._artifacts[artifact_id] = self.store.get(artifact_id)
        return artifact

    # --- states -------------------------------------------------------------------------
    def state(self, key: Key) -> State | None:
        entry = self._entries.get(key)
        return entry.state if entry is not None else None

    def reason(self, key: Key) -> str | None:
        """Why the load of ``key`` failed (the user-facing message), or None."""
        entry = self._entries.get(key)
        if entry is None or entry.state != "failed":
            return None
        error = entry.error
        return error.message if isinstance(error, FnbError) else type(error).__name__

    def loaded(self) -> list[Key]:
        """Keys of the ready models, least recently used first."""
        return [k for k, e in self._entries.items() if e.state == "ready"]

    def loaded_bytes(self) -> int:
        return sum(e.size_bytes for e in self._entries.values() if e.state == "ready")

    def loaded_models(self) -> list[tuple[str, str, str, float]]:
        """``(task, model id, backend serving, load seconds)`` of each ready model."""
        with self._lock:
            entries = list(self._entries.items())
        return [
            (e.task, key[0], e.backend(key[1]), e.load_s or 0.0)
            for key, e in entries
            if e.state == "ready"
        ]

    def served_backend(self, key: Key) -> str | None:
        """The backend serving the ready model ``key``, or None."""
        entry = self._entries.get(key)
        return entry.backend(key[1]) if entry is not None and entry.state == "ready" else None

    # --- loading ------------------------------------------------------------------------
    def _key(
        self, task: ServingTask[Any, Any, Any], ref: str, backend: str
    ) -> tuple[Key, Artifact]:
        artifact = self.artifact(ref)
        task.check_artifact(artifact)
        return (artifact.id, task.pick_backend(artifact, backend)), artifact

    def _size(self, task: ServingTask[Any, Any, Any], artifact: Artifact, backend: str) -> int:
        files = artifact.manifest.get("files", {})
        sizes = (files.get(rel, {}).get("size", 0) for rel in task.files(artifact, backend))
        return sum(s for s in sizes if isinstance(s, int))

    def _entry(self, task: ServingTask[Any, Any, Any], ref: str, backend: str) -> _Entry:
        """The entry of a ready model, loading it (in this thread) if needed."""
        from fnbundle.loading import load_artifact

        key, artifact = self._key(task, ref, backend)
        with self._lock:
            entry = self._entries.get(key)
            retry = (
                entry is not None
                and entry.state == "failed"
                and time.monotonic() - entry.failed_at >= self.settings.model_retry_s
            )
            owner = entry is None or retry
            if owner:
                entry = _Entry(self._size(task, artifact, key[1]), task.slug)
                self._entries[key] = entry
            else:
                self._entries.move_to_end(key)
        assert entry is not None
        if owner:
            started = time.perf_counter()
            try:
                entry.model = load_artifact(artifact, task, key[1], self.settings, self.store)
                entry.load_s = time.perf_counter() - started
                if self.observer is not None:
                    backend = entry.backend(key[1])
                    self.observer.model_loaded(task.slug, key[0], backend, entry.load_s)
            except BaseException as exc:
                entry.error = exc
                entry.failed_at = time.monotonic()
            finally:
                entry.done.set()
            if entry.error is None:
                self._evict(keep=key)
        else:
            entry.done.wait()
        if entry.error is not None:
            raise entry.error
        return entry

    def _evict(self, keep: Key) -> None:
        """Drop least recently used ready models until the loaded files fit the bound."""
        limit = self.settings.model_cache_mib * MIB
        with self._lock:
            for key in list(self._entries):
                if self.loaded_bytes() <= limit:
                    break
                entry = self._entries[key]
                if key == keep or entry.state != "ready":
                    continue
                del self._entries[key]
                log.info("evicted model %s (%s) to stay within %s MiB", *key, limit / MIB)
                if entry.batcher is not None:
                    entry.batcher.retire()
                if self._loop is not None and not self._loop.is_closed():
                    asyncio.run_coroutine_threadsafe(close_model(entry.model), self._loop)

    def load_sync(self, task: ServingTask[Any, Any, Any], ref: str, backend: str) -> Any:
        """The loaded model (blocking): the CLI, single-request workers, preload."""
        return self._entry(task, ref, backend).model

    async def acquire(
        self, task: ServingTask[Any, Any, Any], ref: str, backend: str
    ) -> tuple[Any, DynamicBatcher | None]:
        """The model and its batcher (None when the task runs requests alone); a model
        still loading after ``load_wait_s`` is a 503 (the load goes on)."""
        self._loop = asyncio.get_running_loop()  # where an evicted model's close() runs
        key, _artifact = self._key(task, ref, backend)
        if self.state(key) == "ready":  # cache hit: no thread hop
            entry = self._entry(task, ref, backend)
        else:
            loading = asyncio.ensure_future(asyncio.to_thread(self._entry, task, ref, backend))
            try:
                entry = await asyncio.wait_for(asyncio.shield(loading), self.settings.load_wait_s)
            except TimeoutError:
                raise ModelNotReady(
                    f"Model {key[0]} is still loading; retry shortly.", retry_after=5
                ) from None
        if entry.batcher is None:
            fn = task.batch_fn(entry.model)
            if fn is not None:
                entry.batcher = DynamicBatcher(
                    fn,
                    max_size=self.settings.batch_max_size,
                    max_wait_s=self.settings.batch_max_wait_ms / 1000,
                )
                if self.observer is not None:
                    entry.batcher.on_batch = self.observer.batch_observer(task.slug, key[0])
        context = current_request()
        if context is not None:
            context.task, context.model = task.slug, key[0]
            context.served_at = time.perf_counter()
        return entry.model, entry.batcher

    # --- serving ------------------------------------------------------------------------
    async def serve(self, task: ServingTask[Any, Any, Any], request: Any) -> Any:
        """One request of ``task``: limits first, then its model (loaded once), batched
        (the task's :meth:`~fnbundle.tasks.base.ServingTask.serve`). A whole answer that no
        batcher timed is timed here, from the model in hand to the answer."""
        answer = await task.serve(self, request)
        context = current_request()
        if (
            context is not None
            and context.inference_s is None
            and context.served_at is not None
            and not hasattr(answer, "__aiter__")  # a stream: its time is the client's to see
        ):
            context.inference_s = time.perf_counter() - context.served_at
        return answer

    def serve_sync(self, task: ServingTask[Any, Any, Any], request: Any) -> Any:
        """The same answer without batching (the CLI, Modal's method, single-request
        workers)."""
        return task.serve_sync(self, request)

    def batchers(self) -> list[DynamicBatcher]:
        return [e.batcher for e in self._entries.values() if e.batcher is not None]

    # --- preloading ---------------------------------------------------------------------
    def preload_refs(self) -> list[str]:
        refs = self.settings.preload
        if "*" in refs:
            return sorted(self.store.latest_ids().values())
        return list(refs)

    def preload(self) -> dict[str, str]:
        """Load every preloaded model with its task's default backend (blocking); return
        {ref: "ready" | error message}."""
        from fnbundle.tasks import REGISTRY

        status: dict[str, str] = {}
        for ref in self.preload_refs():
            try:
                artifact = self.artifact(ref)
                task = REGISTRY.serving_task(artifact.task)
                # An adapter preloads the base it is served on.
                self.load_sync(task, task.served_by(artifact), task.default_backend(self.settings))
                status[ref] = "ready"
            except FnbError as exc:
                log.error("preloading %s failed: %s", ref, exc.message)
                status[ref] = exc.message
            except Exception as exc:
                log.exception("preloading %s failed", ref)
                status[ref] = f"failed: {type(exc).__name__}"
        return status

    async def preload_async(self) -> None:
        """Preload in a thread, keeping :attr:`readiness` up to date (the app's start-up)."""
        refs = self.preload_refs()
        self.readiness.models = {ref: "loading" for ref in refs}
        if refs:  # nothing to load: ready at once, not after a thread hop a probe can beat
            self.readiness.models = await asyncio.to_thread(self.preload)
        self.readiness.done = True
        log.info("models ready: %s", self.readiness.models or "(store is empty)")

    def mark_preloaded(self, status: dict[str, str]) -> None:
        """Readiness for a host whose models were preloaded before the app started."""
        self.readiness.models = status
        self.readiness.done = True

    async def close(self) -> None:
        for batcher in self.batchers():
            await batcher.close()
        for entry in self._entries.values():
            entry.batcher = None
            if entry.state == "ready":
                await close_model(entry.model)
