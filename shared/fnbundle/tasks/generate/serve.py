"""The ``generate`` serving task as the registry lists it: ``POST /v1/chat/completions`` and
``POST /v1/completions`` in OpenAI's shape, from a causal LM with LoRA adapters served hot.

A request is checked against the server's limits (n, stop, unsupported fields) before any
model work; its ``model`` resolves to a base and maybe an adapter (``targets.py``); the
base's engine loads once through the model host and the adapter is put on it when it is
not there yet. The engine then answers the request (``answer.py``: prompts tokenized and
checked against the model's context, ``n`` choices per prompt generated concurrently). A
streamed answer is an async iterator of OpenAI's chunks, which the gateway sends as
server-sent events; closing it (the client went away) closes every engine stream, freeing
their slots.

Key rules: engines are imported inside :meth:`GenerateTask.load` (vLLM only when that
backend is picked); the response's ``model`` is the name the client sent; everything the
client sees before the first chunk (limits, unknown model, prompt too long) is a plain
error with its status, never a broken stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from functools import cache
from typing import Any, ClassVar

from fnbundle.errors import InvalidRequest, ModelNotReady, NotFound
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store
from fnbundle.tasks.base import Batch, Route, ServingTask
from fnbundle.tasks.generate import TASK
from fnbundle.tasks.generate.answer import Answer, answer, whole_answer
from fnbundle.tasks.generate.engine import Engine
from fnbundle.tasks.generate.responses import ChatCompletion, Completion
from fnbundle.tasks.generate.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateLimits,
    GenerateRequest,
    check_request,
    document,
)
from fnbundle.tasks.generate.targets import (
    ADAPTER_FILES,
    KIND_ADAPTER,
    NOT_MODEL_FILES,
    AdapterLoader,
    base_id,
    kind,
    resolve_target,
)

log = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm")


@cache
def auto_backend() -> str:
    """vllm where vLLM and a CUDA device are there, else transformers (checked once)."""
    if importlib.util.find_spec("vllm") is None:
        return "transformers"
    import torch

    return "vllm" if torch.cuda.is_available() else "transformers"


class GenerateTask(ServingTask[GenerateRequest, Any, Engine]):
    slug: ClassVar[str] = TASK
    route: ClassVar[str] = "/v1/chat/completions"
    summary: ClassVar[str] = "Chat with a language model (OpenAI's chat completions API)."
    noun: ClassVar[str] = "a text generation model"
    error_style = "openai"
    request_model = ChatCompletionRequest
    response_model = ChatCompletion
    example: ClassVar[dict[str, Any]] = {
        "model": "tiny-llm",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }

    def __init__(self) -> None:
        self.adapters = AdapterLoader()

    def routes(self) -> list[Route]:
        return [
            Route(
                self.route,
                ChatCompletionRequest,
                ChatCompletion,
                self.summary,
                cancel_on_disconnect=True,
                streams=True,
            ),
            Route(
                "/v1/completions",
                CompletionRequest,
                Completion,
                "Complete a prompt with a language model (OpenAI's completions API).",
                cancel_on_disconnect=True,
                streams=True,
            ),
        ]

    # --- models ------------------------------------------------------------------------
    def default_backend(self, settings: Settings) -> str:
        return settings.generate_backend

    def pick_backend(self, artifact: Artifact, requested: str) -> str:
        return auto_backend() if requested == "auto" else requested

    def check_artifact(self, artifact: Artifact) -> None:
        super().check_artifact(artifact)
        if kind(artifact) == KIND_ADAPTER:  # loads on its base (served_by), never alone
            raise InvalidRequest(
                f"Model {artifact.id} is an adapter; it is served on its base {base_id(artifact)}.",
                field="model",
            )

    def served_by(self, artifact: Artifact) -> str:
        return base_id(artifact) if kind(artifact) == KIND_ADAPTER else artifact.id

    def files(self, artifact: Artifact, backend: str) -> list[str]:
        listed = sorted(artifact.manifest.get("files", {}))
        if kind(artifact) == KIND_ADAPTER:
            return [f for f in listed if f in ADAPTER_FILES]
        return [f for f in listed if f not in NOT_MODEL_FILES and not f.startswith("pictures/")]

    def describe(self, artifact: Artifact) -> dict[str, Any]:
        m = artifact.manifest
        described: dict[str, Any] = {"kind": kind(artifact)}
        if kind(artifact) != KIND_ADAPTER:
            for key in ("context_length", "architecture", "parameters", "dtype", "source"):
                described[key] = m.get(key)
            return described
        described["base"] = m.get("base", {}).get("id") if isinstance(m.get("base"), dict) else None
        described["lora"] = m.get("lora")
        with contextlib.suppress(Exception):  # a missing base is told when it is requested
            base = Store(artifact.path.parent.parent).get(base_id(artifact))
            described["context_length"] = base.manifest.get("context_length")
        return described

    def import_base(self, ref: str, name: str, settings: Settings) -> Artifact:
        from fnbundle.tasks.generate.base_import import import_base

        return import_base(ref, name, settings)

    def load(self, artifact: Artifact, backend: str, settings: Settings) -> Engine:
        if backend not in BACKENDS:
            raise InvalidRequest(
                f"Unknown generate backend {backend!r}; use {', '.join(BACKENDS)} or auto.",
                field="backend",
            )
        context = artifact.manifest.get("context_length")
        sizes: dict[str, Any] = {
            "model_id": artifact.id,
            "context_length": context if isinstance(context, int) and context > 0 else None,
            "max_batch": settings.generate_max_batch,
            "max_adapters": settings.generate_max_adapters,
        }
        if backend == "vllm":
            if importlib.util.find_spec("vllm") is None:
                raise ModelNotReady(
                    "FNB_GENERATE_BACKEND is vllm but vLLM is not installed here; set it to "
                    "transformers or auto."
                )
            from fnbundle.tasks.generate.vllm_engine import VLLMEngine

            return VLLMEngine.load(artifact.path, **sizes)
        from fnbundle.tasks.generate.cpu_engine import TransformersEngine

        return TransformersEngine.load(artifact.path, **sizes, threads=settings.threads)

    # --- requests ----------------------------------------------------------------------
    def check_limits(self, request: GenerateRequest, settings: Settings) -> None:
        check_request(request, GenerateLimits.from_settings(settings))

    def document(self, schema: dict[str, Any], settings: Settings) -> None:
        document(schema, settings)

    async def serve(self, host: Any, request: GenerateRequest) -> Answer:
        """Limits, the base's engine (loaded once), the adapter on it, then the answer."""
        self.check_limits(request, host.settings)
        target = resolve_target(request.model, host.artifact)
        engine, _batch = await host.acquire(
            self, target.base.id, self.backend(request, host.settings)
        )
        if target.adapter is None:
            return await answer(engine, request, None, host.settings)
        adapter = target.adapter
        await asyncio.to_thread(self.adapters.ensure, engine, adapter, host.store)
        try:
            return await answer(engine, request, adapter.id, host.settings)
        except NotFound:
            if engine.has_adapter(adapter.id):
                raise
        # Other requests' adapters evicted it before this one started: load it again, once.
        await asyncio.to_thread(self.adapters.ensure, engine, adapter, host.store)
        return await answer(engine, request, adapter.id, host.settings)

    def serve_sync(self, host: Any, request: GenerateRequest) -> ChatCompletion | Completion:
        """A whole answer in this thread (a runtime without HTTP streaming)."""
        self.check_limits(request, host.settings)
        target = resolve_target(request.model, host.artifact)
        engine = host.load_sync(self, target.base.id, self.backend(request, host.settings))
        adapter = None
        if target.adapter is not None:
            self.adapters.ensure(engine, target.adapter, host.store)
            adapter = target.adapter.id
        return asyncio.run(whole_answer(engine, request, adapter, host.settings))

    async def run(
        self, model: Engine, request: GenerateRequest, batch: Batch | None, settings: Settings
    ) -> Answer:
        """The base model's answer (an adapter is :meth:`serve`'s to resolve)."""
        return await answer(model, request, None, settings)

    def run_sync(
        self, model: Engine, request: GenerateRequest, settings: Settings
    ) -> ChatCompletion | Completion:
        return asyncio.run(whole_answer(model, request, None, settings))


__all__ = ["GenerateTask", "auto_backend"]
