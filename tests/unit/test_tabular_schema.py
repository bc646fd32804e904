"""Reading tables and detecting their schema: kinds, target proposal, overrides, and the
errors that name the row and column."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fnbundle.tabular.read import TableError, read_table, sniff_format
from fnbundle.tabular.schema import SchemaError, check_trainable, detect, resolve

from tests.tiny import REPO

pytestmark = pytest.mark.unit
CHURN = REPO / "data" / "churn.csv"


def kinds(schema) -> dict[str, str]:
    return {c.name: c.kind for c in schema.columns}


def mixed(rows: int = 60) -> pd.DataFrame:
    """Every kind once, written as an export would write it (all strings)."""
    return pd.DataFrame(
        {
            "customer_id": [f"C-{i:04d}" for i in range(rows)],
            "row": [str(i + 1) for i in range(rows)],
            "plan": (["free", "basic", "pro"] * rows)[:rows],
            "spend": [f"${1000 + 37 * i:,.2f}" for i in range(rows)],
            "visits": [f"{1000 * (i % 7) + i:,}" for i in range(rows)],
            "share": [f"{i % 10}%" for i in range(rows)],
            "ratio": [str(0.5 + i / 100) if i % 5 else "N/A" for i in range(rows)],
            "seats": [str(i % 9) if i % 4 else "" for i in range(rows)],
            "active": (["Yes", "no"] * rows)[:rows],
            "flag": (["1", "0", "0"] * rows)[:rows],
            "signup": [f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}" for i in range(rows)],
            "seen_at": [f"2024-03-01T{i % 24:02d}:15:00" for i in range(rows)],
            "us_date": [f"{1 + i % 12}/{1 + i % 28}/2023" for i in range(rows)],
            "comment": [f"customer {i} wrote a long free text comment here" for i in range(rows)],
            "const": ["x"] * rows,
            "empty": ["", "NA", "null", "-"] * (rows // 4),
            "price": [str(10 + (i * 7919) % 991 / 10) for i in range(rows)],
        }
    )


def test_every_kind_is_detected_from_strings():
    schema = detect(mixed())
    assert kinds(schema) == {
        "customer_id": "identifier",
        "row": "identifier",
        "plan": "categorical",
        "spend": "numeric",
        "visits": "integer",
        "share": "numeric",
        "ratio": "numeric",
        "seats": "integer",
        "active": "boolean",
        "flag": "boolean",
        "signup": "date",
        "seen_at": "datetime",
        "us_date": "date",
        "comment": "text",
        "const": "constant",
        "empty": "constant",
        "price": "numeric",
    }
    spend = schema.column("spend")
    assert spend.parsed == "currency" and spend.range == (1000.0, 1000.0 + 37 * 59)
    assert schema.column("visits").parsed == "thousands"
    assert schema.column("share").parsed == "percent"
    assert schema.column("ratio").missing == pytest.approx(12 / 60, abs=1e-4)
    assert schema.column("seats").missing == pytest.approx(15 / 60, abs=1e-4)
    assert schema.column("plan").distinct == 3
    assert schema.column("signup").parts == ["year", "month", "day", "dayofweek"]
    assert "hour" in schema.column("seen_at").parts
    dropped = {c.name: c.reason for c in schema.columns if c.role == "dropped"}
    assert set(dropped) == {"customer_id", "row", "comment", "const", "empty"}
    assert "every value is missing" in dropped["empty"] and "'x'" in dropped["const"]
    assert schema.target.column == "price" and schema.target.task == "regression"
    assert "last column" in schema.target.reason
    assert "price" not in schema.features and "plan" in schema.features


def test_a_column_named_like_a_target_is_proposed_over_the_last_one():
    frame = pd.DataFrame(
        {"label": ["a", "b"] * 20, "x": [str(i) for i in range(40)], "z": ["1.5"] * 39 + ["2"]}
    )
    schema = detect(frame)
    assert schema.target.column == "label" and schema.target.task == "classification"
    assert schema.target.classes == 2 and "named 'label'" in schema.target.reason


@pytest.mark.parametrize(
    ("values", "task"),
    [
        ([str(i % 3) for i in range(90)], "classification"),  # three whole numbers: classes
        ([str(i) for i in range(90)], "regression"),
        ([str(i % 40) for i in range(90)], "regression"),  # too many values for classes
    ],
)
def test_an_integer_target_is_classes_only_with_few_values(values, task):
    frame = pd.DataFrame({"x": [str(i * 1.5) for i in range(90)], "y": values})
    assert detect(frame).target.task == task


def test_scikit_learn_bundled_sets_get_the_right_target_and_task():
    from sklearn import datasets

    expected = {
        "iris": "classification",
        "wine": "classification",
        "breast_cancer": "classification",
        "diabetes": "regression",
        "digits": "classification",
    }
    for name, task in expected.items():
        frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
        schema = detect(frame)
        assert (schema.target.column, schema.target.task) == ("target", task), name
        assert len(schema.features) >= 4


def test_the_demo_table_reads_as_its_generator_wrote_it():
    schema = detect(read_table(CHURN))
    assert schema.rows == 3000
    assert kinds(schema) | {} == {
        "customer_id": "identifier",
        "signup_date": "date",
        "plan": "categorical",
        "country": "categorical",
        "seats": "integer",
        "monthly_spend": "numeric",
        "last_login_days": "integer",
        "support_tickets": "integer",
        "autopay": "boolean",
        "nps": "integer",
        "feedback": "categorical",
        "churned": "boolean",
    }
    assert schema.target.column == "churned" and schema.target.task == "classification"
    assert schema.column("nps").missing == pytest.approx(0.3, abs=0.03)
    check_trainable(read_table(CHURN), schema)


def test_overrides_change_target_task_kind_and_exclusions():
    frame = mixed()
    schema = resolve(
        detect(frame),
        target="seats",
        task="classification",
        kinds={"plan": "text"},
        exclude=["spend"],
    )
    assert schema.target.column == "seats" and schema.target.task == "classification"
    assert "as you asked" in schema.target.reason
    assert schema.column("plan").role == "dropped" and schema.column("spend").role == "dropped"
    assert schema.column("price").role == "feature"
    assert "seats" not in schema.features and "spend" not in schema.features


@pytest.mark.parametrize(
    ("override", "field", "words"),
    [
        ({"target": "nope"}, "target", "No column 'nope'"),
        ({"target": "comment"}, "target", "cannot be the target: it is text"),
        ({"target": "plan", "task": "regression"}, "task", "regression needs numbers"),
        ({"kinds": {"plan": "numeric"}}, "columns.plan", "cannot be numeric"),
        ({"kinds": {"plan": "date"}}, "columns.plan", "not dates"),
        ({"target": "price", "exclude": ["price"]}, "target", "both the target and excluded"),
        ({"exclude": ["ghost"]}, "target", "No column 'ghost'"),
    ],
)
def test_bad_overrides_name_the_column(override, field, words):
    with pytest.raises(SchemaError, match=words) as caught:
        resolve(detect(mixed()), **override)
    assert caught.value.field == field and caught.value.status == 422


def test_what_no_model_can_learn_from_is_refused_naming_it():
    ids_only = pd.DataFrame({"id": [str(i) for i in range(20)], "y": ["a", "b"] * 10})
    with pytest.raises(SchemaError, match=r"No usable feature.*id: a different value"):
        check_trainable(ids_only, detect(ids_only))
    one_class = pd.DataFrame({"x": [str(i * 1.5) for i in range(20)], "y": ["a"] * 20})
    with pytest.raises(SchemaError, match="one class"):
        check_trainable(
            one_class, resolve(detect(one_class), kinds={"y": "categorical"}, target="y")
        )
    frame = pd.DataFrame({"x": [str(i * 1.5) for i in range(20)], "y": ["a"] * 19 + ["b"]})
    with pytest.raises(SchemaError, match=r"Class 'b' of 'y' has 1 row \(row 21 of the file\)"):
        check_trainable(frame, resolve(detect(frame), target="y"))
    only = pd.DataFrame({"x": [str(i * 1.5) for i in range(20)], "y": ["a"] * 20})
    schema = detect(only)
    assert schema.target is not None and schema.target.column == "x"  # y is constant
    with pytest.raises(SchemaError, match="none is numeric, boolean or categorical"):
        texts = pd.DataFrame({"t": [f"review number {i} in a few words" for i in range(40)]})
        check_trainable(texts, detect(texts))


# --- reading ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"a,b\n", "has a header but no rows"),
        (b"a,b\n1,2\n3,4,5\n", "line 3 has 3 fields where the header has 2"),
        (b"a,,c\n1,2,3\n", "column 2 has no name"),
        (b"a,b,a\n1,2,3\n", "the column name 'a' appears twice"),
        (b"a,b\n1,\xff\xfe\n", "not UTF-8"),
    ],
)
def test_csv_that_is_not_a_table_is_a_clear_error(tmp_path, content, words):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(TableError, match=words) as caught:
        read_table(path)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        ('{"a": 1}\nnot json\n', "line 2: not JSON"),
        ('{"a": 1}\n[1, 2]\n', "line 2: a JSONL table has one object per line"),
        ('{"a": {"b": 1}}\n', "column 'a' holds a nested value"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, lines, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(lines)
    with pytest.raises(TableError, match=words):
        read_table(path)


def test_the_four_formats_read_to_the_same_schema(tmp_path):
    frame = read_table(CHURN).head(300)
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    with (tmp_path / "t.jsonl").open("w") as f:
        for row in frame.to_dict(orient="records"):
            f.write(json.dumps(row) + "\n")
    frame.to_parquet(tmp_path / "t.parquet")
    expected = kinds(detect(frame))
    for name in ("t.tsv", "t.jsonl", "t.parquet"):
        assert kinds(detect(read_table(tmp_path / name))) == expected, name
    # the format comes from the first bytes when the name has no known suffix
    (tmp_path / "upload").write_bytes((tmp_path / "t.parquet").read_bytes())
    assert sniff_format(tmp_path / "upload") == "parquet"
    (tmp_path / "upload2").write_bytes((tmp_path / "t.tsv").read_bytes())
    assert sniff_format(tmp_path / "upload2") == "tsv"


def test_typed_parquet_columns_keep_their_kinds(tmp_path):
    frame = pd.DataFrame(
        {
            "n": [1.5, None, 3.25, 4.0] * 10,
            "b": [True, False] * 20,
            "when": pd.date_range("2024-01-01", periods=40, freq="D"),
            "y": list(range(40)),
        }
    )
    frame.to_parquet(tmp_path / "typed.parquet")
    schema = detect(read_table(tmp_path / "typed.parquet"))
    assert kinds(schema) == {"n": "numeric", "b": "boolean", "when": "date", "y": "identifier"}
    assert schema.column("n").missing == 0.25
