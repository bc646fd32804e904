"""``POST /v1/predict``: request and response.

Rows come as a list of objects (``rows``) or as columns (``columns``: name -> list of
values, all of one length); exactly one of the two. A value is a number, a string, a
boolean or null (a missing value, imputed as in training).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fnbundle.errors import LimitExceeded, ValidationFailed
from fnbundle.settings import Settings

Cell = float | int | str | bool | None


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=200, description="A model name or version id.")
    rows: list[dict[str, Cell]] | None = Field(None, description="One object per row.")
    columns: dict[str, list[Cell]] | None = Field(None, description="One list per column.")

    @model_validator(mode="after")
    def _one_shape(self) -> PredictRequest:
        if (self.rows is None) == (self.columns is None):
            raise ValueError("send exactly one of 'rows' or 'columns'")
        if self.columns is not None and len({len(v) for v in self.columns.values()}) > 1:
            raise ValueError("every column in 'columns' needs the same number of values")
        return self

    def as_rows(self) -> list[dict[str, Any]]:
        if self.rows is not None:
            return self.rows
        columns = self.columns or {}
        length = len(next(iter(columns.values()), []))
        return [{name: values[i] for name, values in columns.items()} for i in range(length)]


class RowPrediction(BaseModel):
    prediction: str | float = Field(description="The class (classification) or the value.")
    probabilities: dict[str, float] | None = Field(
        None, description="Each class's probability (classification only)."
    )


class PredictResponse(BaseModel):
    model: str = Field(description="The version id that answered.")
    task: str = Field(description="classification or regression.")
    predictions: list[RowPrediction]


def check_limits(request: PredictRequest, settings: Settings) -> None:
    rows = request.as_rows()
    if not rows:
        raise LimitExceeded("Send at least one row.", field="rows")
    if len(rows) > settings.max_rows:
        raise LimitExceeded(
            f"{len(rows)} rows is over the limit of {settings.max_rows} per request.", field="rows"
        )
    for i, row in enumerate(rows):
        for name, value in row.items():
            if isinstance(value, str) and len(value) > settings.max_text_chars:
                raise LimitExceeded(
                    f"rows.{i}.{name} is over {settings.max_text_chars} characters.",
                    field=f"rows.{i}.{name}",
                )
        if len(row) > 2000:
            raise ValidationFailed(f"rows.{i} has {len(row)} columns.", field=f"rows.{i}")
