"""The classifier's ONNX export with ONNX Runtime's transformer graph fusion.

A tiny random-init BERT classifier is exported fused and plain: the fused files carry the
fused operators (attention, layer norm, GELU), agree with PyTorch under the same parity
rules, and a fused graph that disagrees with the reference is never kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fnbundle.runtime.onnx import onnx_runner, softmax
from fnbundle.runtime.tokenizer import encode, load_tokenizer
from fnbundle.settings import Settings
from fnbundle.training.export import export_with_parity, fused_export

from tests.tiny import corpus, write_test_reviews

pytestmark = pytest.mark.model

MAX_TOKENS = 64  # tokens: enough for the test reviews, small enough to stay fast


@pytest.fixture(scope="module")
def classifier(tiny_base: Path):
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_base), num_labels=3, use_safetensors=True
    )
    model.eval()
    meta = {"max_length": MAX_TOKENS, "pad_token": "[PAD]", "pad_token_id": 0}
    tokenizer = load_tokenizer(tiny_base / "tokenizer.json", meta, MAX_TOKENS)
    write_test_reviews()
    return model, tokenizer, corpus()[:96]


def op_types(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def served_probs(path: Path, tokenizer, texts: list[str]) -> np.ndarray:
    run, _ = onnx_runner(str(path), Settings(threads=1))
    return softmax(run(encode(tokenizer, texts)))


def test_fused_export_serves_fused_graphs_that_pass_parity(classifier, tmp_path: Path) -> None:
    model, tokenizer, texts = classifier
    records = export_with_parity(model, lambda t: encode(tokenizer, t), texts, tmp_path)

    fp32, int8 = records["onnx-fp32"], records["onnx-int8"]
    assert fp32["fused"] and fp32["passed"]
    assert fp32["fused_ops"]["Attention"] == 2  # one per layer
    assert int8["fused"] and int8["passed"]
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= op_types(tmp_path / "model.onnx")
    # The int8 file is the fused graph quantized: its attention runs as int8 QAttention.
    assert "QAttention" in op_types(tmp_path / "model.int8.onnx")
    json.dumps(records)  # goes into the manifest as it is

    # What a server computes from the published files agrees with PyTorch.
    import torch

    batch = encode(tokenizer, texts[:16])
    with torch.inference_mode():
        reference = softmax(
            model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
        )
    assert (
        np.abs(served_probs(tmp_path / "model.onnx", tokenizer, texts[:16]) - reference).max()
        < 1e-3
    )


def test_without_fusion_the_plain_graph_is_published(classifier, tmp_path: Path) -> None:
    model, tokenizer, texts = classifier
    records = export_with_parity(model, lambda t: encode(tokenizer, t), texts, tmp_path, fuse=False)

    assert not records["onnx-fp32"]["fused"] and records["onnx-fp32"]["passed"]
    assert "Attention" not in op_types(tmp_path / "model.onnx")
    assert "fused_ops" not in records["onnx-fp32"]


def test_a_fused_graph_that_disagrees_with_the_reference_is_not_kept(
    classifier, tmp_path: Path
) -> None:
    model, tokenizer, texts = classifier
    batches = [encode(tokenizer, texts[i : i + 32]) for i in range(0, len(texts), 32)]
    sample = encode(tokenizer, ["a short sample", "a somewhat longer sample"])
    # A reference from another model: every probability row reversed.
    import torch

    with torch.inference_mode():
        true = np.concatenate(
            [
                softmax(model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy())
                for b in batches
            ]
        )
    record = fused_export(model, sample, tmp_path / "fused.onnx", batches, true[:, ::-1])

    assert record["fused_ops"]["Attention"] == 2
    assert record["passed"] is False
    assert fused_export(model, sample, tmp_path / "fused.onnx", batches, true)["passed"] is True
