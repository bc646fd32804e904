"""``fnbundle export --format transformers.js`` and its gateway route, on tiny ONNX models
built without torch: the folder layout Transformers.js loads, the embedder's cut at its
hidden states, and every refusal (task, format, unknown model, a folder holding files).
Loading the folder in Transformers.js itself is tests/e2e/test_transformers_js.py."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from fnbundle.api import create_app
from fnbundle.errors import InvalidRequest
from fnbundle.export_web import export_transformers_js
from fnbundle.settings import Settings, get_settings
from fnbundle.store import Artifact, Store, sha256_file
from typer.testing import CliRunner

from tests.unit.tiny_onnx import (
    WORDS,
    _onnx_model,
    _tokenizer_json,
    publish_tiny,
    publish_tiny_embedder,
)

pytestmark = pytest.mark.unit

KEY = "s3cret-key-0123456789"
LAYOUT = {
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "onnx/model.onnx",
    "onnx/model_quantized.onnx",
    "fnbundle_export.json",
}


def publish_classifier(store: Store, name: str = "clf", *, int8: bool = True) -> Artifact:
    """A classify artifact as training publishes one: config, tokenizer files, both graphs."""
    graph = _onnx_model(2)
    with store.staging(name) as staged:
        (staged / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
        (staged / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "BertTokenizer", "model_max_length": 10**30})
        )
        # As saved by transformers before the labels were named: the manifest's win.
        config = {"model_type": "bert", "architectures": ["BertForSequenceClassification"]}
        config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
        (staged / "config.json").write_text(json.dumps(config))
        (staged / "model.onnx").write_bytes(graph)
        if int8:
            (staged / "model.int8.onnx").write_bytes(graph)
        return store.publish(
            staged,
            {
                "name": name,
                "task": "classify",
                "labels": ["negative", "positive"],
                "tokenizer": {"max_length": 32, "pad_token_id": 0, "pad_token": "[PAD]"},
                "backends": ["onnx-fp32", "onnx-int8"] if int8 else ["onnx-fp32"],
                "default_backend": "onnx-int8" if int8 else "onnx-fp32",
            },
        )


HIDDEN = 4


def _encoder_with_pooling() -> bytes:
    """Embedding, layer norm (where the encoder ends), then masked mean pooling and L2
    normalisation: the shape of an exported sentence-transformers graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(size=(len(WORDS), HIDDEN)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.normal(size=HIDDEN).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=HIDDEN).astype(np.float32), "beta"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "tokens_axis"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["vectors"]),
        helper.make_node("LayerNormalization", ["vectors", "gamma", "beta"], ["hidden"], axis=-1),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
        helper.make_node("Mul", ["hidden", "mask3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "tokens_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "tokens_axis"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["mean"]),
        helper.make_node("LpNormalization", ["mean"], ["sentence_embedding"], axis=-1, p=2),
    ]
    ids = ["batch", "tokens"]
    graph = helper.make_graph(
        nodes,
        "pooled-encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ids),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ids),
        ],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def publish_encoder(store: Store, name: str = "enc") -> Artifact:
    with store.staging(name) as staged:
        (staged / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
        (staged / "model.onnx").write_bytes(_encoder_with_pooling())
        (staged / "model.int8.onnx").write_bytes(_encoder_with_pooling())
        return store.publish(
            staged,
            {
                "name": name,
                "task": "embed",
                "base_model": "hf:nobody/never-downloaded",
                "dimensions": HIDDEN,
                "max_tokens": 16,
                "vocab_size": len(WORDS),
                "pooling": "mean",
                "normalize": True,
                "tokenizer": {"pad_token_id": 0},
                "backends": ["onnx-fp32", "onnx-int8"],
                "default_backend": "onnx-int8",
            },
        )


def publish_other(store: Store, name: str, task: str) -> Artifact:
    with store.staging(name) as staged:
        (staged / "model.onnx").write_bytes(b"not read")
        return store.publish(staged, {"name": name, "task": task})


@pytest.fixture
def store(tmp_path) -> tuple[Settings, Store]:
    settings = Settings(store=tmp_path / "store")
    return settings, Store(settings.store_root)


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def run_onnx(path: Path, **feed: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feed)[0])


# --- the layout ----------------------------------------------------------------------------
def test_classifier_layout_carries_the_served_labels_graphs_and_length(store, tmp_path):
    settings, st = store
    artifact = publish_classifier(st)
    out = tmp_path / "web" / "clf"
    record = export_transformers_js(artifact, out, settings)

    assert files_in(out) == LAYOUT
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert config["model_type"] == "bert"
    assert config["transformers.js_config"] == {"dtype": "q8"}  # int8 is the served default
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["model_max_length"] == 32  # where the gateway truncates
    assert tok_config["tokenizer_class"] == "BertTokenizer"
    assert (out / "tokenizer.json").read_bytes() == artifact.file("tokenizer.json").read_bytes()
    assert (out / "onnx/model.onnx").read_bytes() == artifact.file("model.onnx").read_bytes()
    described = json.loads((out / "fnbundle_export.json").read_text())
    assert described["model"] == artifact.id and described["pipeline"] == "text-classification"
    assert described == json.loads(json.dumps(record))
    for rel, digest in described["files"].items():
        assert sha256_file(out / rel) == digest


def test_without_an_int8_graph_the_default_dtype_is_fp32(store, tmp_path):
    settings, st = store
    export_transformers_js(publish_classifier(st, int8=False), tmp_path / "out", settings)
    assert files_in(tmp_path / "out") == LAYOUT - {"onnx/model_quantized.onnx"}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["transformers.js_config"] == {"dtype": "fp32"}


