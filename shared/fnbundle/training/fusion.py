"""ONNX Runtime's transformer graph fusion for exported BERT-style encoders.

Every ONNX export of an encoder (the classifier's, the embedder's) goes through the same
three steps to fuse: trace it with the classic additive attention mask
(:func:`additive_mask`), rewrite the attention scale as a division (:func:`scale_as_div`),
then run ORT's transformer optimizer (:func:`fuse_graph`), which replaces each attention
block, embedding + layer norm, skip + layer norm and bias + GELU with one contrib operator.

Key rule: fusion is an optimisation, never a requirement. The caller keeps the fused graph
only when it passes the same parity gate as the plain one and actually fused attention;
otherwise the plain graph serves. Torch and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def additive_mask(attention_mask: Any) -> Any:
    """The classic 4-D additive mask (0 keeps a token, the float minimum drops it) from a
    ``(batch, sequence)`` 0/1 mask: ORT's attention fusion recognises it, transformers 5's
    own mask ops not."""
    import torch

    keep = attention_mask[:, None, None, :].to(torch.float32)
    return (1.0 - keep) * torch.finfo(torch.float32).min


def scale_as_div(src: Path, dst: Path) -> int:
    """Rewrite ``scores * (1/sqrt(d))`` as ``scores / sqrt(d)`` in every attention block.

    transformers 5 scales attention scores with a Mul; ORT's BERT attention fusion then
    takes the scale for the mask's Mul (both feed the same Add) and fuses nothing. A Div
    is what it matches. Returns the number of rewritten nodes.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {init.name: init for init in graph.initializer}

    def scalar(name: str) -> np.ndarray | None:
        node = producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute:
            value = numpy_helper.to_array(node.attribute[0].t)
        elif name in initializers:
            value = numpy_helper.to_array(initializers[name])
        else:
            return None
        return value if value.size == 1 and float(value.reshape(())) != 0 else None

    rewritten = 0
    for node in graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        source = producer.get(node.input[0])
        value = scalar(node.input[1])
        adds = consumers.get(node.output[0], [])
        if (
            source is None
            or source.op_type != "MatMul"
            or value is None
            or len(adds) != 1
            or adds[0].op_type != "Add"
            or not any(c.op_type == "Softmax" for c in consumers.get(adds[0].output[0], []))
        ):
            continue
        name = f"{node.name or node.output[0]}_divisor"
        graph.initializer.append(
            numpy_helper.from_array(np.asarray(1.0 / value, value.dtype), name)
        )
        node.op_type = "Div"
        node.input[1] = name
        rewritten += 1
    onnx.save(model, str(dst))
    return rewritten


def fuse_graph(src: Path, dst: Path, config: Mapping[str, Any]) -> dict[str, int]:
    """ORT's transformer optimizer, offline and hardware-neutral (opt_level 0: the session
    applies its own optimizations at load); ``config`` is the encoder's config.json.
    Returns the fused operator counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(src),
        model_type="bert",
        num_heads=int(config.get("num_attention_heads", 0)),
        hidden_size=int(config.get("hidden_size", 0)),
        opt_level=0,
    )
    optimized.save_model_to_file(str(dst))
    return {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
