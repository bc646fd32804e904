"""OpenAI's responses to generation requests: the whole answer and the stream's chunks.

A non-streamed answer is a ``chat.completion`` or a ``text_completion`` (pydantic models,
so the OpenAPI schema documents them); a streamed one is a series of
``chat.completion.chunk`` / ``text_completion`` chunks built by :class:`ChunkWriter`.

Key rules: choice ``i`` is the ``i``-th output; ``usage`` counts the prompt tokens once
however many choices there are and the completion tokens over every choice; the response's
``model`` is the name the request sent; every chunk of one stream shares its ``id`` and
``created``, and with ``include_usage`` every chunk says ``usage: null`` until the last.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from fnbundle.tasks.generate.schema import (
    ChatCompletionRequest,
    FinishReason,
    GenerateRequest,
)


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Prompt tokens, counted once however many choices.")
    completion_tokens: int = Field(description="New tokens over every choice.")
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(description="Unix time (seconds).")
    model: str = Field(description="The model as the request named it.")
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(description="Unix time (seconds).")
    model: str = Field(description="The model as the request named it.")
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


@dataclass(frozen=True)
class Output:
    """One finished choice: its text, its tokens and why it ended."""

    text: str
    tokens: int
    finish_reason: FinishReason


def new_id(request: GenerateRequest) -> str:
    prefix = "chatcmpl" if isinstance(request, ChatCompletionRequest) else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex}"


def now_s() -> int:
    return int(time.time())


def build_response(
    request: GenerateRequest, outputs: list[Output], prompt_tokens: int
) -> ChatCompletion | Completion:
    """The non-streamed answer: choice ``i`` is ``outputs[i]``."""
    completion_tokens = sum(o.tokens for o in outputs)
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    common: dict[str, Any] = {"id": new_id(request), "created": now_s(), "model": request.model}
    if isinstance(request, ChatCompletionRequest):
        chat = [
            ChatChoice(
                index=i, message=AssistantMessage(content=o.text), finish_reason=o.finish_reason
            )
            for i, o in enumerate(outputs)
        ]
        return ChatCompletion(**common, choices=chat, usage=usage)
    plain = [
        CompletionChoice(index=i, text=o.text, finish_reason=o.finish_reason)
        for i, o in enumerate(outputs)
    ]
    return Completion(**common, choices=plain, usage=usage)


class ChunkWriter:
    """The stream's chunks for one request, as OpenAI sends them (plain dicts: they go
    straight to JSON, on every runtime)."""

    def __init__(self, request: GenerateRequest):
        self.chat = isinstance(request, ChatCompletionRequest)
        self.include_usage = request.include_usage()
        self.head: dict[str, Any] = {
            "id": new_id(request),
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": now_s(),
            "model": request.model,
        }
        if self.include_usage:
            self.head["usage"] = None  # OpenAI's chunks say null until the last one

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {**self.head, "choices": [{**choice, "logprobs": None}]}

    def start(self, index: int) -> dict[str, Any] | None:
        """A chat choice's first chunk names the role; completions have none."""
        if not self.chat:
            return None
        delta = {"role": "assistant", "content": ""}
        return self._chunk({"index": index, "delta": delta, "finish_reason": None})

    def text(self, index: int, text: str) -> dict[str, Any]:
        if self.chat:
            return self._chunk({"index": index, "delta": {"content": text}, "finish_reason": None})
        return self._chunk({"index": index, "text": text, "finish_reason": None})

    def finish(self, index: int, reason: FinishReason) -> dict[str, Any]:
        if self.chat:
            return self._chunk({"index": index, "delta": {}, "finish_reason": reason})
        return self._chunk({"index": index, "text": "", "finish_reason": reason})

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return {**self.head, "choices": [], "usage": usage}