def test_embedder_graph_is_cut_at_its_hidden_states_and_pools_back_to_its_vectors(store, tmp_path):
    settings, st = store
    artifact = publish_encoder(st)
    out = tmp_path / "enc"
    record = export_transformers_js(artifact, out, settings)

    assert files_in(out) == LAYOUT
    assert record["pipeline"] == "feature-extraction"
    assert record["call_with"] == {"pooling": "mean", "normalize": True}
    ids = np.array([[2, 3, 8, 9], [5, 6, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    vectors = run_onnx(artifact.file("model.onnx"), input_ids=ids, attention_mask=mask)
    for graph in ("onnx/model.onnx", "onnx/model_quantized.onnx"):
        hidden = run_onnx(out / graph, input_ids=ids, attention_mask=mask)
        assert hidden.shape == (2, 4, HIDDEN)  # one vector per token: last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
        np.testing.assert_allclose(pooled, vectors, atol=1e-5)
    import onnx

    cut = onnx.load(str(out / "onnx/model.onnx")).graph
    assert [o.name for o in cut.output] == ["last_hidden_state"]
    assert not {n.op_type for n in cut.node} & {"LpNormalization", "ReduceSum", "Div"}
    # No base config on this machine (a Hub base is never downloaded): the generic encoder.
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == HIDDEN and config["transformers.js_config"]["dtype"] == "q8"
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["model_max_length"] == 16 and tok_config["pad_token"] == "[PAD]"


# --- refusals ------------------------------------------------------------------------------
def test_an_embedder_without_a_layer_norm_to_cut_at_is_refused_and_nothing_written(store, tmp_path):
    settings, st = store
    artifact = publish_tiny_embedder(st, "plain-embed")
    with pytest.raises(InvalidRequest, match="layer norm"):
        export_transformers_js(artifact, tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no temporary left


@pytest.mark.parametrize("task", ["predict", "generate", "train_tabular"])
def test_tasks_a_browser_pipeline_cannot_load_are_refused(store, tmp_path, task):
    settings, st = store
    with pytest.raises(InvalidRequest, match=f"'{task}' model.*classifiers.*embedders"):
        export_transformers_js(publish_other(st, "other", task), tmp_path / "out", settings)


def test_a_classifier_without_its_config_is_refused(store, tmp_path):
    settings, st = store
    with pytest.raises(InvalidRequest, match="no config.json"):
        export_transformers_js(publish_tiny(st, "bare"), tmp_path / "out", settings)


def test_a_folder_holding_files_is_refused_unless_forced(store, tmp_path):
    settings, st = store
    artifact = publish_classifier(st)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InvalidRequest, match="not empty; pass --force"):
        export_transformers_js(artifact, out, settings)
    assert files_in(out) == {"notes.txt"}
    export_transformers_js(artifact, out, settings, force=True)
    assert files_in(out) == LAYOUT | {"notes.txt"}
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(InvalidRequest, match="is a file"):
        export_transformers_js(artifact, tmp_path / "a-file", settings, force=True)


# --- the command line ----------------------------------------------------------------------
@pytest.fixture
def cli_store(store, monkeypatch):
    settings, st = store
    monkeypatch.setenv("FNB_STORE", str(settings.store_root))
    get_settings.cache_clear()
    yield st
    get_settings.cache_clear()


def cli(*args: str):
    from fnbundle.cli import app

    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    return runner.invoke(app, ["export", *args])


def test_cli_exports_and_prints_how_to_load(cli_store, tmp_path):
    artifact = publish_classifier(cli_store)
    result = cli("clf", str(tmp_path / "web" / "clf"), "--format", "transformers.js")
    assert result.exit_code == 0, result.output
    assert f"exported {artifact.id}" in result.output
    assert 'pipeline("text-classification", "clf")' in result.output
    assert files_in(tmp_path / "web" / "clf") == LAYOUT


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing", "OUT"], "Model 'missing' not found in the store."),
        (["clf", "OUT", "--format", "tflite"], "Unknown export format 'tflite'"),
        (["tab", "OUT"], "'predict' model"),
        (["clf", "FULL"], "is not empty; pass --force"),
        (["../etc", "OUT"], "Invalid model name"),
    ],
)
def test_cli_failures_are_one_line(cli_store, tmp_path, args, message):
    publish_classifier(cli_store)
    publish_other(cli_store, "tab", "predict")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    paths = {"OUT": str(tmp_path / "out"), "FULL": str(tmp_path / "full")}
    result = cli(*[paths.get(a, a) for a in args])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


# --- the gateway ---------------------------------------------------------------------------
@pytest.fixture
def gateway(store):
    settings, st = store
    keyed = settings.model_copy(update={"api_keys": [KEY]})
    with TestClient(create_app(keyed, jobs=False)) as client:
        yield client, st


def test_gateway_answers_a_zip_of_the_layout_behind_the_key(gateway):
    client, st = gateway
    artifact = publish_classifier(st)
    url = "/v1/models/clf/export?format=transformers.js"
    assert client.get(url).status_code == 401
    response = client.get(url, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert f"{artifact.id}-transformers.js.zip" in response.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert {n.removeprefix(f"{artifact.id}/") for n in archive.namelist()} == LAYOUT
    config = json.loads(archive.read(f"{artifact.id}/config.json"))
    assert config["id2label"] == {"0": "negative", "1": "positive"}


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/v1/models/clf/export?format=coreml", 400, "Unknown export format 'coreml'"),
        ("/v1/models/tab/export", 400, "'predict' model"),
        ("/v1/models/nope/export", 404, "not found"),
        ("/v1/models/bare/export", 400, "no config.json"),
    ],
)
def test_gateway_refusals(gateway, url, status, message):
    client, st = gateway
    publish_classifier(st)
    publish_other(st, "tab", "predict")
    publish_tiny(st, "bare")
    response = client.get(url, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
