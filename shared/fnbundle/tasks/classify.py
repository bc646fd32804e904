"""The ``classify`` task: texts in, labels with probabilities out.

Key rules: limits are checked before any model work and answered with a 400 naming the
limit; the HTTP API serves store models only (a name or version id, never a path or a Hub
reference); a model is loaded once per process (at start-up for preloaded models) and a
request for a model still loading waits at most ``load_wait_s`` before a 503.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fnbundle.batching import DynamicBatcher
from fnbundle.classifier import TextClassifier, pick_backend
from fnbundle.errors import FnbError, InvalidRequest, LimitExceeded, ModelNotReady, NotFound
from fnbundle.loading import MODEL_CACHE, load_classifier
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store

log = logging.getLogger(__name__)

BackendName = Literal["auto", "onnx-int8", "onnx-fp32", "torch"]


def _encodable(text: str) -> bool:
    """JSON may escape lone surrogates (``"\\ud800"``) that no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Store model name (newest version) or version id.")
    texts: list[str] = Field(description="Texts to classify.")
    backend: BackendName | None = Field(
        None, description="Inference backend; default: the model's best parity-checked export."
    )


class Prediction(BaseModel):
    label: str
    score: float = Field(description="Probability of the predicted label.")
    scores: dict[str, float] = Field(description="Probability of every label.")


class ClassifyResponse(BaseModel):
    model: str = Field(description="The version id that answered.")
    backend: str
    predictions: list[Prediction]


class ClassifyService:
    """Classification for one process: limits, model cache, one batcher per loaded model."""

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
        self._batchers: dict[tuple[str, str], DynamicBatcher] = {}
        self._artifacts: dict[str, Artifact] = {}
        # Called when a model is not found (a Modal Volume's reload), so a warm container
        # sees models published after it started; at most once per refresh_every_s seconds,
        # so a stream of requests for an unknown name does not hammer the storage.
        self.refresh = refresh
        self.refresh_every_s = refresh_every_s
        self._refreshed_at = -math.inf  # monotonic seconds
        self._refresh_lock = threading.Lock()

    # --- checks -------------------------------------------------------------------------
    def check_limits(self, request: ClassifyRequest) -> None:
        s = self.settings
        if not request.texts:
            raise LimitExceeded(
                f"texts is empty: send between 1 and {s.max_texts} texts.", field="texts"
            )
        if len(request.texts) > s.max_texts:
            raise LimitExceeded(
                f"Too many texts: {len(request.texts)} > the limit of {s.max_texts} per request.",
                field="texts",
            )
        for i, text in enumerate(request.texts):
            if len(text) > s.max_text_chars:
                raise LimitExceeded(
                    f"texts[{i}] has {len(text)} characters, over the limit of {s.max_text_chars}.",
                    field=f"texts.{i}",
                )
            if not text.strip():
                raise InvalidRequest(f"texts[{i}] is empty.", field=f"texts.{i}")
            if not _encodable(text):
                raise InvalidRequest(
                    f"texts[{i}] is not valid Unicode text (a lone UTF-16 surrogate such as "
                    "\\ud800 cannot be encoded); send UTF-8 text.",
                    field=f"texts.{i}",
                )

    def _backend(self, request: ClassifyRequest) -> str:
        return request.backend or self.settings.backend

    # --- loading ------------------------------------------------------------------------
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

    def load_sync(self, ref: str, backend: str | None = None) -> TextClassifier:
        return load_classifier(self.artifact(ref), self.settings, backend, self.store)

    async def load(self, ref: str, backend: str) -> TextClassifier:
        artifact = self.artifact(ref)
        if MODEL_CACHE.state((artifact.id, pick_backend(artifact, backend))) in {"ready", "failed"}:
            return self.load_sync(artifact.id, backend)  # cache hit: no thread hop
        loading = asyncio.ensure_future(asyncio.to_thread(self.load_sync, artifact.id, backend))
        try:
            return await asyncio.wait_for(asyncio.shield(loading), self.settings.load_wait_s)
        except TimeoutError:
            raise ModelNotReady(
                f"Model {artifact.id} is still loading; retry shortly.", retry_after=5
            ) from None

    def preload_refs(self) -> list[str]:
        refs = self.settings.preload
        if "*" in refs:
            return sorted(self.store.latest_ids().values())
        return list(refs)

    def preload(self) -> dict[str, str]:
        """Load every preloaded model (blocking); return {ref: "ready" | error message}."""
        status: dict[str, str] = {}
        for ref in self.preload_refs():
            try:
                self.load_sync(ref)
                status[ref] = "ready"
            except FnbError as exc:
                log.error("preloading %s failed: %s", ref, exc.message)
                status[ref] = exc.message
            except Exception as exc:
                log.exception("preloading %s failed", ref)
                status[ref] = f"failed: {type(exc).__name__}"
        return status

    # --- running ------------------------------------------------------------------------
    def _batcher(self, model: TextClassifier) -> DynamicBatcher:
        key = (model.model_id, model.backend)
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = self._batchers[key] = DynamicBatcher(
                model.predict_proba,
                max_size=self.settings.batch_max_size,
                max_wait_s=self.settings.batch_max_wait_ms / 1000,
            )
        return batcher

    async def classify(self, request: ClassifyRequest) -> ClassifyResponse:
        self.check_limits(request)
        model = await self.load(request.model, self._backend(request))
        probs = await self._batcher(model).submit(request.texts)
        return self._response(model, model.format(probs))

    def classify_sync(self, request: ClassifyRequest) -> ClassifyResponse:
        """The same contract without batching (CLI, single-request workers)."""
        self.check_limits(request)
        model = self.load_sync(request.model, self._backend(request))
        return self._response(model, model.predict(request.texts))

    @staticmethod
    def _response(model: TextClassifier, predictions: list[dict]) -> ClassifyResponse:
        return ClassifyResponse(
            model=model.model_id,
            backend=model.backend,
            predictions=[Prediction(**p) for p in predictions],
        )

    async def close(self) -> None:
        for batcher in self._batchers.values():
            await batcher.close()
        self._batchers.clear()
