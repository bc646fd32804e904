"""The ``generate`` serving task as the registry lists it: ``POST /v1/chat/completions`` and
``POST /v1/completions`` in OpenAI's shape, from a causal LM with LoRA adapters served hot.

A request is checked against the server's limits (n, stop, unsupported fields) before any
model work; its ``model`` resolves to a base and maybe an adapter (``targets.py``); the
base's engine loads once through the model host and the adapter is put on it when it is
not there yet. The prompt is tokenized off the event loop and checked against the model's
context (a 400 naming the limit: the prompt, or ``max_tokens`` beyond what the context
leaves); then every choice (``n`` per prompt, choice ``i`` seeded ``seed + i``) generates
concurrently in the engine, which batches them with every other request's. A streamed
answer is an async iterator of OpenAI's chunks, which the gateway sends as server-sent
events; closing it (the client went away) closes every engine stream, freeing their slots.

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
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, ClassVar

from fnbundle.errors import InvalidRequest, LimitExceeded, ModelNotReady, NotFound
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store
from fnbundle.tasks.base import Batch, Route, ServingTask
from fnbundle.tasks.generate import TASK
from fnbundle.tasks.generate.engine import Delta, Engine, Sampling
from fnbundle.tasks.generate.schema import (
    ChatCompletion,
    ChatCompletionRequest,
    ChunkWriter,
    Completion,
    CompletionRequest,
    GenerateLimits,
    GenerateRequest,
    Output,
    build_response,
    check_request,
    document,
    template_messages,
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
Answer = ChatCompletion | Completion | AsyncIterator[dict[str, Any]]


@cache
def auto_backend() -> str:
    """vllm where vLLM and a CUDA device are there, else transformers (checked once)."""
    if importlib.util.find_spec("vllm") is None:
        return "transformers"
    import torch

    return "vllm" if torch.cuda.is_available() else "transformers"


@dataclass(frozen=True)
class Prompt:
    """One tokenized prompt and where errors about it point."""

    ids: list[int]
    field: str


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
        context = context if isinstance(context, int) and context > 0 else None
        if backend == "vllm":
            if importlib.util.find_spec("vllm") is None:
                raise ModelNotReady(
                    "FNB_GENERATE_BACKEND is vllm but vLLM is not installed here; set it to "
                    "transformers or auto."
                )
            from fnbundle.tasks.generate.vllm_engine import VLLMEngine

            return VLLMEngine.load(
                artifact.path,
                model_id=artifact.id,
                context_length=context,
                max_batch=settings.generate_max_batch,
                max_adapters=settings.generate_max_adapters,
            )
        from fnbundle.tasks.generate.cpu_engine import TransformersEngine

        return TransformersEngine.load(
            artifact.path,
            model_id=artifact.id,
            context_length=context,
            max_batch=settings.generate_max_batch,
            max_adapters=settings.generate_max_adapters,
            threads=settings.threads,
        )

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


# --- one request -------------------------------------------------------------------------
async def answer(
    engine: Engine, request: GenerateRequest, adapter: str | None, settings: Settings
) -> Answer:
    """The response, or for ``stream`` the iterator of its chunks; every check is done
    before this returns (errors after it are the stream's own)."""
    prompts = await asyncio.to_thread(tokenize, engine, request)
    samplings = [sampling_for(engine, request, p, settings) for p in prompts]
    opened: list[AsyncIterator[Delta]] = []  # nothing runs before the first iteration
    for sampling, prompt in zip(samplings, prompts, strict=True):
        for i in range(request.n):
            seeded = (
                sampling if sampling.seed is None else replace(sampling, seed=sampling.seed + i)
            )
            opened.append(engine.generate(prompt.ids, seeded, adapter))  # the engine's checks
    prompt_tokens = sum(len(p.ids) for p in prompts)
    if request.stream:
        return stream_chunks(request, opened, prompt_tokens)
    return build_response(request, await collect(opened), prompt_tokens)


async def whole_answer(
    engine: Engine, request: GenerateRequest, adapter: str | None, settings: Settings
) -> ChatCompletion | Completion:
    """The answer as one response (runtimes that cannot stream refuse ``stream``)."""
    if request.stream:
        raise InvalidRequest(
            "stream is answered over HTTP (POST /v1/chat/completions, /v1/completions); "
            "this runtime answers whole responses: leave stream out.",
            field="stream",
        )
    response = await answer(engine, request, adapter, settings)
    assert isinstance(response, ChatCompletion | Completion)
    return response


def tokenize(engine: Engine, request: GenerateRequest) -> list[Prompt]:
    """Each prompt's token ids (blocking: the tokenizer and the chat template)."""
    if isinstance(request, ChatCompletionRequest):
        import jinja2

        try:
            ids = engine.encode_chat(template_messages(request))
        except jinja2.TemplateError as exc:  # e.g. roles that must alternate
            raise InvalidRequest(
                f"The model's chat template refused these messages: {exc}", field="messages"
            ) from None
        return [Prompt(ids, "messages")]
    assert isinstance(request, CompletionRequest)
    single = request.single()
    vocab = _vocab_size(engine)
    out = []
    for i, prompt in enumerate(request.prompts()):
        where = "prompt" if single else f"prompt.{i}"
        if isinstance(prompt, str):
            ids = engine.encode(prompt)
        else:
            ids = prompt
            bad = next((t for t in ids if t >= vocab), None) if vocab is not None else None
            if vocab is not None and bad is not None:
                raise InvalidRequest(
                    f"Token id {bad} in {where} is not in the model's vocabulary (0 to "
                    f"{vocab - 1}).",
                    field=where,
                )
        out.append(Prompt(list(ids), where))
    return out


def _vocab_size(engine: Engine) -> int | None:
    tokenizer = getattr(engine, "tokenizer", None)
    return len(tokenizer) if tokenizer is not None else None


def sampling_for(
    engine: Engine, request: GenerateRequest, prompt: Prompt, settings: Settings
) -> Sampling:
    """The prompt's sampling, its new tokens checked against what the context leaves."""
    context, used = engine.context_length, len(prompt.ids)
    if used == 0:
        raise InvalidRequest(f"{prompt.field} is empty once tokenized.", field=prompt.field)
    if used >= context:
        raise LimitExceeded(
            f"{prompt.field} is {used} tokens, but the model's context is {context} tokens, "
            "the completion included; shorten it.",
            field=prompt.field,
        )
    left = context - used
    asked = request.new_tokens()
    if asked is not None and asked > left:
        field = (
            "max_completion_tokens"
            if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens
            else "max_tokens"
        )
        raise LimitExceeded(
            f"{field} is {asked}, but the model's context of {context} tokens leaves {left} "
            f"after the {used}-token prompt; ask for at most {left}.",
            field=field,
        )
    stop_ids = getattr(engine, "default_stop_token_ids", ())
    return Sampling(
        max_tokens=asked if asked is not None else min(settings.generate_default_max_tokens, left),
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop=request.stops(),
        stop_token_ids=tuple(stop_ids),
    )


async def merged(
    streams: list[AsyncIterator[Delta]],
) -> AsyncGenerator[tuple[int, Delta], None]:
    """``(choice index, delta)`` from every stream as they come; leaving early (or an
    error) closes every stream, which frees its slot in the engine."""
    queue: asyncio.Queue[tuple[int, Delta | Exception]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for delta in stream:
                    queue.put_nowait((index, delta))
        except Exception as exc:  # handed to the consumer, which raises it
            queue.put_nowait((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            index, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            if item.finish_reason is not None:
                open_streams -= 1
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect(streams: list[AsyncIterator[Delta]]) -> list[Output]:
    texts: list[list[str]] = [[] for _ in streams]
    tokens = [0] * len(streams)
    reasons: list[Any] = [None] * len(streams)
    async with contextlib.aclosing(merged(streams)) as deltas:
        async for index, delta in deltas:
            texts[index].append(delta.text)
            tokens[index] += delta.tokens
            reasons[index] = delta.finish_reason or reasons[index]
    return [
        Output("".join(t), n, reason or "length")
        for t, n, reason in zip(texts, tokens, reasons, strict=True)
    ]


async def stream_chunks(
    request: GenerateRequest, streams: list[AsyncIterator[Delta]], prompt_tokens: int
) -> AsyncGenerator[dict[str, Any], None]:
    """OpenAI's chunks: each chat choice's role first, then text as it comes, each
    choice's finish reason, and with ``include_usage`` a last chunk with the usage."""
    writer = ChunkWriter(request)
    completion_tokens = 0
    for index in range(len(streams)):
        first = writer.start(index)
        if first is not None:
            yield first
    async with contextlib.aclosing(merged(streams)) as deltas:
        async for index, delta in deltas:
            completion_tokens += delta.tokens
            if delta.text:
                yield writer.text(index, delta.text)
            if delta.finish_reason is not None:
                yield writer.finish(index, delta.finish_reason)
    if writer.include_usage:
        yield writer.usage(prompt_tokens, completion_tokens)


__all__ = ["GenerateTask", "answer", "auto_backend"]
