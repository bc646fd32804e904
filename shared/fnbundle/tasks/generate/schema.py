"""OpenAI's chat completions and completions requests, and their limits.

The requests follow ``POST /v1/chat/completions`` and ``POST /v1/completions`` as the
``openai`` SDK sends them: ``messages`` (roles system, developer, user, assistant; content a
string or a list of ``{"type": "text", "text": ...}`` parts) or ``prompt`` (a string, a list
of strings, one token array or a list of them), ``max_tokens`` / ``max_completion_tokens``,
``temperature``, ``top_p``, ``stop``, ``seed``, ``n``, ``stream`` and
``stream_options.include_usage``. The responses and the stream's chunks are
:mod:`fnbundle.tasks.generate.responses`.

Key rules: a field this server does not know is accepted and ignored (as vLLM does, so a
client's ``user`` or ``metadata`` never breaks a request), but a field it knows and cannot
honour (``logprobs``, ``tools``, ``response_format`` json, penalties...) is a 400 naming it
when its value asks for something; a value that asks for nothing (``logprobs: false``,
``tools: []``) passes. :func:`check_request` runs before any model work and raises only
``fnbundle.errors``; limits that depend on the model (its context) are checked by the task
once the prompt is tokenized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from fnbundle.errors import InvalidRequest, LimitExceeded
from fnbundle.settings import Settings

FinishReason = Literal["stop", "length"]
TokenIds = list[Annotated[int, Field(strict=True, ge=0)]]
MAX_STOP_CHARS = 200  # characters per stop string: a stop is a marker, not a document

# Fields OpenAI defines that this server cannot honour, with the values that ask for
# nothing (sent by clients that fill every field with its default).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "echo": (None, False),
    "suffix": (None, ""),
}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="developer is OpenAI's newer name for system, and is sent as system."
    )
    content: StrictStr | list[TextPart] = Field(
        description="The text, or a list of text parts (joined with newlines)."
    )
    name: StrictStr | None = Field(None, description="Accepted and ignored.")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(
        False, description="Send a last chunk with the usage and no choices before [DONE]."
    )


PositiveInt = Annotated[int, Field(strict=True, ge=1)]


class _SamplingFields(BaseModel):
    """What both routes share; unknown fields are kept (to be refused or ignored)."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(
        description="A generate model in the store: a base or an adapter by name (its newest "
        "version) or version id, or '<base>:<adapter>'."
    )
    max_tokens: PositiveInt | None = Field(
        None,
        description="New tokens at most; default: the server's generate_default_max_tokens, "
        "capped by what the model's context leaves after the prompt.",
    )
    temperature: Annotated[float, Field(ge=0, le=2)] = Field(
        1.0, description="0 is greedy; higher is more random."
    )
    top_p: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="Sample from the smallest set of tokens whose probability reaches it."
    )
    stop: StrictStr | list[StrictStr] | None = Field(
        None, description="Up to generate_max_stop strings that end a completion (not included)."
    )
    seed: Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)] | None = Field(
        None, description="Same seed, same request: same text (choice i samples with seed + i)."
    )
    n: PositiveInt = Field(1, description="Completions per prompt, up to generate_max_n.")
    stream: bool = Field(False, description="Send server-sent events, ending in data: [DONE].")
    stream_options: StreamOptions | None = None
    user: StrictStr | None = Field(None, description="End-user id; accepted and ignored.")

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)] = Field(
        description="The conversation, rendered with the model's chat template."
    )
    max_completion_tokens: PositiveInt | None = Field(
        None, description="OpenAI's newer name for max_tokens; wins when both are given."
    )

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``."""

    prompt: StrictStr | list[StrictStr] | TokenIds | list[TokenIds] = Field(
        description="A text, a list of texts, one array of token ids or a list of them."
    )

    def new_tokens(self) -> int | None:
        return self.max_tokens

    def single(self) -> bool:
        """One prompt (a text or one token array), not a list of them."""
        raw = self.prompt
        return isinstance(raw, str) or (bool(raw) and all(isinstance(x, int) for x in raw))

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: a text or a token array."""
        if self.single():
            return [self.prompt]  # type: ignore[list-item]
        return list(self.prompt)  # type: ignore[arg-type]


