"""A tiny ONNX text classifier published into a store, built without torch.

The model averages one learned vector per word: ``logits = mean(embedding[input_ids])``.
Words in ``POSITIVE_WORDS`` push towards the last label, the rest towards the first, so a
test can tell answers apart. ``n_outputs`` (default: one per label) builds a model whose
output width disagrees with its labels; ``onnx_bytes`` replaces the weights file outright
(a corrupt file whose manifest hash still matches, as a bad export would publish it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from fnbundle.store import Artifact, Store

WORDS = ["[PAD]", "[UNK]", "great", "good", "love", "bad", "awful", "hate", "the", "film"]
POSITIVE_WORDS = {"great", "good", "love"}
NEGATIVE_WORDS = {"bad", "awful", "hate"}


def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return str(tok.to_str())


def _onnx_model(n_outputs: int, weight: float = 4.0) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.zeros((len(WORDS), n_outputs), dtype=np.float32)
    for i, word in enumerate(WORDS):
        if word in POSITIVE_WORDS:
            table[i, -1] = weight
        elif word in NEGATIVE_WORDS:
            table[i, 0] = weight
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["vectors"]),
            helper.make_node("ReduceMean", ["vectors"], ["logits"], axes=[1], keepdims=0),
        ],
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_outputs])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def publish_tiny(
    store: Store,
    name: str,
    *,
    labels: Sequence[str] = ("negative", "positive"),
    n_outputs: int | None = None,
    onnx_bytes: bytes | None = None,
) -> Artifact:
    with store.staging(name) as staged:
        (staged / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
        data = _onnx_model(n_outputs or len(labels)) if onnx_bytes is None else onnx_bytes
        (staged / "model.onnx").write_bytes(data)
        return store.publish(
            staged,
            {
                "name": name,
                "task": "classify",
                "labels": list(labels),
                "base_model": "tiny-onnx",
                "tokenizer": {"max_length": 32, "pad_token_id": 0, "pad_token": "[PAD]"},
                "backends": ["onnx-fp32"],
                "default_backend": "onnx-fp32",
            },
        )


EMBED_DIMENSIONS = 4


def _embed_onnx_model(seed: int = 0) -> bytes:
    """Masked sum of one random vector per token, L2-normalised: padding never counts."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(seed).normal(size=(len(WORDS), EMBED_DIMENSIONS))
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["vectors"]),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
            helper.make_node("Mul", ["vectors", "mask3"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "tokens_axis"], ["summed"], keepdims=0),
            helper.make_node("LpNormalization", ["summed"], ["embedding"], axis=-1, p=2),
        ],
        "tiny-embed",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(table.astype(np.float32), "table"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "last"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "tokens_axis"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def publish_tiny_embedder(store: Store, name: str, *, max_tokens: int = 16) -> Artifact:
    """A tiny ``embed`` artifact (4 dimensions, this module's words) served by ONNX Runtime."""
    with store.staging(name) as staged:
        (staged / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
        (staged / "model.onnx").write_bytes(_embed_onnx_model())
        return store.publish(
            staged,
            {
                "name": name,
                "task": "embed",
                "base_model": "tiny-onnx-embed",
                "dimensions": EMBED_DIMENSIONS,
                "max_tokens": max_tokens,
                "vocab_size": len(WORDS),
                "tokenizer": {"pad_token_id": 0},
                "backends": ["onnx-fp32"],
                "default_backend": "onnx-fp32",
            },
        )
