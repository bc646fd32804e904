"""One encoding of rows for training and serving: values read as their column's kind,
missing values as NaN or an empty category, and errors naming rows.<i>.<column>."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from fnbundle.errors import ValidationFailed
from fnbundle.tabular.features import FeatureSpec, read_value
from fnbundle.tabular.schema import detect

pytestmark = pytest.mark.unit


@pytest.fixture
def spec() -> FeatureSpec:
    frame = pd.DataFrame(
        {
            "plan": ["free", "pro", "basic"] * 10,
            "spend": [f"${i * 1000 + 5:,.2f}" for i in range(30)],
            "active": ["yes", "no"] * 15,
            "signup": [f"2024-0{1 + i % 9}-1{i % 9}" for i in range(30)],
            "y": [str(i % 2) for i in range(30)],
        }
    )
    return FeatureSpec.from_schema(detect(frame))


def test_rows_become_the_graphs_columns(spec):
    assert [f.name for f in spec.features] == ["plan", "spend", "active", "signup"]
    assert spec.categorical_inputs == ["f0"]
    assert spec.numeric_inputs == ["f1", "f2", "f3_year", "f3_month", "f3_day", "f3_dayofweek"]
    rows = [
        {"plan": "pro", "spend": "$1,234.50", "active": True, "signup": "2024-03-01"},
        {"plan": None, "spend": 12, "active": "No", "signup": "03/02/2024"},
        {"plan": "enterprise", "spend": None, "active": None, "signup": None},
    ]
    x = spec.encode(rows)
    assert x["f0"].dtype == object and x["f0"].ravel().tolist() == ["pro", "", "enterprise"]
    assert x["f1"].dtype == np.float32 and x["f1"].shape == (3, 1)
    assert x["f1"].ravel()[:2].tolist() == [1234.5, 12.0] and math.isnan(x["f1"][2, 0])
    assert x["f2"].ravel()[:2].tolist() == [1.0, 0.0] and math.isnan(x["f2"][2, 0])
    assert [x[f"f3_{p}"][0, 0] for p in ("year", "month", "day", "dayofweek")] == [2024, 3, 1, 4]
    assert x["f3_month"][1, 0] == 3 and x["f3_day"][1, 0] == 2  # month/day/year
    assert math.isnan(x["f3_year"][2, 0])


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        (
            {"plan": "pro", "spend": "a lot", "active": "yes", "signup": "2024-01-01"},
            "rows.0.spend",
            "not a number",
        ),
        (
            {"plan": "pro", "spend": 1, "active": "maybe", "signup": "2024-01-01"},
            "rows.0.active",
            "not a yes/no",
        ),
        (
            {"plan": "pro", "spend": 1, "active": "yes", "signup": "soon"},
            "rows.0.signup",
            "not a date",
        ),
        (
            {"plan": "pro", "spend": "inf", "active": "yes", "signup": "2024-01-01"},
            "rows.0.spend",
            "not a number",
        ),
        ({"plan": "pro", "active": "yes", "signup": "2024-01-01"}, "rows.0.spend", "no 'spend'"),
        (
            {"plan": "pro", "spend": 1, "active": "yes", "signup": "2024-01-01", "x": 1},
            "rows.0.x",
            "unknown column 'x'",
        ),
    ],
)
def test_unreadable_rows_are_errors_naming_the_cell(spec, row, field, words):
    with pytest.raises(ValidationFailed, match=words) as caught:
        spec.encode([row])
    assert caught.value.field == field and caught.value.status == 422


def test_training_rows_may_carry_other_columns(spec):
    x = spec.encode(
        [{"plan": "pro", "spend": 1, "active": "t", "signup": "2024-01-01", "y": "1"}], strict=False
    )
    assert set(x) == set(spec.numeric_inputs) | set(spec.categorical_inputs)


def test_values_read_as_their_kind():
    assert read_value("12%", "numeric") == [12.0]
    assert read_value("-$3.5", "numeric") == [-3.5]
    assert read_value("N/A", "integer")[0] != read_value("N/A", "integer")[0]  # NaN
    assert read_value(" basic ", "categorical") == ["basic"]
    assert read_value("2024-03-01T13:30:00Z", "datetime") == [2024.0, 3.0, 1.0, 4.0, 13.0]
