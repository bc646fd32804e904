"""Training on tables: every classic model trains and exports to ONNX with parity; a
compare run on scikit-learn's bundled sets is within 0.02 of a hand-written pipeline on
the same split; the demo table end to end."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from fnbundle.errors import FnbError
from fnbundle.settings import Settings
from fnbundle.store import Store
from fnbundle.training.tabular import (
    TASKS_OF,
    TabularParams,
    graph_inputs,
    onnx_answers,
    prepare,
    train_tabular,
)

from tests.tiny import REPO

pytestmark = pytest.mark.model
FAST = {"n_estimators": 60}  # trees per forest or boosting: enough on these small sets


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    from sklearn import datasets

    folder = tmp_path_factory.mktemp("tables")
    for name in ("iris", "wine", "breast_cancer", "diabetes", "digits"):
        frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
        frame.to_csv(folder / f"{name}.csv", index=False)
    return folder


def settings_for(tmp_path: Path, tables: Path) -> Settings:
    return Settings(store=tmp_path / "store", data_roots=[tables, REPO / "data"])


def train(tmp_path, tables, data: str, **params):
    p = TabularParams(data=str(tables / data), name=params.pop("name", "t"), **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # skl2onnx reads SVC's deprecated attributes
        return train_tabular(p, settings_for(tmp_path, tables))


@pytest.mark.parametrize(
    ("data", "task"), [("iris.csv", "classification"), ("diabetes.csv", "regression")]
)
def test_every_model_of_the_task_trains_and_its_onnx_graph_matches(tmp_path, tables, data, task):
    names = [n for n, tasks in TASKS_OF.items() if task in tasks]
    events = []
    p = TabularParams(
        data=str(tables / data), name="all", models=names, hyperparams=FAST, cv_folds=2
    )
    result = train_tabular(p, settings_for(tmp_path, tables), lambda k, d: events.append((k, d)))
    assert sorted(c.model for c in result.leaderboard) == sorted(names)
    assert [d["model"] for k, d in events if d.get("state") == "done"] == names
    main = "accuracy" if task == "classification" else "r2"
    scores = [c.metrics[main] for c in result.leaderboard]
    assert scores == sorted(scores, reverse=True) and result.best == result.leaderboard[0].model
    for c in result.leaderboard:
        assert c.cv and c.cv["folds"] == 2 and c.fit_s >= 0
        if task == "classification":
            assert {"accuracy", "macro_f1", "roc_auc", "confusion_matrix"} <= set(c.metrics)
        else:
            assert {"r2", "rmse", "mae"} <= set(c.metrics)
    manifest = result.artifact.manifest
    assert manifest["task"] == "predict" and manifest["problem"] == task
    assert manifest["export"]["onnx"]["passed"] and manifest["model"] == result.best
    assert set(manifest["leaderboard"][0]["metrics"]["feature_importances"]) == {
        f["name"] for f in manifest["features"]
    }
    assert not any(
        p.suffix in {".pkl", ".pickle", ".joblib"} for p in result.artifact.path.iterdir()
    )


@pytest.mark.parametrize("model", sorted(TASKS_OF))
def test_each_model_alone_publishes_a_graph_that_answers_like_it(tmp_path, tables, model):
    data = "iris.csv" if "classification" in TASKS_OF[model] else "diabetes.csv"
    result = train(tmp_path, tables, data, model=model, hyperparams=FAST, cv_folds=2)
    assert [c.model for c in result.leaderboard] == [model]
    artifact = Store(tmp_path / "store").resolve("t")
    assert artifact.id == result.artifact.id and artifact.manifest["model"] == model
    # the published graph, fed the way serving feeds it, answers on fresh rows
    _, _, spec, x, y, classes = prepare(
        TabularParams(data=str(tables / data), name="t"), settings_for(tmp_path, tables)
    )
    pred, proba = onnx_answers(
        artifact.path / "model.onnx", graph_inputs(x, spec), artifact.manifest["problem"]
    )
    if classes:
        assert proba.shape == (len(x), len(classes)) and np.allclose(
            proba.sum(axis=1), 1, atol=1e-4
        )
        assert (pred == y).mean() > 0.85
    else:
        assert np.corrcoef(pred, y)[0, 1] > 0.3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "diabetes", "digits"])
def test_compare_is_within_002_of_a_hand_written_pipeline(tmp_path, tables, name):
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    result = train(tmp_path, tables, f"{name}.csv", hyperparams=FAST, cv_folds=2)
    task = result.artifact.manifest["problem"]
    # The same split (seed 0, 20% held out, stratified for classes), written by hand.
    _, _, _, x, y, _ = prepare(
        TabularParams(data=str(tables / f"{name}.csv"), name="t"), settings_for(tmp_path, tables)
    )
    stratify = y if task == "classification" else None
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=stratify
    )
    if task == "classification":
        hand = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        reference = accuracy_score(y_test, hand.fit(x_train, y_train).predict(x_test))
        ours = result.leaderboard[0].metrics["accuracy"]
    else:
        hand = make_pipeline(StandardScaler(), RidgeCV())
        reference = r2_score(y_test, hand.fit(x_train, y_train).predict(x_test))
        ours = result.leaderboard[0].metrics["r2"]
    assert ours >= reference - 0.02, (name, result.best, ours, reference)


def test_the_demo_table_trains_end_to_end(tmp_path, tables):
    result = train(
        tmp_path,
        tables,
        str(REPO / "data" / "churn.csv"),
        name="churn",
        models=["logistic_regression", "random_forest"],
        hyperparams=FAST,
        cv_folds=2,
    )
    manifest = result.artifact.manifest
    assert manifest["target"]["column"] == "churned" and manifest["classes"] == ["no", "yes"]
    assert {f["name"] for f in manifest["features"]} >= {"plan", "signup_date", "monthly_spend"}
    assert "customer_id" not in {f["name"] for f in manifest["features"]}
    best = result.leaderboard[0].metrics
    assert best["accuracy"] > 0.7 and best["roc_auc"] > 0.7
    top = list(best["feature_importances"])[:4]
    assert "last_login_days" in top  # the generator's strongest driver


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"model": "ridge"}, "ridge does not do classification"),
        ({"model": "compare", "models": ["ridge", "lasso"]}, "does classification"),
        ({"target": "nope"}, "No column 'nope'"),
    ],
)
def test_choices_that_cannot_work_are_refused_naming_them(tmp_path, tables, params, words):
    with pytest.raises(FnbError, match=words):
        train(tmp_path, tables, "iris.csv", **params)
    assert Store(tmp_path / "store").list() == []
