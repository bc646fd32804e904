"""A trained tabular pipeline as one ONNX graph, preprocessing included, checked against
the pipeline before anything is published.

Key rules:

* The graph takes one ``[n, 1]`` input per encoded column (float32 numbers, strings for
  categories) and answers ``label`` and ``probabilities`` (a classifier) or ``variable``
  (a regressor), whichever model it holds.
* scikit-learn pipelines go through skl2onnx whole. A PyTorch MLP's graph is the
  preprocessing's skl2onnx graph merged with the network's ``torch.onnx.export`` graph
  (:func:`merge`), so it is still one file that reads raw columns.
* :func:`parity`: the graph must give the trained pipeline's answers on the held-out rows
  (labels agreeing on 99%, probabilities within 1e-3; values within 1e-3 of the spread),
  else nothing is published. No pickle is ever written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fnbundle.tabular.features import FeatureSpec
from fnbundle.tabular.schema import Task

OPSET = 18  # the default domain's opset of both halves of a merged graph
ML_OPSET = 3


def input_types(spec: FeatureSpec) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    types: list[tuple[str, Any]] = [(n, FloatTensorType([None, 1])) for n in spec.numeric_inputs]
    types += [(n, StringTensorType([None, 1])) for n in spec.categorical_inputs]
    return types


def to_onnx(model: Any, spec: FeatureSpec, task: Task) -> Any:
    """The fitted pipeline (``pre`` then ``model``) as an ONNX ModelProto."""
    from skl2onnx import to_onnx as convert

    from fnbundle.training.tabular_mlp import MLPEstimator

    final = model.named_steps["model"]
    opsets = {"": OPSET, "ai.onnx.ml": ML_OPSET}
    if isinstance(final, MLPEstimator):
        pre = convert(model.named_steps["pre"], initial_types=input_types(spec),
                      target_opset=opsets)  # fmt: skip
        return merge(pre, network_onnx(final), task)
    if isinstance(final, ScaledTarget):  # the inner model's graph, then back to the scale
        from sklearn.pipeline import Pipeline

        inner = Pipeline([("pre", model.named_steps["pre"]), ("model", final.model_)])
        graph = convert(inner, initial_types=input_types(spec), target_opset=opsets)
        return unscale(graph, final.mean_, final.scale_)
    options = {id(final): {"zipmap": False}} if task == "classification" else None
    return convert(model, initial_types=input_types(spec), options=options, target_opset=opsets)


class ScaledTarget:
    """A regressor fitted on the standardised target, answering on the target's scale
    (scikit-learn's TransformedTargetRegressor, which skl2onnx cannot convert): a kernel
    SVR's epsilon and C assume a target of about unit scale."""

    def __init__(self, model: Any = None):
        self.model = model

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"model": self.model}

    def set_params(self, **params: Any) -> ScaledTarget:
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import RegressorTags, Tags, TargetTags

        return Tags(estimator_type="regressor", target_tags=TargetTags(required=True),
                    regressor_tags=RegressorTags())  # fmt: skip

    def fit(self, x: Any, y: Any) -> ScaledTarget:
        from sklearn.base import clone

        y = np.asarray(y, dtype=np.float64)
        self.mean_, self.scale_ = float(y.mean()), float(y.std()) or 1.0
        self.model_ = clone(self.model).fit(x, (y - self.mean_) / self.scale_)
        return self

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(self.model_.predict(x)) * self.scale_ + self.mean_


def unscale(graph: Any, mean: float, scale: float) -> Any:
    """``graph``'s one output times ``scale`` plus ``mean``, under the same output name."""
    import onnx
    from onnx import helper, numpy_helper

    out = graph.graph.output[0]
    name = out.name
    inner = f"{name}_standardised"
    for node in graph.graph.node:
        node.output[:] = [inner if o == name else o for o in node.output]
    graph.graph.initializer.extend([
        numpy_helper.from_array(np.array([scale], dtype=np.float32), f"{name}_scale"),
        numpy_helper.from_array(np.array([mean], dtype=np.float32), f"{name}_mean"),
    ])  # fmt: skip
    graph.graph.node.extend([
        helper.make_node("Mul", [inner, f"{name}_scale"], [f"{name}_scaled"]),
        helper.make_node("Add", [f"{name}_scaled", f"{name}_mean"], [name]),
    ])  # fmt: skip
    onnx.checker.check_model(graph)
    return graph


