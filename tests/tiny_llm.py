"""A tiny random-init causal LM for the generation and LoRA tests: a byte-level BPE
tokenizer trained here, a chat template, and a 2-layer Llama built from a config. Nothing
is downloaded; the folder looks like a Hub model (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with its chat template, generation_config.json), so
it is imported into the store the way a user's model would be.

The tokenizer is trained by :func:`bpe_merges`, a plain BPE whose ties are broken by the
pair itself, so every build of one corpus gives the same merges (the tokenizers library's
trainer breaks ties in hash order: two builds differ). Byte-level: any text round-trips.

``cached_tiny_llama(folder)`` builds once per machine into ``tests/.data/`` under a key of
this file, the corpus and the library versions, and hands each caller a copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections import Counter
from importlib.metadata import version
from itertools import pairwise
from pathlib import Path

from tests.tiny import REVIEWS, corpus

# ChatML, the template most open chat models use: the assistant turn ends with <|im_end|>,
# which is also the end-of-sequence token generation stops at.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CONTEXT = 512  # tokens: the model's max_position_embeddings


def bpe_merges(words: Counter[tuple[str, ...]], count: int) -> list[tuple[str, str]]:
    """``count`` BPE merges over ``words`` (symbol tuples with their frequency): each step
    merges the most frequent adjacent pair, the smallest pair among equals."""
    words = Counter(words)
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in words.items():
            for pair in pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, n in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def build_tokenizer(texts: list[str], merges: int = 400):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        words.update(tuple(w) for w, _ in pre.pre_tokenize_str(text))
    learned = bpe_merges(words, merges)
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    for a, b in learned:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(BPE(vocab=vocab, merges=learned))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    return tok


def build_tiny_llama(folder: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer Llama (grouped-query attention, RoPE) with its tokenizer, saved as a Hub
    model folder would be."""
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    tok = build_tokenizer(corpus())
    folder.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=CONTEXT,
    )
    fast.save_pretrained(folder)
    eos, pad = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def cached_tiny_llama(folder: Path) -> Path:
    """A copy in ``folder`` of the tiny Llama, built only when nothing it depends on is cached."""
    key = hashlib.sha256(Path(__file__).read_bytes() + REVIEWS.read_bytes())
    for package in ("torch", "transformers", "tokenizers"):
        key.update(f"{package}=={version(package)}".encode())
    cached = REVIEWS.parent / f"tiny-llama-{key.hexdigest()[:16]}"
    if not (cached / "model.safetensors").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=REVIEWS.parent))
        build_tiny_llama(staging / "base")
        with contextlib.suppress(OSError):  # another session got there first: same copy
            os.replace(staging / "base", cached)
        shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(cached, folder)
    return folder
