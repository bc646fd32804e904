"""Export a text classifier or an embedder in the folder layout Transformers.js loads.

``fnbundle export <model> --format transformers.js DIR`` and
``GET /v1/models/{model}/export?format=transformers.js`` (the same folder, zipped) write::

    config.json                model_type, architectures, id2label/label2id (classifiers),
                               and ``transformers.js_config.dtype``: the artifact's default
    tokenizer.json             the artifact's serving tokenizer, unchanged
    tokenizer_config.json      tokenizer class, special tokens, model_max_length = the
                               length the gateway truncates at
    onnx/model.onnx            the fp32 graph (``dtype: "fp32"``)
    onnx/model_quantized.onnx  the int8 graph (``dtype: "q8"``), when the artifact has one
    fnbundle_export.json       where it came from: model id, pipeline, pooling, parity

Key rules: the graphs are the artifact's own, parity-checked ones, never a new export, so
the browser scores what the gateway serves. A classifier's graph already takes
``input_ids``/``attention_mask``/``token_type_ids`` and returns ``logits``. An embedder's
graph ends in its pooling, but Transformers.js's feature-extraction pipeline pools
``last_hidden_state`` itself, so the graph is cut where the encoder ends (its last layer
norm), and the cut is kept only if pooling its output as the manifest says gives back the
artifact's own vectors (max abs diff :data:`CUT_MAX_ABS_DIFF`). ``config.json``'s default
dtype is int8 only where the artifact's int8 export passed its parity gate. Nothing is
written over a folder that holds files unless ``force``; the export is built in a
temporary folder first, so a failure leaves the destination as it was.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fnbundle.errors import ArtifactCorrupt, InvalidRequest
from fnbundle.runtime.onnx import corrupt_on_error
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store, sha256_file

FORMAT = "transformers.js"
FORMATS = (FORMAT,)
PIPELINES = {"classify": "text-classification", "embed": "feature-extraction"}
GRAPHS = {"model.onnx": "onnx/model.onnx", "model.int8.onnx": "onnx/model_quantized.onnx"}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what Transformers.js feeds
CUT_MAX_ABS_DIFF = 1e-4  # the embedder's fp32 parity rule, per vector component
HIDDEN = "last_hidden_state"
CHECK_TEXTS = (
    "Hello world!",
    "ok",
    "The service was slow, but the food arrived warm and tasted great.",
    "I would not recommend this laptop: the battery died after two weeks.",
)
MANIFEST_NAME = "fnbundle_export.json"


def check_format(fmt: str) -> str:
    if fmt != FORMAT:
        raise InvalidRequest(
            f"Unknown export format {fmt[:50]!r}; supported: {', '.join(FORMATS)}.",
            field="format",
        )
    return fmt


def pipeline_for(artifact: Artifact) -> str:
    """The Transformers.js pipeline that loads ``artifact``; other tasks are refused."""
    if artifact.task not in PIPELINES:
        raise InvalidRequest(
            f"Model {artifact.id} is a {artifact.task!r} model; the transformers.js export "
            "covers text classifiers (classify) and embedders (embed) only.",
            field="model",
        )
    needed = ["model.onnx", "tokenizer.json"]
    if artifact.task == "classify":
        needed.append("config.json")  # its architecture: Transformers.js picks a class by it
    missing = [f for f in needed if f not in artifact.manifest["files"]]
    if missing:
        raise InvalidRequest(
            f"Model {artifact.id} has no {', '.join(missing)}, which the Transformers.js "
            "layout needs (an ONNX export, its tokenizer and, for a classifier, its config).",
            field="model",
        )
    return PIPELINES[artifact.task]


def graphs(artifact: Artifact) -> dict[str, str]:
    """The artifact's ONNX files and where the export puts them (int8 when it has one)."""
    listed = artifact.manifest["files"]
    return {src: dst for src, dst in GRAPHS.items() if src in listed}


def check_destination(folder: Path, *, force: bool) -> None:
    """A folder that holds anything is refused unless ``force`` (then same-named files are
    replaced, others kept)."""
    if folder.exists() and not folder.is_dir():
        raise InvalidRequest(f"{folder} is a file, not a folder.", field="dir")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise InvalidRequest(
            f"{folder} is not empty; pass --force to write the export into it anyway.",
            field="dir",
        )