def network_onnx(estimator: Any) -> Any:
    """The MLP with its output head, exported by torch (TorchScript exporter, dynamic rows)."""
    import onnx
    import torch

    from fnbundle.training.tabular_mlp import export_module

    head = export_module(estimator)
    outputs = ["label", "probabilities"] if estimator.classify else ["variable"]
    example = torch.zeros(2, estimator.n_features_in_)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "network.onnx"
        torch.onnx.export(
            head,
            (example,),
            str(path),
            input_names=["features"],
            output_names=outputs,
            dynamic_axes={name: {0: "rows"} for name in ["features", *outputs]},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: a plain MLP needs nothing more
        )
        return onnx.load(str(path))


def merge(pre: Any, network: Any, task: Task) -> Any:
    """One graph: the preprocessing's output feeds the network's ``features``."""
    import onnx
    from onnx import compose, helper

    # Both exporters name edges freely ("variable"): the preprocessing's get a prefix,
    # its inputs (the raw columns) keep their names.
    pre = compose.add_prefix(pre, "pre/", rename_inputs=False)
    pre_out = pre.graph.output[0].name
    # The preprocessing may answer float64 (a scaler on float inputs answers float32, but
    # one-hot columns concatenated with them can widen): cast to the network's float32.
    cast = helper.make_node("Cast", [pre_out], ["pre_features"], to=onnx.TensorProto.FLOAT)
    pre.graph.node.append(cast)
    del pre.graph.output[:]
    pre.graph.output.append(
        helper.make_tensor_value_info("pre_features", onnx.TensorProto.FLOAT, [None, None])
    )
    ir = min(pre.ir_version, network.ir_version)
    pre.ir_version = network.ir_version = ir
    merged = compose.merge_models(pre, network, io_map=[("pre_features", "features")])
    onnx.checker.check_model(merged)
    return merged


def graph_inputs(x: Any, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """A training frame's columns as the graph's ``[n, 1]`` inputs."""
    inputs = {n: x[n].to_numpy(dtype=np.float32).reshape(-1, 1) for n in spec.numeric_inputs}
    for n in spec.categorical_inputs:
        inputs[n] = x[n].astype(str).to_numpy(dtype=object).reshape(-1, 1)
    return inputs


def onnx_answers(
    path: Path, inputs: dict[str, np.ndarray], task: Task
) -> tuple[np.ndarray, np.ndarray | None]:
    """The graph's predictions (class indices or values) and a classifier's probabilities."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    outputs = session.run(None, feed)
    if task == "classification":
        return np.asarray(outputs[0]).ravel(), np.asarray(outputs[1])
    return np.asarray(outputs[0]).ravel(), None


def parity(model: Any, path: Path, x_test: Any, spec: FeatureSpec, task: Task) -> dict[str, Any]:
    """The ONNX graph against the trained pipeline on the held-out rows."""
    inputs = graph_inputs(x_test, spec)
    pred, proba = onnx_answers(path, inputs, task)
    if task == "classification":
        agree = float((pred == model.predict(x_test)).mean())
        diff = (
            float(np.abs(proba - model.predict_proba(x_test)).max()) if proba is not None else 0.0
        )
        return {
            "label_agreement": round(agree, 5),
            "max_prob_diff": round(diff, 6),
            "passed": agree >= 0.99 and diff <= 1e-3,
        }
    expected = model.predict(x_test)
    scale = float(np.std(expected)) or 1.0
    diff = float(np.abs(pred - expected).max()) / scale
    return {"max_rel_diff": round(diff, 7), "passed": diff <= 1e-3}
