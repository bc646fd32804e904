"""What each column of a table is, which one to predict, and whether a model can learn it.

:func:`detect` reads a DataFrame (every cell a string for text formats, typed for Parquet)
and answers a :class:`TableSchema`: per column its kind, share of missing values, distinct
values, a few examples, how it is used (a feature, the target, or dropped and why), and a
proposed target and task with the reason. :func:`resolve` applies the user's overrides
(target, task, column kinds, exclusions) and :func:`check_trainable` refuses, naming the
row and the column, what no model can learn from.

Kinds:

* ``numeric``, ``integer``: every present value parses as a number, after removing a
  currency sign, thousands separators (``$1,234.50``) or a percent sign (``parsed``
  records which).
* ``boolean``: two values of one pair (yes/no, true/false, y/n, t/f, 0/1), any case.
* ``date``, ``datetime``: every present value is a date (ISO ``2024-03-01``, ``03/01/2024``,
  with a time for ``datetime``); a model sees its parts (:data:`DATE_PARTS`).
* ``categorical``: few distinct values (``distinct`` is the cardinality); ``text``: many
  distinct values of several words (free text; not used by the tabular models).
* ``identifier``: a different value in every row (an id column: dropped);
  ``constant``: one value, or none (dropped).

Missing: an empty cell and the usual spellings (``NA``, ``N/A``, ``null``, ``None``,
``NaN``, ``-``, ``?``), any case.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from fnbundle.errors import FnbError

if TYPE_CHECKING:
    import pandas as pd

Kind = Literal[
    "numeric",
    "integer",
    "boolean",
    "categorical",
    "text",
    "date",
    "datetime",
    "identifier",
    "constant",
]
Task = Literal["classification", "regression"]
FEATURE_KINDS = frozenset({"numeric", "integer", "boolean", "categorical", "date", "datetime"})
TARGET_KINDS = frozenset({"numeric", "integer", "boolean", "categorical"})
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "-", "?", "#n/a", "nil"})
BOOLEAN_PAIRS = (
    frozenset({"yes", "no"}),
    frozenset({"true", "false"}),
    frozenset({"y", "n"}),
    frozenset({"t", "f"}),
    frozenset({"0", "1"}),
)
TRUE_WORDS = frozenset({"yes", "true", "y", "t", "1"})
DATE_PARTS = {
    "date": ("year", "month", "day", "dayofweek"),
    "datetime": ("year", "month", "day", "dayofweek", "hour"),
}
TARGET_NAMES = ("target", "label", "class", "y", "outcome")  # a column so named is the target
CURRENCY = re.compile(r"^\s*([-+]?)\s*[$€£¥₹]\s*|\s*[$€£¥₹]\s*$")
THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")
PLAIN_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
DATE_LIKE = re.compile(
    r"^\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$|^\d{1,2}/\d{1,2}/\d{4}( \d{1,2}:\d{2}(:\d{2})?)?$"
)
ID_NAME = re.compile(r"(^|[_\s-])(id|uuid|guid|key|code)$|^(id|uuid|guid)[_\s-]|Id$", re.IGNORECASE)
CATEGORICAL_MAX = 50  # distinct values: up to this many (and not nearly one per row) is categorical
CLASSIFY_INTEGER_MAX = 20  # an integer target with up to this many values is classes
EXAMPLES = 3
MIN_CLASS_ROWS = 2  # rows a class needs so both the training and held-out split can hold it


class SchemaError(FnbError):
    """A table no model can be trained on, or an override that names nothing in it."""

    status, type = 422, "invalid_dataset"


class ColumnSchema(BaseModel):
    name: str
    kind: Kind
    missing: float = Field(description="Share of rows with no value, 0-1.")
    distinct: int = Field(description="Distinct present values (the cardinality).")
    examples: list[str] = Field(description=f"Up to {EXAMPLES} present values, as written.")
    parsed: Literal["currency", "thousands", "percent"] | None = Field(
        None, description="How numbers were read from text, where they needed it."
    )
    range: tuple[float, float] | None = Field(None, description="Min and max, numbers only.")
    parts: list[str] | None = Field(None, description="What a model sees of a date column.")
    role: Literal["feature", "target", "dropped"] = "feature"
    reason: str | None = Field(
        None, description="Why a column is dropped, or why it is the target."
    )


class TargetProposal(BaseModel):
    column: str
    task: Task
    reason: str
    classes: int | None = Field(None, description="Distinct values of a classification target.")


class TableSchema(BaseModel):
    rows: int
    columns: list[ColumnSchema]
    target: TargetProposal | None = Field(
        None, description="The proposed target and task; null when no column fits."
    )
    features: list[str] = Field(description="The columns a model would use.")

    def column(self, name: str) -> ColumnSchema:
        for c in self.columns:
            if c.name == name:
                return c
        names = ", ".join(c.name for c in self.columns[:20])
        raise SchemaError(
            f"No column {name!r} in this table; its columns: {names}.", field="target"
        )


# --- detection ------------------------------------------------------------------------------
def present_mask(series: pd.Series) -> pd.Series:
    """True where a cell holds a value (not NaN/None and not a spelling of missing)."""
    import pandas as pd

    if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
        return series.notna()
    text = series.astype("string").str.strip().str.lower()
    return series.notna() & ~text.isin(MISSING).fillna(True)


def parse_numbers(values: pd.Series) -> tuple[pd.Series, str | None] | None:
    """``values`` (present cells, strings) as floats, and how they were written; None if
    any of them is not a number."""
    import pandas as pd

    text = values.astype(str).str.strip()
    how: str | None = None
    if text.str.endswith("%").all():
        text, how = text.str[:-1].str.strip(), "percent"
    stripped = text.str.replace(CURRENCY, r"\1", regex=True)
    if (stripped != text).any():
        text, how = stripped, "currency"
    if (
        text.str.match(THOUSANDS).any()
        and (text.str.match(THOUSANDS) | text.str.match(PLAIN_NUMBER)).all()
    ):
        text, how = text.str.replace(",", "", regex=False), how or "thousands"
    if not text.str.match(PLAIN_NUMBER).all():
        return None
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.isna().any() or not numbers.map(math.isfinite).all():
        return None
    return numbers.astype(float), how


def parse_dates(values: pd.Series) -> pd.Series | None:
    """``values`` (present cells) as timestamps, if every one is written as a date."""
    import pandas as pd

    text = values.astype(str).str.strip()
    if not text.str.match(DATE_LIKE).all():
        return None
    iso = text.str.match(r"^\d{4}-").all()
    try:
        parsed = pd.to_datetime(
            text, format="ISO8601" if iso else "%m/%d/%Y", errors="coerce", utc=True
        )
        if parsed.isna().any() and not iso:
            parsed = pd.to_datetime(text, format="mixed", errors="coerce", utc=True)
    except (ValueError, TypeError):
        return None
    return None if parsed.isna().any() else parsed


def _column(name: str, series: pd.Series, rows: int) -> ColumnSchema:
    import pandas as pd

    mask = present_mask(series)
    values = series[mask]
    missing = round(1 - len(values) / rows, 4) if rows else 1.0
    shown = values.astype(str).str.strip()
    distinct = int(shown.nunique())
    examples = list(dict.fromkeys(shown.head(200)))[:EXAMPLES]
    base = {"name": name, "missing": missing, "distinct": distinct, "examples": examples}
    if distinct == 0:
        return ColumnSchema(
            **base, kind="constant", role="dropped", reason="every value is missing"
        )
    if distinct == 1:
        return ColumnSchema(
            **base,
            kind="constant",
            role="dropped",
            reason=f"one value ({examples[0]!r}) in every row",
        )
    lowered = frozenset(shown.str.lower().unique())
    if distinct == 2 and any(lowered <= pair for pair in BOOLEAN_PAIRS):
        return ColumnSchema(**base, kind="boolean")
    if pd.api.types.is_bool_dtype(series):
        return ColumnSchema(**base, kind="boolean")
    unique_per_row = distinct == len(values) == rows
    if pd.api.types.is_numeric_dtype(series):
        numbers, how = values.astype(float), None
    else:
        parsed = parse_numbers(values)
        numbers, how = parsed if parsed else (None, None)
    if numbers is not None:
        # Whole numbers written as such: "1,200" is an integer, "$5.00", "5.0" and "5%" are not.
        written = (
            shown.str.contains(r"[.eE%]", regex=True).any()
            if how or not pd.api.types.is_numeric_dtype(series)
            else False
        )
        integral = bool((numbers == numbers.round()).all()) and not written and how != "currency"
        span = (float(numbers.min()), float(numbers.max()))
        if unique_per_row and integral and (ID_NAME.search(name) or _consecutive(numbers)):
            return ColumnSchema(
                **base,
                kind="identifier",
                role="dropped",
                reason="a different value in every row (an id)",
            )
        return ColumnSchema(
            **base, kind="integer" if integral else "numeric", parsed=how, range=span
        )
    dates = None if pd.api.types.is_numeric_dtype(series) else parse_dates(values)
    if pd.api.types.is_datetime64_any_dtype(series):
        dates = values
    if dates is not None:
        has_time = bool((dates.dt.hour != 0).any() or (dates.dt.minute != 0).any())
        kind: Kind = "datetime" if has_time else "date"
        return ColumnSchema(**base, kind=kind, parts=list(DATE_PARTS[kind]))
    words = float(shown.str.split().str.len().mean())
    if unique_per_row and (ID_NAME.search(name) or words < 1.5):
        return ColumnSchema(
            **base,
            kind="identifier",
            role="dropped",
            reason="a different value in every row (an id)",
        )
    if distinct <= CATEGORICAL_MAX and distinct <= max(2, len(values) // 2):
        return ColumnSchema(**base, kind="categorical")
    if words >= 3:
        return ColumnSchema(
            **base,
            kind="text",
            role="dropped",
            reason="free text (a text classifier's input, not a table's)",
        )
    return ColumnSchema(**base, kind="categorical")


def _consecutive(numbers: pd.Series) -> bool:
    """A row counter: sorted, the values step by one."""
    ordered = numbers.sort_values().to_numpy()
    return bool(len(ordered) > 1 and ((ordered[1:] - ordered[:-1]) == 1).all())


def propose_target(columns: list[ColumnSchema], rows: int) -> TargetProposal | None:
    """A column named like a target, else the last column a model can predict."""
    usable = [c for c in columns if c.kind in TARGET_KINDS and c.missing < 1]
    named = [c for c in usable if c.name.strip().lower() in TARGET_NAMES]
    if named:
        chosen, why = named[0], f"it is named {named[0].name!r}"
    elif usable:
        chosen, why = usable[-1], "the last column a model can predict (tables usually end with it)"
    else:
        return None
    task, kind_reason = task_for(chosen, rows)
    classes = chosen.distinct if task == "classification" else None
    return TargetProposal(
        column=chosen.name, task=task, reason=f"{why}; {kind_reason}", classes=classes
    )


def task_for(column: ColumnSchema, rows: int) -> tuple[Task, str]:
    if column.kind in ("boolean", "categorical"):
        return "classification", f"{column.kind} with {column.distinct} values: classification"
    if column.kind == "integer" and column.distinct <= min(
        CLASSIFY_INTEGER_MAX, max(2, rows // 10)
    ):
        return (
            "classification",
            f"whole numbers with only {column.distinct} distinct values: classification",
        )
    return "regression", f"{column.kind} with {column.distinct} distinct values: regression"


def detect(frame: pd.DataFrame) -> TableSchema:
    """The schema of ``frame`` and a proposed target (see the module docstring)."""
    rows = len(frame)
    columns = [_column(str(name), frame[name], rows) for name in frame.columns]
    target = propose_target(columns, rows)
    return _with_roles(rows, columns, target)


def _with_roles(
    rows: int, columns: list[ColumnSchema], target: TargetProposal | None
) -> TableSchema:
    out = []
    for c in columns:
        if target and c.name == target.column:
            c = c.model_copy(update={"role": "target", "reason": target.reason})
        elif c.role == "target":
            c = c.model_copy(update={"role": "feature", "reason": None})
        out.append(c)
    features = [c.name for c in out if c.role == "feature" and c.kind in FEATURE_KINDS]
    return TableSchema(rows=rows, columns=out, target=target, features=features)


# --- the user's overrides -------------------------------------------------------------------
def resolve(
    schema: TableSchema,
    *,
    target: str | None = None,
    task: Task | None = None,
    kinds: dict[str, Kind] | None = None,
    exclude: list[str] | None = None,
) -> TableSchema:
    """``schema`` with the user's choices applied; SchemaError naming a column that is not
    in the table or a kind a column cannot take."""
    columns = list(schema.columns)
    for name, kind in (kinds or {}).items():
        c = schema.column(name)
        if kind in ("numeric", "integer") and c.kind not in ("numeric", "integer", "boolean"):
            raise SchemaError(
                f"Column {name!r} cannot be {kind}: its values are {c.kind} (e.g. {c.examples[:2]}).",
                field=f"columns.{name}",
            )
        role = "dropped" if kind in ("identifier", "constant", "text") else "feature"
        reason = f"set to {kind} by you" if role == "dropped" else None
        parts = list(DATE_PARTS[kind]) if kind in DATE_PARTS else None
        if kind in DATE_PARTS and c.kind not in DATE_PARTS:
            raise SchemaError(
                f"Column {name!r} cannot be {kind}: its values are not dates.",
                field=f"columns.{name}",
            )
        columns[columns.index(c)] = c.model_copy(
            update={"kind": kind, "role": role, "reason": reason, "parts": parts}
        )
    for name in exclude or []:
        c = next(x for x in columns if x.name == schema.column(name).name)
        columns[columns.index(c)] = c.model_copy(
            update={"role": "dropped", "reason": "excluded by you"}
        )
    chosen = schema.target
    if target is not None or task is not None or (chosen and chosen.column in (exclude or [])):
        wanted = target or (chosen.column if chosen else None)
        if wanted is None:
            raise SchemaError(
                "No column can be the target: name one with `target`.", field="target"
            )
        name = wanted
        column = next(c for c in columns if c.name == schema.column(name).name)
        if column.kind not in TARGET_KINDS:
            raise SchemaError(
                f"Column {name!r} cannot be the target: it is {column.kind}"
                + (f" ({column.reason})" if column.reason else "")
                + ".",
                field="target",
            )
        if name in (exclude or []):
            raise SchemaError(f"Column {name!r} is both the target and excluded.", field="target")
        auto_task, why = task_for(column, schema.rows)
        if task == "regression" and column.kind in ("boolean", "categorical"):
            raise SchemaError(
                f"Column {name!r} is {column.kind}: regression needs numbers.", field="task"
            )
        chosen_task = task or auto_task
        reason = "chosen by you" + (f"; {why}" if task is None else f"; {chosen_task} as you asked")
        chosen = TargetProposal(
            column=name,
            task=chosen_task,
            reason=reason,
            classes=column.distinct if chosen_task == "classification" else None,
        )
    return _with_roles(schema.rows, columns, chosen)


# --- what no model can learn from -------------------------------------------------------------
def check_trainable(frame: pd.DataFrame, schema: TableSchema) -> None:
    """SchemaError naming what is wrong: no target, a target with one class or no values,
    a class too rare to split, no usable feature."""
    if schema.target is None:
        raise SchemaError(
            "No column can be the target (none is numeric, boolean or categorical): name one "
            "with `target`.",
            field="target",
        )
    name = schema.target.column
    present = present_mask(frame[name])
    if not present.any():
        raise SchemaError(f"The target column {name!r} has no values.", field="target")
    if not schema.features:
        raise SchemaError(
            "No usable feature: every column other than the target is dropped "
            f"({', '.join(f'{c.name}: {c.reason}' for c in schema.columns if c.role == 'dropped')}).",
            field="columns",
        )
    if schema.target.task == "classification":
        counts = frame.loc[present, name].astype(str).str.strip().value_counts()
        if len(counts) < 2:
            raise SchemaError(
                f"The target column {name!r} has one class ({counts.index[0]!r}): a classifier "
                "needs at least two.",
                field="target",
            )
        rare = counts[counts < MIN_CLASS_ROWS]
        if len(rare):
            label = rare.index[0]
            row = int(frame.index[(frame[name].astype(str).str.strip() == label) & present][0]) + 2
            raise SchemaError(
                f"Class {label!r} of {name!r} has {int(rare.iloc[0])} row (row {row} of the file): "
                f"each class needs at least {MIN_CLASS_ROWS} to appear in both the training and "
                "held-out rows; drop that row or merge the class.",
                field="target",
            )
    elif present.sum() < 10:
        raise SchemaError(
            f"The target column {name!r} has {int(present.sum())} values: too few to learn from.",
            field="target",
        )
