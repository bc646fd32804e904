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
* The served graph must give the trained pipeline's answers on the held-out rows
  (:mod:`fnbundle.training.tabular_export`), else nothing is published. No pickle is
  written.
* A job steers the run through ``control``: a stop request is honoured between models
  (a scikit-learn fit runs to its end, seconds on the tables this takes) and within one
  step of an MLP, which checkpoints every epoch and resumes from there on a retry.
  Events are the typed vocabulary of :mod:`fnbundle.training.events`: a ``start`` with
  the models to train as its steps, ``model`` when each starts and ends, an MLP's
  ``eval`` / ``epoch`` / ``checkpoint`` per epoch, ``published`` at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fnbundle.errors import TrainingFailed, TrainingStopped
from fnbundle.settings import Settings
from fnbundle.store import Artifact, Store
from fnbundle.tabular.features import FeatureSpec, read_number
from fnbundle.tabular.schema import TableSchema, Task, check_trainable, detect, resolve
from fnbundle.tasks.train_tabular.params import NEURAL, TrainTabularParams
from fnbundle.training.control import TrainControl
from fnbundle.training.events import parse_event
from fnbundle.training.tabular_export import parity, to_onnx
from fnbundle.training.tabular_models import estimator, models_for, pipeline

log = logging.getLogger(__name__)

CV_MAX_ROWS = 5000  # training rows up to which the main score is also cross-validated
MAIN_SCORE = {"classification": "accuracy", "regression": "r2"}
# Held-out rows up to which permutation importances use them all; above, a sample.
IMPORTANCE_ROWS = 5000
# Kernel SVMs cost the square of their rows: above this many training rows one is fitted
# on a stratified sample of them (said in its leaderboard entry).
SVM_MAX_ROWS = 20_000
MLP_EVENTS = frozenset({"eval", "epoch", "checkpoint", "log"})  # forwarded from an MLP
OnEvent = Callable[[dict[str, Any]], None]


class Candidate(BaseModel):
    model: str
    metrics: dict[str, Any]
    cv: dict[str, float | int] | None = None
    fit_s: float
    training: dict[str, Any] | None = None  # an MLP's epochs and steps


