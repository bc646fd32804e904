"""What a generation engine does, whichever library runs it.

An engine holds one base model in memory and answers :meth:`Engine.generate`: prompt
token ids and :class:`Sampling` settings in, an async stream of :class:`Delta` out (new
text and how many tokens it took), ending with one delta whose ``finish_reason`` is set.
Closing the stream early (the client went away) stops that sequence at the next step and
frees its slot. Concurrent calls share forward passes: that is the engine's job, not the
caller's. ``adapter`` names a LoRA adapter the engine has been given with
:meth:`Engine.add_adapter`; None is the base model.

Key rules: text deltas are exact (their concatenation is the decoded completion, stop
string excluded); ``stop`` strings and ``stop_token_ids`` end a sequence with
``finish_reason="stop"``, ``max_tokens`` with ``"length"``; a seed makes sampling
reproducible per sequence, whatever else shares its batch; temperature 0 is greedy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Sampling:
    """How one sequence is sampled and when it ends."""

    max_tokens: int  # new tokens at most
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # strings that end the sequence (not included in the text)
    stop_token_ids: tuple[int, ...] = field(default=())  # e.g. the tokenizer's eos and <|im_end|>


@dataclass(frozen=True)
class Delta:
    """New output of one sequence since its last delta."""

    text: str
    tokens: int  # new tokens this delta covers (usage counts them)
    finish_reason: FinishReason | None = None


class Engine(Protocol):
    """One loaded base model that generates; see the module docstring."""

    model_id: str  # the store artifact id (or hf reference) of the base
    backend: str  # "transformers" or "vllm"
    context_length: int  # prompt plus completion tokens at most

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids of a chat through the tokenizer's chat template (generation prompt added)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Prompt ids of a plain completion prompt."""
        ...

    def generate(
        self, prompt_ids: list[int], sampling: Sampling, adapter: str | None = None
    ) -> AsyncIterator[Delta]: ...

    def add_adapter(self, name: str, folder: Path) -> None:
        """Make adapter ``name`` (a PEFT folder: adapter_config.json and
        adapter_model.safetensors) servable; a resident one is kept, the least recently used
        dropped past the engine's bound."""
        ...

    def has_adapter(self, name: str) -> bool: ...

    async def close(self) -> None:
        """Stop the engine's worker; pending streams end."""
        ...
