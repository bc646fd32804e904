"""Import a base encoder as an ``embed`` artifact: ONNX export, graph fusion, int8, parity.

``import_embedder("builtin:minilm", "minilm", settings)`` reads the base (a builtin, an
``hf:`` reference or a folder, through :mod:`fnbundle.loading`), exports the encoder with its
pooling and normalisation to ONNX (fp32), fuses the graph with ONNX Runtime's transformer
optimizer (attention, embedding + layer norm, skip layer norm, bias GELU), quantizes it to
int8 and publishes ``model.onnx``, ``model.int8.onnx`` and ``tokenizer.json`` atomically.

Key rule, the parity gate: on :data:`PARITY_TEXTS`, tokenized and batched exactly as the
server does it, the fp32 export must match the reference (sentence-transformers' ``encode``;
the PyTorch model with the same pooling where that package is missing) to
:data:`FP32_MAX_ABS_DIFF`, or nothing is published. The fused graph replaces the plain one
only if it passes the same check. int8 is the default backend only if every vector keeps a
cosine of at least :data:`INT8_MIN_COSINE` to the reference. All figures go in the manifest.

int8 follows what was measured on this CPU class (AVX2, no VNNI): dynamic, per-channel,
``reduce_range=True``, MatMul only, and the second linear of each feed-forward block kept
in fp32. Default settings moved MiniLM vectors to a cosine of 0.87; this recipe keeps 0.99.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from fnbundle.errors import InvalidRequest
from fnbundle.loading import resolve_model_dir
from fnbundle.runtime.onnx import onnx_runner
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store, validate_name
from fnbundle.tasks.embed import TASK
from fnbundle.tasks.embed.model import TextEmbedder
from fnbundle.tasks.embed.parity import (
    FP32_MAX_ABS_DIFF,
    PARITY_TEXTS,
    fp32_parity,
    int8_parity,
    min_cosine_by_length,
)
from fnbundle.training import fusion

log = logging.getLogger(__name__)

ONNX_OPSET = 17
PARITY_BATCH = 8  # texts per forward pass: mixed lengths, so per-batch padding is exercised
# The feed-forward block's second linear (BERT naming): int8 there cost the most accuracy.
FFN_OUTPUT_MATMUL = re.compile(r"layer\.\d+/output/dense/MatMul$")
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class BaseInfo:
    """What the export needs to know about a base encoder folder."""

    folder: Path
    config: dict[str, Any]
    pooling: str
    normalize: bool
    max_tokens: int

    @property
    def uses_token_types(self) -> bool:
        return int(self.config.get("type_vocab_size", 0) or 0) > 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{path.name} in the base model is unreadable: {exc}") from None


def read_base(folder: Path) -> BaseInfo:
    """Pooling, normalisation and length as sentence-transformers would use them.

    A folder without ``modules.json`` gets what sentence-transformers gives a plain
    encoder: mean pooling, no normalisation. Modules beyond Transformer, Pooling and
    Normalize (a Dense head, say) are refused rather than silently dropped.
    """
    if not (folder / "config.json").is_file():
        raise InvalidRequest(f"Base model {folder.name} has no config.json.", field="ref")
    config = _read_json(folder / "config.json")
    pooling, normalize = "mean", False
    if (folder / "modules.json").is_file():
        for module in _read_json(folder / "modules.json"):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Normalize":
                normalize = True
            elif kind == "Pooling":
                pooling = _pooling_mode(folder / str(module.get("path", "")) / "config.json")
            elif kind != "Transformer":
                raise InvalidRequest(
                    f"Base model {folder.name} has a {kind} module; only Transformer, Pooling "
                    "and Normalize can be exported.",
                    field="ref",
                )
    limit = int(config.get("max_position_embeddings", 512))
    max_tokens = limit
    if (folder / "sentence_bert_config.json").is_file():
        max_tokens = int(_read_json(folder / "sentence_bert_config.json").get("max_seq_length"))
    elif (folder / "tokenizer_config.json").is_file():
        declared = _read_json(folder / "tokenizer_config.json").get("model_max_length")
        if isinstance(declared, int) and declared > 0:
            max_tokens = declared
    return BaseInfo(folder, config, pooling, normalize, min(max_tokens, limit))


def _pooling_mode(path: Path) -> str:
    config = _read_json(path) if path.is_file() else {"pooling_mode_mean_tokens": True}
    modes = [
        m
        for m in POOLINGS
        if config.get(f"pooling_mode_{m}_token") or config.get(f"pooling_mode_{m}_tokens")
    ]
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v]
    if len(modes) != 1 or len(others) != 1:
        raise InvalidRequest(
            f"Pooling {', '.join(others) or 'none'} cannot be exported; supported: "
            f"{', '.join(POOLINGS)}.",
            field="ref",
        )
    return modes[0]


def serving_tokenizer(info: BaseInfo) -> Any:
    """The base's fast tokenizer, truncating at ``max_tokens`` and never padding (the
    embedder pads per batch); a folder without tokenizer.json converts its vocab files."""
    from tokenizers import Tokenizer

    path = info.folder / "tokenizer.json"
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    else:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(info.folder), use_fast=True)
        tokenizer = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=info.max_tokens)
    return tokenizer


def _pooled_encoder(info: BaseInfo, additive_mask: bool) -> Any:
    """The encoder with pooling and normalisation on top, as one torch module."""
    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(
        str(info.folder), use_safetensors=True, attn_implementation="eager"
    )
    pooling, normalize = info.pooling, info.normalize

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, *token_type_ids: Any) -> Any:
            mask = attention_mask
            if additive_mask:  # what ORT's attention fusion recognises
                mask = fusion.additive_mask(attention_mask)
            extra = {"token_type_ids": token_type_ids[0]} if token_type_ids else {}
            hidden = self.encoder(input_ids=input_ids, attention_mask=mask, **extra)
            hidden = hidden.last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:  # as sentence-transformers: padding excluded, count clamped at 1e-9
                weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled

    module = Pooled()
    module.eval()
    return module


def export_onnx(module: Any, info: BaseInfo, path: Path) -> None:
    """Trace ``module`` to ONNX with dynamic batch and sequence axes."""
    import torch

    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if info.uses_token_types else [])
    ids = torch.tensor([[101, 2023, 2003, 102, 0], [101, 2023, 2003, 1037, 102]])
    ids = ids.clamp(max=int(info.config.get("vocab_size", 30522)) - 1)
    sample = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    sample["token_type_ids"] = torch.zeros_like(ids)
    with torch.inference_mode(), warnings.catch_warnings():
        # The tracer warns about Python branches on shapes in transformers' code; for an
        # encoder they are constant, and the parity gate proves the graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes={
                **{n: {0: "batch", 1: "sequence"} for n in names},
                "sentence_embedding": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,  # the TorchScript exporter handles HF encoders without extra deps
        )


def quantize_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Dynamic int8 as measured to keep MiniLM's vectors (see the module docstring)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src)).graph
    kept_fp32 = [
        n.name for n in graph.node if n.op_type == "MatMul" and FFN_OUTPUT_MATMUL.search(n.name)
    ]
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,  # 7-bit weights: no overflow in the int8 kernels without VNNI
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=kept_fp32,
        # Fused contrib ops (Attention, SkipLayerNormalization) defeat shape inference;
        # their outputs are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return {
        "weights": "int8 per channel, reduce_range",
        "op_types": ["MatMul"],
        "matmuls_kept_fp32": len(kept_fp32),
    }


# --- parity -------------------------------------------------------------------------------
def reference_vectors(info: BaseInfo, texts: list[str]) -> tuple[np.ndarray, str]:
    """Vectors from sentence-transformers' ``encode`` (what users compare against), else
    from the PyTorch encoder with the same pooling; and the reference's name."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return _torch_vectors(info, texts), "torch"
    model = SentenceTransformer(str(info.folder), device="cpu", trust_remote_code=False)
    model.max_seq_length = info.max_tokens
    vectors = model.encode(
        texts, batch_size=PARITY_BATCH, normalize_embeddings=info.normalize, convert_to_numpy=True
    )
    return np.asarray(vectors, dtype=np.float32), f"sentence-transformers {_version()}"


