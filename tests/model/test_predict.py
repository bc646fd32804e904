"""Serving a tabular model: rows or columns in, classes with probabilities or values out,
through the same task the gateway and the platforms run; bad rows are 422s naming the
cell, and concurrent requests share graph runs without mixing their rows."""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import pytest
from fnbundle.errors import ValidationFailed
from fnbundle.runtime.batching import DynamicBatcher
from fnbundle.settings import Settings
from fnbundle.store import Store
from fnbundle.tasks.predict.schema import PredictRequest
from fnbundle.tasks.predict.serve import PredictTask
from fnbundle.tasks.train_tabular.params import TrainTabularParams
from fnbundle.training.tabular import train_tabular
from pydantic import ValidationError

from tests.tiny import REPO

pytestmark = pytest.mark.model
CHURN = REPO / "data" / "churn.csv"
ROW = PredictTask.example["rows"][0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    settings = Settings(store=root / "store", data_roots=[REPO / "data", root])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        train_tabular(
            TrainTabularParams(
                data=str(CHURN), name="churn", model="logistic_regression", cv_folds=2
            ),
            settings,
        )
        from sklearn.datasets import load_diabetes

        load_diabetes(as_frame=True).frame.to_csv(root / "diabetes.csv", index=False)
        train_tabular(
            TrainTabularParams(
                data=str(root / "diabetes.csv"), name="sugar", model="ridge", cv_folds=2
            ),
            settings,
        )
    return settings


def load(settings, name):
    task = PredictTask()
    artifact = Store(settings.store_root).resolve(name)
    return task, task.load(artifact, "onnx", settings)


def test_a_classifier_answers_classes_with_probabilities(trained):
    task, model = load(trained, "churn")
    risky = ROW | {
        "last_login_days": 90,
        "support_tickets": 9,
        "autopay": "no",
        "nps": 1,
        "plan": "free",
    }
    request = PredictRequest(
        model="churn", rows=[ROW, risky, ROW | {"plan": "enterprise", "nps": None}]
    )
    answer = task.run_sync(model, request, trained)
    assert answer.model == model.model_id and answer.task == "classification"
    first, second, unseen = answer.predictions
    assert set(first.probabilities) == {"no", "yes"}
    assert abs(sum(first.probabilities.values()) - 1) < 1e-5
    assert first.prediction == "no" and second.prediction == "yes"
    assert second.probabilities["yes"] > first.probabilities["yes"]
    assert unseen.prediction in ("no", "yes")  # an unseen category and a null still answer
    columns = {k: [v, risky[k]] for k, v in ROW.items()}
    by_columns = task.run_sync(model, PredictRequest(model="churn", columns=columns), trained)
    assert by_columns.predictions == answer.predictions[:2]


def test_a_regressor_answers_values(trained):
    task, model = load(trained, "sugar")
    row = {name: 0.01 for name in ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")}
    answer = task.run_sync(
        model, PredictRequest(model="sugar", rows=[row, row | {"bmi": 0.1}]), trained
    )
    assert answer.task == "regression" and answer.predictions[0].probabilities is None
    assert answer.predictions[1].prediction > answer.predictions[0].prediction  # bmi raises it


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seats": "many"}, "rows.0.seats"),
        ({"autopay": "perhaps"}, "rows.0.autopay"),
        ({"signup_date": "last week"}, "rows.0.signup_date"),
        ({"colour": "red"}, "rows.0.colour"),
    ],
)
def test_unreadable_rows_are_422_naming_the_cell(trained, change, field):
    task, model = load(trained, "churn")
    with pytest.raises(ValidationFailed) as caught:
        task.run_sync(model, PredictRequest(model="churn", rows=[ROW | change]), trained)
    assert caught.value.field == field
    missing = {k: v for k, v in ROW.items() if k != "plan"}
    with pytest.raises(ValidationFailed, match="no 'plan'"):
        task.run_sync(model, PredictRequest(model="churn", rows=[missing]), trained)


def test_request_shapes_and_limits():
    with pytest.raises(ValidationError, match="exactly one of 'rows' or 'columns'"):
        PredictRequest(model="m")
    with pytest.raises(ValidationError, match="same number of values"):
        PredictRequest(model="m", columns={"a": [1, 2], "b": [1]})
    with pytest.raises(ValidationError):
        PredictRequest(model="m", rows=[{"a": [1, 2]}])  # a cell is never a list
    settings = Settings(max_rows=2)
    with pytest.raises(Exception, match="over the limit of 2"):
        PredictTask().check_limits(PredictRequest(model="m", rows=[{}, {}, {}]), settings)


def test_concurrent_requests_share_batches_and_keep_their_rows(trained):
    task, model = load(trained, "churn")
    rows = [ROW | {"last_login_days": d, "nps": d % 11} for d in range(40)]
    alone = [task.run_sync(model, PredictRequest(model="churn", rows=[r]), trained) for r in rows]

    async def together():
        batcher = DynamicBatcher(task.batch_fn(model), max_size=64, max_wait_s=0.005)
        return await asyncio.gather(
            *(
                task.run(model, PredictRequest(model="churn", rows=[r]), batcher, trained)
                for r in rows
            )
        )

    shared = asyncio.run(together())
    for a, s in zip(alone, shared, strict=True):
        assert a.predictions[0].prediction == s.predictions[0].prediction
        assert np.allclose(
            list(a.predictions[0].probabilities.values()),
            list(s.predictions[0].probabilities.values()),
            atol=1e-5,
        )
