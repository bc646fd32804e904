"""Training a model on a table: one of the classic scikit-learn models, or ``compare`` to
train every one that fits the task and rank them; exported to ONNX with its preprocessing
and published to the store after a parity check.

Key rules:

* The schema (:mod:`fnbundle.tabular.schema`) decides the target, the task and the
  features, with the user's overrides; :class:`~fnbundle.tabular.features.FeatureSpec`
  encodes rows the same way here and in serving.
* Preprocessing is part of the model and fitted on the training split only: numbers
  imputed with their median and scaled; categories one-hot encoded, a missing one as its
  own category, one never seen ignored.
* Metrics on a held-out split (stratified for classification): accuracy, macro-F1, ROC-AUC
  and the confusion matrix; R², RMSE and MAE. On small tables (up to
  :data:`CV_MAX_ROWS` training rows) also k-fold cross-validation of the main score.
* The served graph (skl2onnx) must give the trained pipeline's answers on the held-out
  rows (:func:`parity`), else nothing is published. No pickle is written.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fnbundle.errors import FnbError, TrainingFailed
from fnbundle.settings import Settings
from fnbundle.store import NAME_RE, Artifact, Store
from fnbundle.tabular.features import FeatureSpec, read_number
from fnbundle.tabular.schema import Kind, TableSchema, Task, check_trainable, detect, resolve

log = logging.getLogger(__name__)

CV_MAX_ROWS = 5000  # training rows up to which the main score is also cross-validated
ModelName = Literal[
    "linear_regression",
    "ridge",
    "lasso",
    "elastic_net",
    "polynomial_regression",
    "logistic_regression",
    "decision_tree",
    "random_forest",
    "gradient_boosting",
    "svm",
    "naive_bayes",
]
TASKS_OF: dict[str, tuple[Task, ...]] = {
    "linear_regression": ("regression",),
    "ridge": ("regression",),
    "lasso": ("regression",),
    "elastic_net": ("regression",),
    "polynomial_regression": ("regression",),
    "logistic_regression": ("classification",),
    "naive_bayes": ("classification",),
    "decision_tree": ("classification", "regression"),
    "random_forest": ("classification", "regression"),
    "gradient_boosting": ("classification", "regression"),
    "svm": ("classification", "regression"),
}
MAIN_SCORE = {"classification": "accuracy", "regression": "r2"}


class ModelParams(BaseModel):
    """The main hyperparameters; each model reads the ones it has, defaults work."""

    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, gt=0, description="Regularisation of ridge, lasso, elastic net.")
    l1_ratio: float = Field(0.5, ge=0, le=1, description="Elastic net's share of L1.")
    degree: int = Field(2, ge=2, le=4, description="Polynomial regression's degree.")
    c: float = Field(
        1.0, gt=0, description="Inverse regularisation of logistic regression and SVM."
    )
    kernel: Literal["rbf", "linear", "poly"] = Field("rbf", description="The SVM's kernel.")
    max_depth: int | None = Field(
        None, ge=1, le=64, description="Trees' depth (none: grow fully; boosting: 3)."
    )
    n_estimators: int = Field(200, ge=1, le=2000, description="Trees of a forest or boosting.")
    learning_rate: float = Field(0.1, gt=0, le=1, description="Gradient boosting's step.")
    min_samples_leaf: int = Field(1, ge=1, le=1000, description="Trees' smallest leaf.")


class TabularParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = Field(
        min_length=1, max_length=1024, description="A dataset id or a path inside the data roots."
    )
    name: str = Field(
        max_length=80, pattern=NAME_RE.pattern, description="Store name of the trained model."
    )
    target: str | None = Field(
        None, description="The column to predict (default: the proposed one)."
    )
    task: Task | None = Field(
        None, description="classification or regression (default: from the target)."
    )
    columns: dict[str, Kind] = Field(default_factory=dict, description="Column kinds to override.")
    exclude: list[str] = Field(default_factory=list, description="Columns not to use.")
    model: ModelName | Literal["compare"] = Field(
        "compare", description="One model, or compare all that fit."
    )
    models: list[ModelName] | None = Field(None, description="With compare: only these.")
    hyperparams: ModelParams = Field(default_factory=ModelParams)
    test_split: float = Field(0.2, ge=0.05, le=0.5, description="Share of rows held out.")
    cv_folds: int = Field(
        5, ge=2, le=10, description="Folds of the cross-validation on small tables."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)


class Candidate(BaseModel):
    model: str
    metrics: dict[str, Any]
    cv: dict[str, float | int] | None = None
    fit_s: float


class TabularResult(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    artifact: Any
    best: str
    leaderboard: list[Candidate]
    schema_: TableSchema = Field(alias="schema")


# --- the models -----------------------------------------------------------------------------
def estimator(name: str, task: Task, hp: ModelParams, seed: int) -> Any:
    from sklearn import ensemble, linear_model, naive_bayes, svm, tree
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    classify = task == "classification"
    if name == "linear_regression":
        return linear_model.LinearRegression()
    if name == "ridge":
        return linear_model.Ridge(alpha=hp.alpha)
    if name == "lasso":
        return linear_model.Lasso(alpha=hp.alpha, max_iter=20000, random_state=seed)
    if name == "elastic_net":
        return linear_model.ElasticNet(
            alpha=hp.alpha, l1_ratio=hp.l1_ratio, max_iter=20000, random_state=seed
        )
    if name == "polynomial_regression":
        return make_pipeline(
            PolynomialFeatures(hp.degree, include_bias=False), linear_model.Ridge(alpha=hp.alpha)
        )
    if name == "logistic_regression":
        return linear_model.LogisticRegression(C=hp.c, max_iter=5000)
    if name == "naive_bayes":
        return naive_bayes.GaussianNB()
    if name == "decision_tree":
        cls = tree.DecisionTreeClassifier if classify else tree.DecisionTreeRegressor
        return cls(max_depth=hp.max_depth, min_samples_leaf=hp.min_samples_leaf, random_state=seed)
    if name == "random_forest":
        cls = ensemble.RandomForestClassifier if classify else ensemble.RandomForestRegressor
        return cls(
            n_estimators=hp.n_estimators,
            max_depth=hp.max_depth,
            min_samples_leaf=hp.min_samples_leaf,
            n_jobs=-1,
            random_state=seed,
        )
    if name == "gradient_boosting":
        cls = (
            ensemble.GradientBoostingClassifier if classify else ensemble.GradientBoostingRegressor
        )
        return cls(
            n_estimators=hp.n_estimators,
            learning_rate=hp.learning_rate,
            max_depth=hp.max_depth or 3,
            min_samples_leaf=hp.min_samples_leaf,
            random_state=seed,
        )
    if name == "svm":
        if classify:  # probabilities by calibration (SVC's own probability= is deprecated)
            from sklearn.calibration import CalibratedClassifierCV

            return CalibratedClassifierCV(svm.SVC(C=hp.c, kernel=hp.kernel), ensemble=False, cv=3)
        return svm.SVR(C=hp.c, kernel=hp.kernel)
    raise ValueError(name)


def pipeline(spec: FeatureSpec, model: Any) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    parts = []
    if spec.numeric_inputs:
        numbers = Pipeline(
            [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
        )
        parts.append(("numbers", numbers, spec.numeric_inputs))
    if spec.categorical_inputs:
        onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        parts.append(("categories", onehot, spec.categorical_inputs))
    return Pipeline([("pre", ColumnTransformer(parts)), ("model", model)])


def models_for(task: Task, p: TabularParams) -> list[str]:
    if p.model != "compare":
        if task not in TASKS_OF[p.model]:
            raise FnbError(
                f"{p.model} does not do {task}; models that do: "
                f"{', '.join(n for n, t in TASKS_OF.items() if task in t)}.",
                field="params.model",
            )
        return [p.model]
    chosen: list[str] = [*p.models] if p.models else [n for n, ts in TASKS_OF.items() if task in ts]
    fitting = [n for n in chosen if task in TASKS_OF[n]]
    if not fitting:
        raise FnbError(f"None of {chosen} does {task}.", field="params.models")
    return fitting


# --- metrics ----------------------------------------------------------------------------------
def score(
    task: Task, y_true: np.ndarray, pred: np.ndarray, proba: np.ndarray | None, classes: list[str]
) -> dict[str, Any]:
    from sklearn import metrics as m

    if task == "regression":
        return {
            "r2": round(float(m.r2_score(y_true, pred)), 4),
            "rmse": round(float(math.sqrt(m.mean_squared_error(y_true, pred))), 4),
            "mae": round(float(m.mean_absolute_error(y_true, pred)), 4),
            "eval_rows": len(y_true),
        }
    out: dict[str, Any] = {
        "accuracy": round(float(m.accuracy_score(y_true, pred)), 4),
        "macro_f1": round(float(m.f1_score(y_true, pred, average="macro")), 4),
        "confusion_matrix": {
            "labels": classes,
            "matrix": m.confusion_matrix(y_true, pred, labels=list(range(len(classes)))).tolist(),
        },
        "eval_rows": len(y_true),
    }
    if proba is not None and len(set(y_true.tolist())) == len(classes):
        proba = proba / np.clip(proba.sum(axis=1, keepdims=True), 1e-12, None)  # float drift
        if len(classes) == 2:
            out["roc_auc"] = round(float(m.roc_auc_score(y_true, proba[:, 1])), 4)
        else:
            out["roc_auc"] = round(float(m.roc_auc_score(y_true, proba, multi_class="ovr")), 4)
    return out


def importances(
    fitted: Any, spec: FeatureSpec, x: Any, y: np.ndarray, task: Task, seed: int
) -> dict[str, float]:
    """How much the main score drops when a column's values are shuffled (permutation
    importance on the held-out rows, a date's parts shuffled together), per original
    column, largest first; comparable across models, unlike coefficients on one-hot
    inputs."""
    from sklearn.metrics import get_scorer

    drops: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    scorer = get_scorer(MAIN_SCORE[task])
    base = scorer(fitted, x, y)
    for f in spec.features:
        losses = []
        for _ in range(5):
            shuffled = x.copy()
            order = rng.permutation(len(x))
            for name in f.inputs:
                shuffled[name] = x[name].to_numpy()[order]
            losses.append(base - scorer(fitted, shuffled, y))
        drops[f.name] = round(max(float(np.mean(losses)), 0.0), 4)
    return dict(sorted(drops.items(), key=lambda kv: -kv[1]))


# --- training ---------------------------------------------------------------------------------
def prepare(
    p: TabularParams, settings: Settings
) -> tuple[Any, TableSchema, FeatureSpec, Any, np.ndarray, list[str]]:
    """The table, its resolved schema, the feature spec, the inputs, the target and classes."""
    import pandas as pd

    from fnbundle.datasets import resolve_data
    from fnbundle.tabular.read import read_table
    from fnbundle.tabular.schema import present_mask

    frame = read_table(resolve_data(p.data, settings))
    schema = resolve(
        detect(frame),
        target=p.target,
        task=p.task,
        kinds=p.columns or None,
        exclude=p.exclude or None,
    )
    check_trainable(frame, schema)
    assert schema.target is not None
    target = schema.target.column
    frame = frame[present_mask(frame[target])].reset_index(drop=True)
    spec = FeatureSpec.from_schema(schema)
    inputs = spec.encode(frame.to_dict(orient="records"), strict=False)
    x = pd.DataFrame({name: column.ravel() for name, column in inputs.items()})
    if schema.target.task == "classification":
        labels = frame[target].astype(str).str.strip()
        classes = sorted(labels.unique().tolist())
        y = labels.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    else:
        classes = []
        y = np.array([read_number(v) for v in frame[target]], dtype=np.float64)
    return frame, schema, spec, x, y, classes


def train_tabular(
    p: TabularParams,
    settings: Settings,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> TabularResult:
    """Train (or compare), export the best to ONNX with parity, publish; see the module
    docstring."""
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score, train_test_split

    emit = on_event or (lambda kind, data: None)
    _, schema, spec, x, y, classes = prepare(p, settings)
    assert schema.target is not None
    task = schema.target.task
    names = models_for(task, p)
    stratify = y if task == "classification" else None
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=p.test_split, random_state=p.seed, stratify=stratify
    )
    board: list[Candidate] = []
    fitted: dict[str, Any] = {}
    for i, name in enumerate(names):
        emit("model", {"model": name, "index": i + 1, "of": len(names), "state": "training"})
        model = pipeline(spec, estimator(name, task, p.hyperparams, p.seed))
        started = time.perf_counter()
        try:
            model.fit(x_train, y_train)
        except (ValueError, ArithmeticError) as exc:
            log.warning("%s could not be fitted: %s", name, exc)
            emit("model", {"model": name, "state": "failed", "reason": str(exc)[:300]})
            continue
        fit_s = time.perf_counter() - started
        proba = (
            model.predict_proba(x_test)
            if task == "classification" and hasattr(model, "predict_proba")
            else None
        )
        metrics = score(task, y_test, model.predict(x_test), proba, classes)
        cv = None
        if len(x_train) <= CV_MAX_ROWS:
            folds = (StratifiedKFold if task == "classification" else KFold)(
                p.cv_folds, shuffle=True, random_state=p.seed
            )
            scores = cross_val_score(
                pipeline(spec, estimator(name, task, p.hyperparams, p.seed)),
                x_train, y_train, cv=folds, scoring=MAIN_SCORE[task], n_jobs=-1,
            )  # fmt: skip
            cv = {
                "mean": round(float(scores.mean()), 4),
                "std": round(float(scores.std()), 4),
                "folds": p.cv_folds,
            }
        board.append(Candidate(model=name, metrics=metrics, cv=cv, fit_s=round(fit_s, 3)))
        fitted[name] = model
        emit("model", {"model": name, "state": "done", MAIN_SCORE[task]: metrics[MAIN_SCORE[task]]})
    if not board:
        raise TrainingFailed(
            "No model could be fitted on this table (see the log).", field="params.model"
        )
    main = MAIN_SCORE[task]
    board.sort(key=lambda c: c.metrics[main], reverse=True)
    best = board[0].model
    board[0].metrics["feature_importances"] = importances(
        fitted[best], spec, x_test, y_test, task, p.seed
    )
    artifact = publish(p, settings, schema, spec, fitted[best], board, x_test, classes)
    emit("published", {"model_id": artifact.id, "best": best})
    return TabularResult(artifact=artifact, best=best, leaderboard=board, schema=schema)


# --- export -----------------------------------------------------------------------------------
def to_onnx(model: Any, spec: FeatureSpec, task: Task) -> Any:
    from skl2onnx import to_onnx as convert
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    types = [(n, FloatTensorType([None, 1])) for n in spec.numeric_inputs]
    types += [(n, StringTensorType([None, 1])) for n in spec.categorical_inputs]
    options = (
        {id(model.named_steps["model"]): {"zipmap": False}} if task == "classification" else None
    )
    return convert(
        model, initial_types=types, options=options, target_opset={"": 17, "ai.onnx.ml": 3}
    )


def onnx_answers(
    path: Path, inputs: dict[str, np.ndarray], task: Task
) -> tuple[np.ndarray, np.ndarray | None]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    outputs = session.run(None, feed)
    if task == "classification":
        return np.asarray(outputs[0]).ravel(), np.asarray(outputs[1])
    return np.asarray(outputs[0]).ravel(), None


def graph_inputs(x: Any, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """A training frame's columns as the graph's ``[n, 1]`` inputs."""
    inputs = {n: x[n].to_numpy(dtype=np.float32).reshape(-1, 1) for n in spec.numeric_inputs}
    for n in spec.categorical_inputs:
        inputs[n] = x[n].astype(str).to_numpy(dtype=object).reshape(-1, 1)
    return inputs


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


def publish(
    p: TabularParams,
    settings: Settings,
    schema: TableSchema,
    spec: FeatureSpec,
    model: Any,
    board: list[Candidate],
    x_test: Any,
    classes: list[str],
) -> Artifact:
    assert schema.target is not None
    task = schema.target.task
    store = Store(settings.store_root)
    with store.staging(p.name) as staged:
        onnx_model = to_onnx(model, spec, task)
        path = staged / "model.onnx"
        path.write_bytes(onnx_model.SerializeToString())
        check = parity(model, path, x_test, spec, task)
        if not check["passed"]:
            raise TrainingFailed(
                f"The ONNX export of {board[0].model} does not match the trained model: {check}."
            )
        best = board[0]
        manifest = {
            "name": p.name,
            "task": "predict",
            "problem": task,
            "model": best.model,
            "target": schema.target.model_dump(),
            "classes": classes,
            "features": spec.model_dump()["features"],
            "metrics": best.metrics,
            "cv": best.cv,
            "leaderboard": [c.model_dump() for c in board],
            "params": p.model_dump(mode="json"),
            "export": {"onnx": {"file": "model.onnx", **check}},
            "default_backend": "onnx",
            "backends": ["onnx"],
            "rows": schema.rows,
        }
        return store.publish(staged, manifest)