# --- the layout ----------------------------------------------------------------------------
def _read_json(artifact: Artifact, rel: str) -> dict[str, Any]:
    with corrupt_on_error(artifact, f"reading {rel}"):
        data = json.loads(artifact.file(rel).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ArtifactCorrupt(f"Model {artifact.id}: {rel} is not a JSON object.")
    return data


def _base_folder(artifact: Artifact, settings: Settings) -> Path | None:
    """The embedder's base model folder when it is on this machine (builtin or a local
    folder), for its config; a Hub base is never downloaded for an export."""
    from fnbundle.errors import FnbError
    from fnbundle.loading import builtin_dir, parse_model_ref, resolve_inside_roots

    try:
        ref = parse_model_ref(str(artifact.manifest.get("base_model", "")), field="base")
        if ref.kind == "builtin":
            return builtin_dir(ref.name)
        if ref.kind == "path":
            return resolve_inside_roots(ref.name, settings.data_roots, field="base")
    except FnbError:
        return None
    return None


def _base_json(base: Path | None, name: str) -> dict[str, Any]:
    try:
        data = json.loads((base / name).read_text(encoding="utf-8")) if base else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_config(artifact: Artifact, base: Path | None) -> dict[str, Any]:
    """config.json: the classifier's own with the manifest's labels (the gateway's names),
    or the embedder's base config; the default dtype follows the artifact's default."""
    int8 = "model.int8.onnx" in artifact.manifest["files"]
    default = artifact.manifest.get("default_backend")
    # Over the device's own default (q8 in browsers): a missing or failed int8 graph is
    # never what a page loads unless it asks for it.
    default_dtype = "q8" if int8 and default == "onnx-int8" else "fp32"
    if artifact.task == "classify":
        config = _read_json(artifact, "config.json")
        labels = artifact.manifest.get("labels")
        if not isinstance(labels, list) or len(labels) < 2:
            raise ArtifactCorrupt(f"Model {artifact.id}: its manifest lists no labels.")
        config["id2label"] = {str(i): str(label) for i, label in enumerate(labels)}
        config["label2id"] = {str(label): i for i, label in enumerate(labels)}
        config["problem_type"] = "single_label_classification"  # softmax, as served
    else:
        # Without the base on this machine Transformers.js builds its generic encoder
        # (it warns "Unknown model class"); the feature-extraction pipeline still runs.
        config = _base_json(base, "config.json") or {
            "model_type": "fnbundle-encoder",
            "architectures": ["FnbundleEncoderModel"],
        }
        config["hidden_size"] = int(artifact.manifest.get("dimensions") or 0) or config.get(
            "hidden_size"
        )
    config["transformers.js_config"] = {"dtype": default_dtype}
    return config


def tokenizer_config(artifact: Artifact, base: Path | None) -> dict[str, Any]:
    """tokenizer_config.json, truncating where the gateway does (Transformers.js ignores
    the truncation inside tokenizer.json and uses ``model_max_length``)."""
    meta = artifact.manifest.get("tokenizer") or {}
    if "tokenizer_config.json" in artifact.manifest["files"]:
        config = _read_json(artifact, "tokenizer_config.json")
    else:
        config = _base_json(base, "tokenizer_config.json")
    if artifact.task == "embed":
        limit = artifact.manifest.get("max_tokens")
    else:
        limit = meta.get("max_length")
    if not isinstance(limit, int) or limit < 1:
        raise ArtifactCorrupt(f"Model {artifact.id}: its manifest gives no token limit.")
    config["model_max_length"] = limit
    if not config.get("tokenizer_class"):
        with corrupt_on_error(artifact, "reading tokenizer.json"):
            tok = json.loads(artifact.file("tokenizer.json").read_text(encoding="utf-8"))
        wordpiece = (tok.get("model") or {}).get("type") == "WordPiece"
        config["tokenizer_class"] = "BertTokenizer" if wordpiece else "PreTrainedTokenizer"
    if not config.get("pad_token") and "pad_token_id" in meta:
        config["pad_token"] = _token(artifact, int(meta["pad_token_id"]))
    for key in ("added_tokens_decoder", "auto_map", "backend", "is_local", "local_files_only"):
        config.pop(key, None)  # Python-side or machine-local fields, never read by the browser
    return config


def _token(artifact: Artifact, token_id: int) -> str | None:
    from tokenizers import Tokenizer

    with corrupt_on_error(artifact, "reading tokenizer.json"):
        tokenizer = Tokenizer.from_file(str(artifact.file("tokenizer.json")))
    token: str | None = tokenizer.id_to_token(token_id)
    return token


# --- the graphs ----------------------------------------------------------------------------
def _check_classifier_graph(artifact: Artifact, path: Path) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    outputs = [o.name for o in graph.output]
    if not set(inputs) <= set(INPUTS) or "input_ids" not in inputs or outputs[:1] != ["logits"]:
        raise InvalidRequest(
            f"Model {artifact.id}: {path.name} takes {inputs} and returns {outputs}; "
            f"Transformers.js feeds {', '.join(INPUTS)} and reads logits.",
            field="model",
        )


def cut_at_hidden_state(src: Path, dst: Path) -> None:
    """Write ``src`` without its pooling: the output of the last layer norm (where a
    BERT-style encoder ends) becomes the graph's only output, ``last_hidden_state``."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    norms = [n for n in graph.node if n.op_type.endswith("LayerNormalization")]
    if not norms:
        raise InvalidRequest(f"{src.name} has no layer norm to cut its pooling at.")
    hidden = norms[-1].output[0]
    graph.node.append(helper.make_node("Identity", [hidden], [HIDDEN], name="fnb_hidden"))
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(HIDDEN, onnx.TensorProto.FLOAT, ["batch", "sequence", None])
    )
    needed = {HIDDEN}
    kept = []
    for node in reversed(graph.node):  # nodes are stored in topological order
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    value_info = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    onnx.save(model, str(dst))


def _pool(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """What the JavaScript caller does: ``{pooling: "mean"|"cls", normalize}``."""
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask[..., None].astype(hidden.dtype)
        pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return np.asarray(pooled)


def check_cut(artifact: Artifact, original: Path, cut: Path) -> float:
    """The largest difference between the artifact's vectors and the cut graph's pooled
    hidden states on :data:`CHECK_TEXTS`; refused over :data:`CUT_MAX_ABS_DIFF`."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(artifact.file("tokenizer.json")))
    tokenizer.enable_truncation(max_length=int(artifact.manifest.get("max_tokens") or 512))
    pad_id = int((artifact.manifest.get("tokenizer") or {}).get("pad_token_id", 0))
    tokenizer.enable_padding(pad_id=pad_id)
    enc = tokenizer.encode_batch(list(CHECK_TEXTS))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        return np.asarray(session.run(None, {k: v for k, v in feed.items() if k in names})[0])

    pooling = str(artifact.manifest.get("pooling", "mean"))
    normalize = bool(artifact.manifest.get("normalize", False))
    with corrupt_on_error(artifact, f"running {original.name}"):
        expected = run(original)
        pooled = _pool(run(cut), mask, pooling, normalize)
    diff = float(np.abs(expected - pooled).max()) if expected.shape == pooled.shape else np.inf
    if not diff <= CUT_MAX_ABS_DIFF:
        raise InvalidRequest(
            f"Model {artifact.id}: its encoder's hidden states could not be separated from "
            f"its pooling (pooled difference {diff:.2e} > {CUT_MAX_ABS_DIFF}); it cannot be "
            "exported for the feature-extraction pipeline.",
            field="model",
        )
    return diff


# --- the export ----------------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _build(artifact: Artifact, folder: Path, settings: Settings) -> dict[str, Any]:
    """Write the layout into the empty ``folder``; return what fnbundle_export.json says."""
    pipeline = pipeline_for(artifact)
    base = _base_folder(artifact, settings) if artifact.task == "embed" else None
    (folder / "onnx").mkdir(parents=True)
    record: dict[str, Any] = {"model": artifact.id, "task": artifact.task, "pipeline": pipeline}
    for src_name, dst_name in graphs(artifact).items():
        src, dst = artifact.file(src_name), folder / dst_name
        if artifact.task == "classify":
            _check_classifier_graph(artifact, src)
            shutil.copyfile(src, dst)
        else:
            with corrupt_on_error(artifact, f"cutting {src_name} at its hidden states"):
                cut_at_hidden_state(src, dst)
            record.setdefault("cut_max_abs_diff", {})[dst_name] = check_cut(artifact, src, dst)
    if artifact.task == "embed":
        record["call_with"] = {
            "pooling": str(artifact.manifest.get("pooling", "mean")),
            "normalize": bool(artifact.manifest.get("normalize", False)),
        }
    config = model_config(artifact, base)
    _write_json(folder / "config.json", config)
    shutil.copyfile(artifact.file("tokenizer.json"), folder / "tokenizer.json")
    _write_json(folder / "tokenizer_config.json", tokenizer_config(artifact, base))
    record["default_dtype"] = config["transformers.js_config"]["dtype"]
    record["parity"] = {
        k: {m: v.get(m) for m in ("agreement", "mean_prob_diff", "min_cosine", "passed")}
        for k, v in (artifact.manifest.get("export") or {}).items()
        if isinstance(v, dict)
    }
    record["files"] = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    _write_json(folder / MANIFEST_NAME, record)
    return record


def export_transformers_js(
    artifact: Artifact, dest: Path, settings: Settings, *, force: bool = False
) -> dict[str, Any]:
    """Write ``artifact`` into ``dest`` in the Transformers.js layout; return the record."""
    pipeline_for(artifact)
    dest = Path(dest)
    check_destination(dest, force=force)
    Store(settings.store_root).verify(artifact, hash_files=[*graphs(artifact), "tokenizer.json"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        built = Path(tmp) / "export"
        record = _build(artifact, built, settings)
        dest.mkdir(exist_ok=True)
        for path in sorted(built.rglob("*")):
            target = dest / path.relative_to(built)
            if path.is_dir():
                target.mkdir(exist_ok=True)
            else:
                path.replace(target)
    return record


def export_zip(artifact: Artifact, zip_path: Path, settings: Settings) -> None:
    """The export as one zip, its files under a folder named after the model id."""
    with tempfile.TemporaryDirectory(prefix="fnb-web-") as tmp:
        folder = Path(tmp) / artifact.id
        export_transformers_js(artifact, folder, settings)
        with zipfile.ZipFile(zip_path, "w") as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    # Weights barely compress; the JSON files do.
                    method = zipfile.ZIP_STORED if path.suffix == ".onnx" else zipfile.ZIP_DEFLATED
                    arcname = f"{artifact.id}/{path.relative_to(folder).as_posix()}"
                    archive.write(path, arcname, compress_type=method)