class TabularResult(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    artifact: Any
    best: str
    leaderboard: list[Candidate]
    schema_: TableSchema = Field(alias="schema")

    @property
    def model_id(self) -> str:
        return str(self.artifact.id)

    @property
    def metrics(self) -> dict[str, Any]:
        """What the job reports: the best model's held-out figures and the leaderboard."""
        best = self.leaderboard[0]
        main = {k: v for k, v in best.metrics.items() if isinstance(v, int | float)}
        board = [
            {"model": c.model, **{k: c.metrics[k] for k in main if k in c.metrics},
             "fit_s": c.fit_s}
            for c in self.leaderboard
        ]  # fmt: skip
        return {"best": self.best, **main, "leaderboard": board}


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
    if len(x) > IMPORTANCE_ROWS:
        keep = rng.choice(len(x), IMPORTANCE_ROWS, replace=False)
        x, y = x.iloc[keep].reset_index(drop=True), y[keep]
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
    p: TrainTabularParams, settings: Settings
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


class _Run:
    """One training run: the split, the models in turn, the stop checks, the events."""

    def __init__(self, p: TrainTabularParams, settings: Settings, emit: OnEvent,
                 control: TrainControl):  # fmt: skip
        self.p, self.settings, self.control = p, settings, control
        self.emit = emit
        self.threads = settings.thread_count  # n_jobs, OpenMP and torch threads

    def event(self, event: dict[str, Any]) -> None:
        parse_event(event)  # the typed vocabulary: a misfit is a bug here
        self.emit(event)

    def check_stop(self, done: int, board: list[Candidate]) -> None:
        reason = self.control.should_stop()
        if reason:
            best = max(board, key=lambda c: c.metrics[self.main]) if board else None
            raise TrainingStopped(
                f"Training stopped ({reason}) after {done} of {len(self.names)} models; "
                "nothing was published.",
                reason=reason,
                step=done,
                metrics={"best_so_far": best.model, **best.metrics} if best else None,
            )

    def mlp_events(self, event: dict[str, Any]) -> None:
        if event["type"] in MLP_EVENTS:
            self.event(event)

    def fit(self, name: str, x_train: Any, y_train: Any) -> tuple[Any, dict[str, Any] | None]:
        """The fitted pipeline, and how it was trained when that is worth saying."""
        from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

        model = pipeline(
            self.spec, estimator(name, self.task, self.p, len(x_train), n_jobs=self.threads)
        )
        note: dict[str, Any] | None = None
        if name == "svm" and len(x_train) > SVM_MAX_ROWS:
            from sklearn.model_selection import train_test_split

            stratify = y_train if self.task == "classification" else None
            x_train, _, y_train, _ = train_test_split(
                x_train, y_train, train_size=SVM_MAX_ROWS, random_state=self.p.seed,
                stratify=stratify,
            )  # fmt: skip
            note = {"rows": SVM_MAX_ROWS, "sampled": "a kernel SVM's cost is quadratic in rows"}
        if name in NEURAL:
            import torch

            from fnbundle.datasets import resolve_data
            from fnbundle.training.tabular_mlp import params_json

            folder = self.control.checkpoint_dir
            control = dataclasses.replace(
                self.control, checkpoint_dir=None if folder is None else folder / name
            )
            model.named_steps["model"].attach(
                self.mlp_events,
                control,
                params_json(self.p.model_dump(mode="json")),
                resolve_data(self.p.data, self.settings),
            )
            torch.set_num_threads(self.threads)
        with threadpool_limits(limits=self.threads):  # OpenMP and BLAS: boosting, linear fits
            model.fit(x_train, y_train)
        if name in NEURAL:
            note = model.named_steps["model"].summary()
        return model, note

    def cross_validate(self, name: str, x_train: Any, y_train: Any) -> dict[str, Any] | None:
        """k-fold score of the main metric on small tables (not for the MLPs: k more
        trainings, each with its own early stopping)."""
        from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

        if len(x_train) > CV_MAX_ROWS or name in NEURAL:
            return None
        folds = (StratifiedKFold if self.task == "classification" else KFold)(
            self.p.cv_folds, shuffle=True, random_state=self.p.seed
        )
        scores = cross_val_score(
            pipeline(self.spec, estimator(name, self.task, self.p, len(x_train), n_jobs=self.threads)),
            x_train, y_train, cv=folds, scoring=self.main, n_jobs=self.threads,
        )  # fmt: skip
        return {
            "mean": round(float(scores.mean()), 4),
            "std": round(float(scores.std()), 4),
            "folds": self.p.cv_folds,
        }

    def run(self) -> TabularResult:
        from sklearn.model_selection import train_test_split

        p = self.p
        _, schema, spec, x, y, classes = prepare(p, self.settings)
        assert schema.target is not None
        self.spec, self.task, self.main = spec, schema.target.task, MAIN_SCORE[schema.target.task]
        self.names = names = models_for(self.task, p)
        stratify = y if self.task == "classification" else None
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=p.test_split, random_state=p.seed, stratify=stratify
        )
        self.event({
            "type": "start", "total_steps": len(names), "epochs": 1, "labels": classes,
            "train_examples": len(x_train), "eval_examples": len(x_test), "device": "cpu",
        })  # fmt: skip
        board: list[Candidate] = []
        fitted: dict[str, Any] = {}
        answers: dict[str, np.ndarray] = {}
        for i, name in enumerate(names, start=1):
            self.check_stop(i - 1, board)
            at = {"type": "model", "model": name, "index": i, "of": len(names)}
            self.event({**at, "state": "training"})
            started = time.perf_counter()
            try:
                model, note = self.fit(name, x_train, y_train)
            except (ValueError, ArithmeticError) as exc:
                log.warning("%s could not be fitted: %s", name, exc)
                self.event({**at, "state": "failed", "reason": str(exc)[:300]})
                continue
            fit_s = round(time.perf_counter() - started, 3)
            proba = (
                model.predict_proba(x_test)
                if self.task == "classification" and hasattr(model, "predict_proba")
                else None
            )
            answers[name] = model.predict(x_test)
            metrics = score(self.task, y_test, answers[name], proba, classes)
            board.append(Candidate(
                model=name, metrics=metrics, cv=self.cross_validate(name, x_train, y_train),
                fit_s=fit_s, training=note,
            ))  # fmt: skip
            fitted[name] = model
            scores = {k: v for k, v in metrics.items() if isinstance(v, float)}
            self.event({**at, "state": "done", "scores": scores, "fit_s": fit_s})
        if not board:
            raise TrainingFailed(
                "No model could be fitted on this table (see the log).", field="params.model"
            )
        self.check_stop(len(names), board)
        board.sort(key=lambda c: c.metrics[self.main], reverse=True)
        best = board[0].model
        board[0].metrics["feature_importances"] = importances(
            fitted[best], spec, x_test, y_test, self.task, p.seed
        )
        artifact = publish(
            p, self.settings, schema, spec, fitted[best], board, x_test, classes,
            pictures={"answers": answers, "actual": y_test},
        )  # fmt: skip
        self.event({"type": "published", "model_id": artifact.id})
        return TabularResult(artifact=artifact, best=best, leaderboard=board, schema=schema)


def train_tabular(
    p: TrainTabularParams,
    settings: Settings,
    on_event: OnEvent | None = None,
    control: TrainControl | None = None,
) -> TabularResult:
    """Train (or compare), export the best to ONNX with parity, publish; see the module
    docstring."""
    return _Run(p, settings, on_event or (lambda _e: None), control or TrainControl()).run()


# --- publishing -------------------------------------------------------------------------------
def publish(
    p: TrainTabularParams,
    settings: Settings,
    schema: TableSchema,
    spec: FeatureSpec,
    model: Any,
    board: list[Candidate],
    x_test: Any,
    classes: list[str],
    *,
    pictures: dict[str, Any],
) -> Artifact:
    from fnbundle.training.tabular_report import draw

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
        drawn = draw(
            staged,
            task=task,
            main=MAIN_SCORE[task],
            board=[c.model_dump() for c in board],
            answers=pictures["answers"],
            actual=pictures["actual"],
            title=p.name,
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
            "leaderboard": [c.model_dump(exclude_none=True) for c in board],
            "pictures": drawn,
            "params": p.model_dump(mode="json"),
            "export": {"onnx": {"file": "model.onnx", **check}},
            "default_backend": "onnx",
            "backends": ["onnx"],
            "rows": schema.rows,
        }
        return store.publish(staged, manifest)
