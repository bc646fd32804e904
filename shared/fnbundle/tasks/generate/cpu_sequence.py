"""One sequence of the transformers engine: its checks, its state, how a sampled token
becomes a text delta, and the bridge that carries its deltas from the worker thread to the
consumer.

:func:`check_prompt` refuses what the model cannot run before anything is queued. A
:class:`GenSequence` holds a request's prompt, what it generated, its sampler and its
``detok.TextStream``; :meth:`GenSequence.accept` takes one sampled token and hands out what
it adds to the text, ending the sequence on a stop token, a stop string or its token budget.
A :class:`DeltaBridge` is made on the consumer's event loop: the worker thread calls
:meth:`DeltaBridge.emit` (``call_soon_threadsafe``), the consumer awaits
:meth:`DeltaBridge.next`.

Key rules: a sequence emits exactly one delta with a ``finish_reason`` or one error, then is
``done``; the deltas' ``tokens`` add up to the tokens generated (text held back by the
detokenizer is counted with the delta that sends it). The fields marked so are the engine's
to change under its locks (``cpu_engine``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fnbundle.errors import FnbError, InvalidRequest, LimitExceeded
from fnbundle.tasks.generate.detok import TextStream
from fnbundle.tasks.generate.engine import Delta, FinishReason, Sampling

Emit = Callable[[Delta | BaseException], None]


def check_prompt(
    prompt_ids: list[int], sampling: Sampling, model_id: str, context_length: int, vocab_size: int
) -> None:
    """Refuse a sequence the model cannot run: an empty prompt, one that fills the context
    (LimitExceeded), no new tokens, or token ids outside the vocabulary."""
    if not prompt_ids:
        raise InvalidRequest("The prompt is empty.", field="prompt")
    if len(prompt_ids) >= context_length:
        raise LimitExceeded(
            f"The prompt is {len(prompt_ids)} tokens; model {model_id} takes "
            f"{context_length} tokens in all, the completion included.",
            field="prompt",
        )
    if sampling.max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1.", field="max_tokens")
    if min(prompt_ids) < 0 or max(prompt_ids) >= vocab_size:
        raise InvalidRequest(
            f"Prompt token ids must lie in [0, {vocab_size}) for model {model_id}.",
            field="prompt",
        )


@dataclass(eq=False)
class GenSequence:
    """One request: its prompt, what it generated, and where its deltas go."""

    prompt_ids: list[int]
    sampling: Sampling
    adapter: str | None
    emit: Emit  # thread-safe: hands a delta (or an error) to the consumer's event loop
    max_new: int  # max_tokens, cut to what the context leaves
    stream: TextStream
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)
    unsent_tokens: int = 0  # tokens not yet covered by a delta
    cancelled: bool = False  # the consumer went away
    done: bool = False  # finished, failed or cancelled: its row leaves at the next step
    released: bool = False  # its hold on the adapter is given back

    @property
    def position(self) -> int:
        """RoPE position of the last generated token (the one the next step feeds)."""
        return len(self.prompt_ids) + len(self.generated) - 1

    def accept(self, token: int) -> None:
        """Take one sampled token and hand out what it adds to the text."""
        self.generated.append(token)
        self.unsent_tokens += 1
        if token in self.sampling.stop_token_ids:
            return self.finish("stop", self.stream.finish())
        text = self.stream.push(token)
        if self.stream.stopped:
            return self.finish("stop", text)
        if len(self.generated) >= self.max_new:
            return self.finish("length", text + self.stream.finish())
        if text:
            self.emit(Delta(text=text, tokens=self.unsent_tokens))
            self.unsent_tokens = 0

    def finish(self, reason: FinishReason, text: str) -> None:
        if self.stream.stopped:
            reason = "stop"
        self.emit(Delta(text=text, tokens=self.unsent_tokens, finish_reason=reason))
        self.unsent_tokens = 0
        self.done = True

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self.emit(exc)
            self.done = True


class DeltaBridge:
    """Deltas (or an error) from the worker thread to the event loop it was made on."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._deltas: asyncio.Queue[Delta | BaseException] = asyncio.Queue()

    def emit(self, item: Delta | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the consumer's loop is closed: nobody reads
            self._loop.call_soon_threadsafe(self._deltas.put_nowait, item)

    async def next(self) -> Delta:
        """The next delta; an fnbundle error is raised as it is, any other as a RuntimeError."""
        item = await self._deltas.get()
        if isinstance(item, FnbError):
            raise item
        if isinstance(item, BaseException):
            raise RuntimeError(f"Generation failed: {item}") from item
        return item
