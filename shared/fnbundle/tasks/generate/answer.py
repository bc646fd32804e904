"""One generation request answered by an engine: its prompts tokenized and checked, its
choices generated concurrently, their deltas merged into a response or a chunk stream.

Every prompt (a chat's rendered messages, or each completions prompt) is tokenized off the
event loop and checked against the model's context (a 400 naming the limit: the prompt, or
``max_tokens`` beyond what the context leaves); then every choice (``n`` per prompt, choice
``i`` seeded ``seed + i``) opens its own engine stream, and the engine batches them with
every other request's. :func:`merged` interleaves the streams as deltas come.

Key rules: every check is done before :func:`answer` returns, so everything the client sees
before the first chunk is a plain error with its status, never a broken stream; leaving a
merged stream early (the client went away) or an error in one closes every stream, which
frees their slots in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from fnbundle.errors import InvalidRequest, LimitExceeded
from fnbundle.logs import current_request
from fnbundle.settings import Settings
from fnbundle.tasks.generate.engine import Delta, Engine, Sampling
from fnbundle.tasks.generate.responses import (
    ChatCompletion,
    ChunkWriter,
    Completion,
    Output,
    build_response,
)
from fnbundle.tasks.generate.schema import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    template_messages,
)

Answer = ChatCompletion | Completion | AsyncIterator[dict[str, Any]]


@dataclass(frozen=True)
class Prompt:
    """One tokenized prompt and where errors about it point."""

    ids: list[int]
    field: str


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
    completion_tokens, started = 0, time.perf_counter()
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
    context = current_request()
    if context is not None:  # counted whether or not the client asked for the usage
        context.note_generated(completion_tokens, time.perf_counter() - started)
    if writer.include_usage:
        yield writer.usage(prompt_tokens, completion_tokens)
