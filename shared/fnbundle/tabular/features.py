"""From a table's rows to a model's inputs: the one encoding training and serving share.

A :class:`FeatureSpec` (written into the artifact's manifest) lists the features a model
reads, each with its kind. :meth:`FeatureSpec.encode` turns rows (dicts of raw values, as
a CSV or a JSON request holds them) into the ONNX graph's inputs: one ``[n, 1]`` column per
input, float32 for numbers (booleans as 0/1, dates as their parts, a missing value as NaN,
imputed inside the graph) and strings for categories (missing: ``""``, imputed inside the
graph; a category never seen in training is ignored by the one-hot encoding).

Key rule: a value that cannot be read as its column's kind (``"abc"`` for a number) is an
error naming ``rows.<i>.<column>``; so is a missing or an unknown column. Only numpy is
imported: the serving side stays light.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from fnbundle.errors import ValidationFailed
from fnbundle.tabular.schema import (
    CURRENCY,
    DATE_PARTS,
    MISSING,
    PLAIN_NUMBER,
    THOUSANDS,
    TRUE_WORDS,
    TableSchema,
)

FALSE_WORDS = frozenset({"no", "false", "n", "f", "0"})
US_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})(?: (\d{1,2}):(\d{2})(?::(\d{2}))?)?$")


class Feature(BaseModel):
    name: str
    kind: Literal["numeric", "integer", "boolean", "categorical", "date", "datetime"]
    inputs: list[str]  # the graph's input names this column feeds (a date: one per part)


class FeatureSpec(BaseModel):
    features: list[Feature]

    @classmethod
    def from_schema(cls, schema: TableSchema) -> FeatureSpec:
        features = []
        for i, name in enumerate(schema.features):
            kind = schema.column(name).kind
            if kind in DATE_PARTS:
                inputs = [f"f{i}_{part}" for part in DATE_PARTS[kind]]
            else:
                inputs = [f"f{i}"]
            features.append(Feature(name=name, kind=kind, inputs=inputs))
        return cls(features=features)

    @property
    def numeric_inputs(self) -> list[str]:
        return [n for f in self.features if f.kind != "categorical" for n in f.inputs]

    @property
    def categorical_inputs(self) -> list[str]:
        return [n for f in self.features if f.kind == "categorical" for n in f.inputs]

    def encode(self, rows: list[dict[str, Any]], *, strict: bool = True) -> dict[str, np.ndarray]:
        """The graph's inputs for ``rows``; with ``strict``, a missing or unknown column is
        an error (a training table's extra columns are not)."""
        names = {f.name for f in self.features}
        out: dict[str, list[Any]] = {n: [] for f in self.features for n in f.inputs}
        for i, row in enumerate(rows):
            if strict:
                unknown = [k for k in row if k not in names]
                if unknown:
                    raise ValidationFailed(
                        f"rows.{i}: unknown column {unknown[0]!r}; this model reads "
                        f"{', '.join(sorted(names))}.",
                        field=f"rows.{i}.{unknown[0]}",
                    )
            for f in self.features:
                if f.name not in row:
                    if strict:
                        raise ValidationFailed(
                            f"rows.{i}: no {f.name!r} (send null for a missing value).",
                            field=f"rows.{i}.{f.name}",
                        )
                    value = None
                else:
                    value = row[f.name]
                try:
                    values = read_value(value, f.kind)
                except ValueError as exc:
                    raise ValidationFailed(
                        f"rows.{i}.{f.name}: {exc}", field=f"rows.{i}.{f.name}"
                    ) from None
                for name, v in zip(f.inputs, values, strict=True):
                    out[name].append(v)
        arrays: dict[str, np.ndarray] = {}
        for f in self.features:
            for name in f.inputs:
                if f.kind == "categorical":
                    arrays[name] = np.array(out[name], dtype=object).reshape(-1, 1)
                else:
                    arrays[name] = np.array(out[name], dtype=np.float32).reshape(-1, 1)
        return arrays


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING


def read_value(value: Any, kind: str) -> list[Any]:
    """One cell as its graph inputs (see the module docstring); ValueError if unreadable."""
    if kind == "categorical":
        return ["" if is_missing(value) else str(value).strip()]
    if kind in DATE_PARTS:
        parts = DATE_PARTS[kind]
        if is_missing(value):
            return [math.nan] * len(parts)
        when = read_date(value)
        table = {
            "year": when.year,
            "month": when.month,
            "day": when.day,
            "dayofweek": when.weekday(),
            "hour": when.hour,
        }
        return [float(table[p]) for p in parts]
    if is_missing(value):
        return [math.nan]
    if kind == "boolean":
        if isinstance(value, bool):
            return [1.0 if value else 0.0]
        word = str(value).strip().lower()
        if word in TRUE_WORDS:
            return [1.0]
        if word in FALSE_WORDS:
            return [0.0]
        raise ValueError(f"{value!r} is not a yes/no value.")
    return [read_number(value)]


def read_number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = str(value).strip()
        if text.endswith("%"):
            text = text[:-1].strip()
        text = CURRENCY.sub(r"\1", text)
        if THOUSANDS.match(text):
            text = text.replace(",", "")
        if not PLAIN_NUMBER.match(text):
            raise ValueError(f"{value!r} is not a number.")
        number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number.")
    return number


def read_date(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if hasattr(value, "to_pydatetime"):  # a pandas Timestamp
        return value.to_pydatetime()
    text = str(value).strip()
    found = US_DATE.match(text)
    if found:
        month, day, year, hour, minute, second = found.groups()
        return datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
        )
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not a date (2024-03-01 or 03/01/2024).") from None
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when
