"""Tiny random-init encoders for fast model tests: a WordPiece tokenizer trained here on
the test reviews, and a 2-layer BERT built from a config. Nothing is downloaded.

The tiny-model tests train on a fixed set, the first ``TEST_ROWS`` rows of the shipped
``data/reviews.csv`` (815 train, 203 held-out). New reviews are appended to that file, so
growing the demo data changes neither these tests' step counts nor their run time.

The tiny base is built once per machine, not once per test session: ``cached_tiny_bert``
keeps it in ``tests/.data/`` under a key of everything it is built from (this file, the
test reviews, the torch / transformers / tokenizers versions) and hands each session a
copy, so a test that alters its base never alters the cache.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import shutil
import tempfile
from collections import Counter
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED_REVIEWS = REPO / "data" / "reviews.csv"
REVIEWS = REPO / "tests" / ".data" / "reviews.csv"
TEST_ROWS = 1018


def write_test_reviews() -> Path:
    """Write ``REVIEWS`` (header plus the first ``TEST_ROWS`` rows) unless it is up to date."""
    with SHIPPED_REVIEWS.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        rows = [row for _, row in zip(range(TEST_ROWS + 1), reader, strict=False)]
    if len(rows) != TEST_ROWS + 1:
        raise RuntimeError(f"{SHIPPED_REVIEWS} has fewer than {TEST_ROWS} rows")
    tmp = REVIEWS.with_name(f".{REVIEWS.name}.{os.getpid()}.tmp")
    REVIEWS.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    if REVIEWS.exists() and REVIEWS.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        os.replace(tmp, REVIEWS)
    return REVIEWS


def cached_tiny_bert(folder: Path) -> Path:
    """A copy in ``folder`` of the tiny BERT, built only when nothing it depends on is cached."""
    key = hashlib.sha256(Path(__file__).read_bytes() + REVIEWS.read_bytes())
    for package in ("torch", "transformers", "tokenizers"):
        key.update(f"{package}=={version(package)}".encode())
    cached = REVIEWS.parent / f"tiny-bert-{key.hexdigest()[:16]}"
    if not (cached / "model.safetensors").is_file():
        # Built beside the cache and renamed into place: a concurrent session or an
        # interrupted build never leaves a half-written base under the cache's name.
        staging = Path(tempfile.mkdtemp(prefix=".tiny-bert-", dir=REVIEWS.parent))
        build_tiny_bert(staging / "base")
        with contextlib.suppress(OSError):  # another session got there first: same copy
            os.replace(staging / "base", cached)
        shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(cached, folder)
    return folder


def corpus() -> list[str]:
    with REVIEWS.open(newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


def wordpiece_vocab(normalizer, pre_tokenizer, size: int) -> dict[str, int]:
    """A WordPiece vocabulary of the test reviews that is the same on every build.

    (The tokenizers library's trainer breaks ties between equally frequent pairs in hash
    order, so two builds of one corpus differ, and so did the accuracy of models trained on
    them.) Every character, alone and as a ``##`` continuation, so no word is unknown, then
    the most frequent words, ties broken alphabetically.
    """
    words: Counter[str] = Counter()
    for text in corpus():
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    known = set(tokens)
    for word, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(tokens) >= size:
            break
        if word not in known:
            tokens.append(word)
    return {t: i for i, t in enumerate(tokens)}


def build_tiny_bert(
    folder: Path, *, vocab_size: int = 1500, hidden: int = 32, seed: int = 0
) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, BertTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok = Tokenizer(
        WordPiece(wordpiece_vocab(normalizer, pre_tokenizer, vocab_size), unk_token="[UNK]")
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder
