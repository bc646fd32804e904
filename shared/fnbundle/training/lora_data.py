"""Chat and prompt/completion datasets for LoRA fine-tuning: JSONL rows in, token ids and
labels out, with the loss on the answer alone.

A row is either a chat, ``{"messages": [{"role": "system"|"user"|"assistant", "content":
"..."}, ...]}`` with at least one assistant turn, rendered through the base tokenizer's own
chat template; or a pair, ``{"prompt": "...", "completion": "..."}``, trained as the plain
text ``prompt + completion`` followed by the end-of-sequence token (what
``/v1/completions`` continues).

Key rules: every problem is reported with the file and line before any model is touched
(:class:`~fnbundle.errors.DatasetError`, field ``data``). Labels are ``-100`` everywhere
but on the tokens the model must learn to write: each assistant turn's content and the
token that closes it (``<|im_end|>`` in ChatML; the tokenizer's eos), never the prompt,
the role header or the newline after the closing token; for a pair, the completion and the
eos. The supervised spans are found in the rendered text (each assistant turn starts where
the conversation up to it, rendered with the generation prompt, ends) and mapped to tokens
through the fast tokenizer's character offsets, so any template that renders a
conversation as a growing prefix works. This module imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnbundle.errors import DatasetError, NotFound
from fnbundle.loading import resolve_inside_roots

IGNORE = -100  # the label torch's cross entropy skips
ROLES = ("system", "user", "assistant")
MAX_ROWS = 1_000_000
MAX_LINE_CHARS = 1_000_000  # characters: one example, far above any max_seq_length


@dataclass(frozen=True)
class Example:
    """One row: a chat (``messages``) or a pair (``prompt``, ``completion``)."""

    line: int  # 1-based line in the file, for messages
    messages: tuple[dict[str, str], ...] | None = None
    prompt: str | None = None
    completion: str | None = None


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE where there is no loss

    @property
    def supervised(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def _bad(path: Path, line: int, what: str) -> DatasetError:
    return DatasetError(f"{path.name} line {line}: {what}", field="data")


def _chat(path: Path, n: int, messages: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise _bad(path, n, '"messages" must be a non-empty list of {"role", "content"} objects.')
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(path, n, f'{where} is not an object with "role" and "content".')
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise _bad(path, n, f"{where} has role {role!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise _bad(path, n, f'{where} has no text "content".')
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise _bad(path, n, "the chat has no assistant message to learn from.")
    return tuple(out)


def parse_row(path: Path, n: int, row: Any) -> Example:
    """One JSONL row as an :class:`Example`; a DatasetError naming the line otherwise."""
    if not isinstance(row, dict):
        raise _bad(path, n, "not a JSON object.")
    if "messages" in row:
        return Example(line=n, messages=_chat(path, n, row["messages"]))
    if "prompt" in row or "completion" in row:
        prompt, completion = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, str):
            raise _bad(path, n, '"prompt" must be text.')
        if not isinstance(completion, str) or not completion:
            raise _bad(path, n, '"completion" must be non-empty text.')
        return Example(line=n, prompt=prompt, completion=completion)
    keys = ", ".join(sorted(map(str, row))) or "none"
    raise _bad(
        path,
        n,
        f'has neither "messages" nor "prompt"/"completion" (its keys: {keys[:200]}).',
    )


def load_examples(data: str | Path, roots: list[Path]) -> tuple[Path, list[Example]]:
    """The file ``data`` (inside ``roots``) read as examples, every row checked."""
    path = resolve_inside_roots(data, roots, field="data")
    if path.is_dir():
        raise DatasetError(f"Dataset {data} is a folder; name a .jsonl file.", field="data")
    if not path.is_file():
        raise NotFound(f"Dataset {data} does not exist.", field="data")
    if path.suffix.lower() not in {".jsonl", ".ndjson", ".json"}:
        raise DatasetError(
            f"{path.name}: unsupported format {path.suffix!r}; use .jsonl (one JSON object a line).",
            field="data",
        )
    examples: list[Example] = []
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if len(line) > MAX_LINE_CHARS:
                    raise _bad(path, n, f"longer than {MAX_LINE_CHARS} characters.")
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise _bad(path, n, f"not JSON ({exc}).") from None
                examples.append(parse_row(path, n, row))
                if len(examples) > MAX_ROWS:
                    raise DatasetError(f"{path.name} has more than {MAX_ROWS} rows.", field="data")
    except UnicodeDecodeError:
        raise DatasetError(f"{path.name} is not UTF-8 text.", field="data") from None
    if len(examples) < 2:
        raise DatasetError(
            f"{path.name} has {len(examples)} example(s); at least 2 are needed (one to "
            "train on, one to evaluate).",
            field="data",
        )
    return path, examples


# --- tokens ----------------------------------------------------------------------------


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return str(
        tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    )


def _answer_end(text: str, start: int, end: int, closing: str | None) -> int:
    """Where an answer's supervised text ends: after its closing token when the template
    writes one (``<|im_end|>``), else before the whitespace the template adds."""
    if closing:
        found = text.rfind(closing, start, end)
        if found >= 0:
            return found + len(closing)
    return start + len(text[start:end].rstrip())


def chat_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant answers."""
    closing = tokenizer.eos_token
    text = _render(tokenizer, messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True)
        through = _render(tokenizer, messages[: i + 1], False)
        if not (text.startswith(through) and through.startswith(before)):
            raise DatasetError(
                "The base's chat template does not render a conversation as a growing "
                "prefix, so its answers cannot be located; use prompt/completion rows.",
                field="data",
            )
        spans.append((len(before), _answer_end(text, len(before), len(through), closing)))
    return text, spans


def encode_example(tokenizer: Any, example: Example, max_seq_length: int) -> Encoded:
    """Token ids and labels (``IGNORE`` outside the answers), cut to ``max_seq_length``."""
    if example.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise DatasetError(
                f"line {example.line}: the base tokenizer has no chat template, so chats "
                "cannot be rendered; use prompt/completion rows or a chat model.",
                field="data",
            )
        text, spans = chat_spans(tokenizer, list(example.messages))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    else:
        assert example.prompt is not None and example.completion is not None
        text = example.prompt + example.completion
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        spans = [(len(example.prompt), len(text) + 1)]
        if tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
            offsets.append((len(text), len(text) + 1))  # the eos: after the completion
    labels = [
        token if end > start and any(a <= start and end <= b for a, b in spans) else IGNORE
        for token, (start, end) in zip(ids, offsets, strict=True)
    ]
    return Encoded(ids[:max_seq_length], labels[:max_seq_length])


def encode_all(
    tokenizer: Any, examples: list[Example], max_seq_length: int
) -> tuple[list[Encoded], list[int]]:
    """Every example encoded; those left with no supervised token after the cut to
    ``max_seq_length`` are dropped (their lines returned). None left is an error."""
    kept, dropped = [], []
    for example in examples:
        encoded = encode_example(tokenizer, example, max_seq_length)
        if encoded.supervised:
            kept.append(encoded)
        else:
            dropped.append(example.line)
    if len(kept) < 2:
        raise DatasetError(
            f"Only {len(kept)} example(s) keep an answer within max_seq_length "
            f"{max_seq_length} tokens; raise max_seq_length.",
            field="max_seq_length",
        )
    return kept, dropped


def split_indices(count: int, eval_share: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train / held-out split of ``count`` examples (at least one in each)."""
    import random

    order = list(range(count))
    random.Random(seed).shuffle(order)
    held = min(count - 1, max(1, round(count * eval_share)))
    return sorted(order[held:]), sorted(order[:held])