GenerateRequest = ChatCompletionRequest | CompletionRequest


# --- limits ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateLimits:
    max_n: int  # choices per prompt (FNB_GENERATE_MAX_N)
    max_stop: int  # stop strings (FNB_GENERATE_MAX_STOP)
    max_prompts: int  # prompts per completions request (FNB_GENERATE_MAX_PROMPTS)

    @classmethod
    def from_settings(cls, settings: Settings) -> GenerateLimits:
        return cls(
            max_n=settings.generate_max_n,
            max_stop=settings.generate_max_stop,
            max_prompts=settings.generate_max_prompts,
        )


def _asks_for_something(value: Any, inactive: tuple[Any, ...]) -> bool:
    """True unless ``value`` is null or one of ``inactive`` (of the same type: 0 is not False)."""
    return value is not None and not any(
        value == x and type(value) is type(x) for x in inactive if x is not None
    )


def check_request(request: GenerateRequest, limits: GenerateLimits) -> None:
    """Refuse what the server cannot or may not do, before any model work (400s)."""
    extra = request.model_extra or {}
    for name, inactive in UNSUPPORTED.items():
        if name in extra and _asks_for_something(extra[name], inactive):
            raise InvalidRequest(
                f"{name} is not supported by this server; leave it out.", field=name
            )
    best_of = extra.get("best_of")
    if isinstance(request, CompletionRequest) and best_of not in (None, 1, request.n):
        raise InvalidRequest("best_of is not supported; leave it out.", field="best_of")
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "stream_options is only allowed when stream is true.", field="stream_options"
        )
    if request.n > limits.max_n:
        raise LimitExceeded(
            f"n is {request.n}, over the limit of {limits.max_n} completions per prompt.",
            field="n",
        )
    stops = request.stops()
    if len(stops) > limits.max_stop:
        raise LimitExceeded(
            f"stop has {len(stops)} strings, over the limit of {limits.max_stop}.", field="stop"
        )
    for i, stop in enumerate(stops):
        where = "stop" if isinstance(request.stop, str) else f"stop.{i}"
        if not stop:
            raise InvalidRequest(f"{where} is an empty string.", field=where)
        if len(stop) > MAX_STOP_CHARS:
            raise LimitExceeded(
                f"{where} has {len(stop)} characters, over the limit of {MAX_STOP_CHARS}.",
                field=where,
            )
    if isinstance(request, CompletionRequest):
        _check_prompts(request, limits)
    else:
        _check_messages(request)


def _check_prompts(request: CompletionRequest, limits: GenerateLimits) -> None:
    prompts = request.prompts()
    single = request.single()
    if not prompts:
        raise InvalidRequest("prompt is an empty list.", field="prompt")
    if len(prompts) > limits.max_prompts:
        raise LimitExceeded(
            f"prompt has {len(prompts)} prompts, over the limit of {limits.max_prompts}.",
            field="prompt",
        )
    for i, prompt in enumerate(prompts):
        where = "prompt" if single else f"prompt.{i}"
        if len(prompt) == 0:
            raise InvalidRequest(f"{where} is empty.", field=where)
        if isinstance(prompt, str) and not _encodable(prompt):
            raise InvalidRequest(f"{where} is not valid Unicode text.", field=where)


def _check_messages(request: ChatCompletionRequest) -> None:
    for i, message in enumerate(request.messages):
        if not _encodable(message.text()):
            raise InvalidRequest(
                f"messages.{i}.content is not valid Unicode text.", field=f"messages.{i}.content"
            )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON can escape a lone surrogate such as \ud800
        return False
    return True


def template_messages(request: ChatCompletionRequest) -> list[dict[str, str]]:
    """The messages as a chat template reads them (developer sent as system)."""
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in request.messages
    ]


def document(schema: dict[str, Any], settings: Settings) -> None:
    """This gateway's limits in a request's OpenAPI schema."""
    props = schema.get("properties", {})
    if "n" in props:
        props["n"]["maximum"] = settings.generate_max_n
    if "stop" in props:
        props["stop"]["description"] = (
            f"Up to {settings.generate_max_stop} strings that end a completion (not included)."
        )