def _version() -> str:
    try:
        return version("sentence-transformers")
    except PackageNotFoundError:
        return "unknown"


def _torch_vectors(info: BaseInfo, texts: list[str]) -> np.ndarray:
    import torch

    tokenizer = serving_tokenizer(info)
    module = _pooled_encoder(info, additive_mask=False)
    out = []
    for i in range(0, len(texts), PARITY_BATCH):
        enc = tokenizer.encode_batch(texts[i : i + PARITY_BATCH])
        longest = max(len(e.ids) for e in enc)
        ids = torch.zeros((len(enc), longest), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(enc):
            ids[row, : len(e.ids)] = torch.tensor(e.ids)
            mask[row, : len(e.ids)] = 1
        extra = (torch.zeros_like(ids),) if info.uses_token_types else ()
        with torch.inference_mode():
            out.append(module(ids, mask, *extra).float().numpy())
    return np.concatenate(out)


def served_vectors(
    path: Path, tokenizer: Any, info: BaseInfo, texts: list[str], settings: Settings
) -> np.ndarray:
    """The export's vectors through the serving code path (tokenizer, padding, session)."""
    run, _ = onnx_runner(str(path), settings)
    embedder = TextEmbedder(
        "parity",
        path.name,
        tokenizer,
        run,
        dimensions=0,  # unused: no warm-up, no limits
        max_tokens=info.max_tokens,
        vocab_size=int(info.config.get("vocab_size", 0)),
        pad_token_id=int(info.config.get("pad_token_id") or 0),
        truncatable=False,
    )
    return np.concatenate(
        [embedder.embed(texts[i : i + PARITY_BATCH]) for i in range(0, len(texts), PARITY_BATCH)]
    )


# --- the import -----------------------------------------------------------------------------
def _export_fp32(
    info: BaseInfo,
    tokenizer: Any,
    reference: np.ndarray,
    work: Path,
    settings: Settings,
    fuse: bool,
) -> tuple[Path, dict[str, Any]]:
    """The best fp32 graph that passes parity: fused, else plain; none is an error."""
    texts = list(PARITY_TEXTS)
    plain = work / "plain.onnx"
    # The additive mask lets ORT fuse attention; should a model not take a 4-D mask, the
    # plain 2-D one still exports it (unfused).
    for additive in (True, False):
        export_onnx(_pooled_encoder(info, additive_mask=additive), info, plain)
        record = fp32_parity(reference, served_vectors(plain, tokenizer, info, texts, settings))
        if record["passed"]:
            break
        log.warning("fp32 export (additive mask %s) failed parity: %s", additive, record)
    else:
        raise InvalidRequest(
            f"The ONNX export of {info.folder.name} does not reproduce the reference: max "
            f"abs diff {record.get('max_abs_diff')} > {FP32_MAX_ABS_DIFF}; nothing published.",
            field="ref",
        )
    record["fused"] = False
    if not fuse or not additive:
        return plain, record
    divided, fused = work / "divided.onnx", work / "fused.onnx"
    try:
        rewritten = fusion.scale_as_div(plain, divided)
        ops = fusion.fuse_graph(divided, fused, info.config)
        fused_record = fp32_parity(
            reference, served_vectors(fused, tokenizer, info, texts, settings)
        )
    except Exception as exc:  # fusion is an optimisation: the plain graph still serves
        log.warning("graph fusion failed; keeping the plain graph", exc_info=True)
        return plain, {**record, "fusion": f"failed: {type(exc).__name__}"}
    if not fused_record["passed"] or not ops.get("Attention"):
        why = "parity" if not fused_record["passed"] else "no attention fused"
        log.warning("fused graph not kept (%s): %s", why, fused_record)
        return plain, {**record, "fusion": f"not kept ({why})", "fused_parity": fused_record}
    return fused, {**fused_record, "fused": True, "fused_ops": ops, "scale_divs": rewritten}


def import_embedder(
    ref: str,
    name: str,
    settings: Settings,
    *,
    truncatable: bool = False,
    fuse: bool = True,
) -> Artifact:
    """Build, check and publish an ``embed`` artifact named ``name`` from base ``ref``.

    ``truncatable`` declares the base trained for shortened vectors (Matryoshka), which
    lets requests ask for fewer ``dimensions``; MiniLM is not.
    """
    validate_name(name, field="name")
    info = read_base(resolve_model_dir(ref, settings, field="ref"))
    texts = list(PARITY_TEXTS)
    store = Store(settings.store_root)
    with tempfile.TemporaryDirectory(prefix="fnb-embed-") as tmp, store.staging(name) as staged:
        work = Path(tmp)
        tokenizer = serving_tokenizer(info)
        reference, reference_name = reference_vectors(info, texts)
        fp32_path, fp32_record = _export_fp32(info, tokenizer, reference, work, settings, fuse)
        shutil.copyfile(fp32_path, staged / "model.onnx")
        quantization = quantize_int8(fp32_path, staged / "model.int8.onnx")
        int8_vectors = served_vectors(staged / "model.int8.onnx", tokenizer, info, texts, settings)
        int8_record = int8_parity(reference, int8_vectors)
        int8_record["min_cosine_by_length"] = min_cosine_by_length(
            reference, int8_vectors, [len(e.ids) for e in tokenizer.encode_batch(texts)]
        )
        tokenizer.save(str(staged / "tokenizer.json"))
        exports = {
            "onnx-fp32": {"file": "model.onnx", **fp32_record},
            "onnx-int8": {"file": "model.int8.onnx", **int8_record, "quantization": quantization},
        }
        default = "onnx-int8" if int8_record["passed"] else "onnx-fp32"
        log.info(
            "%s: fp32 max abs diff %.2e (fused %s), int8 min cosine %.4f, default %s",
            name,
            fp32_record["max_abs_diff"],
            fp32_record["fused"],
            int8_record.get("min_cosine", 0.0),
            default,
        )
        manifest: dict[str, Any] = {
            "name": name,
            "task": TASK,
            "base_model": ref,
            "dimensions": int(reference.shape[1]),
            "max_tokens": info.max_tokens,
            "vocab_size": int(info.config.get("vocab_size", tokenizer.get_vocab_size())),
            "pooling": info.pooling,
            "normalize": info.normalize,
            "truncatable": truncatable,
            "tokenizer": {
                "max_length": info.max_tokens,
                "pad_token_id": int(info.config.get("pad_token_id") or 0),
            },
            "parity_reference": reference_name,
            "metrics": {
                "fp32_max_abs_diff": fp32_record["max_abs_diff"],
                "int8_min_cosine": int8_record.get("min_cosine"),
            },
            "export": exports,
            "backends": ["onnx-fp32", "onnx-int8"],
            "default_backend": default,
        }
        return store.publish(staged, manifest)
