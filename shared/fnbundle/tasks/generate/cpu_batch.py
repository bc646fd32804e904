"""The KV cache of a running batch whose rows join and leave between steps.

Rows are right-aligned: each row's tokens end at the last cache slot, and the slots
before its first token are padding, hidden by an attention mask ``[rows, slots]`` (1 for
a real token). With that layout the causal mask in slot space is right for every row at
once, so transformers' own mask code applies unchanged; each row passes its own
``position_ids`` (RoPE positions count its real tokens only). Joining rows whose cache is
shorter or longer is a left pad of the shorter side; rows that leave are dropped with
``batch_select_indices``, and slots that are padding in every remaining row are cut off.

Key rule: the cache is a plain ``DynamicCache`` (full attention in every layer); a model
with sliding-window layers therefore sees its window counted in slots, padding included.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def prefill_inputs(
    prompts: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask and position ids of ``prompts``, left-padded to one width."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


class KVBatch:
    """The cache (a ``DynamicCache``) and attention mask of the running rows."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.mask: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache()

    def join(self, cache: Any, mask: torch.Tensor) -> None:
        """Append rows (a prefill's cache and mask) after the running ones."""
        from transformers import DynamicCache

        if self.mask is None:
            self.cache, self.mask = cache, mask
            return
        slots = max(self.mask.shape[1], mask.shape[1])
        layers = [
            (
                torch.cat([_pad_left(old.keys, slots), _pad_left(new.keys, slots)]),
                torch.cat([_pad_left(old.values, slots), _pad_left(new.values, slots)]),
            )
            for old, new in zip(self.cache.layers, cache.layers, strict=True)
        ]
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat(
            [
                F.pad(self.mask, (slots - self.mask.shape[1], 0)),
                F.pad(mask, (slots - mask.shape[1], 0)),
            ]
        )

    def step_mask(self) -> torch.Tensor:
        """The attention mask of a decode step: every row adds one real token."""
        assert self.mask is not None
        return F.pad(self.mask, (0, 1), value=1)

    def stepped(self, cache: Any, mask: torch.Tensor) -> None:
        """Take the cache and mask a decode step left."""
        self.cache, self.mask = cache, mask

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order); cut slots that are padding in all of them."""
        if not rows:
            self.clear()
            return
        assert self.mask is not None
        if rows == list(range(self.rows)):
            return
        index = torch.tensor(rows, dtype=torch.long)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        first = int(self.mask.any(dim=0).nonzero()[0].item())
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[..., first:, :]
                layer.values = layer.values[..., first:, :]

    def clear(self) -> None:
        self.cache, self.mask = None, None


def _pad_left(states: torch.Tensor, slots: int) -> torch.Tensor:
    """Zero-pad cached states [batch, heads, length, dim] on the left to ``slots``."""
    return F.pad(states, (0, 0, slots - states.shape[-2], 0))
