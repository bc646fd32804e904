"""The next token of one sequence from its logits: greedy, or temperature and nucleus (top-p).

Key rule: a sequence samples from its own row with its own ``torch.Generator``, so a
seeded sequence draws the same tokens whatever else shares its batch (and an unseeded one
gets a generator seeded from the system's entropy). Greedy ties go to the lowest id, as
``torch.argmax`` and ``model.generate(do_sample=False)`` both do.
"""

from __future__ import annotations

import secrets

import torch

from fnbundle.tasks.generate.engine import Sampling


def new_generator(sampling: Sampling) -> torch.Generator | None:
    """A CPU generator for a sampled sequence (None for greedy ones, which draw nothing)."""
    if sampling.temperature <= 0:
        return None
    generator = torch.Generator(device="cpu")
    seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
    generator.manual_seed(seed % 2**64)
    return generator


def sample_token(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None
) -> int:
    """One token id from ``logits`` (shape [vocab], float) under ``sampling``."""
    if sampling.temperature <= 0 or generator is None:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        probs = _nucleus(probs, sampling.top_p)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose mass first reaches ``top_p`` (at least one),
    renormalised."""
    sorted_probs, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop = mass_before >= top_p
    drop[0] = False  # the most likely token always stays
    sorted_probs[drop] = 0.0
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return kept / kept.sum()
