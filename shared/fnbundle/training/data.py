"""Text datasets for training: CSV or JSONL with a text and a label column.

Key rule: every problem is reported with what and where (file, row, column) before any
model is touched; a path must sit inside the allowed data roots.
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fnbundle.errors import DatasetError, NotFound
from fnbundle.loading import resolve_inside_roots

MAX_ROWS = 1_000_000


@dataclass
class TextDataset:
    texts: list[str]
    labels: list[str]
    splits: list[str] = field(default_factory=list)  # "train" / "test" when the file has them

    @property
    def label_names(self) -> list[str]:
        return sorted(set(self.labels))


def _rows(path: Path) -> list[dict[str, object]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows: list[dict[str, object]] = list(reader)
            if reader.fieldnames is None:
                raise DatasetError(f"{path.name} is empty.", field="data")
            return rows
    if suffix in {".jsonl", ".ndjson"}:
        rows = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise DatasetError(
                        f"{path.name} line {n} is not JSON: {exc}", field="data"
                    ) from None
                if not isinstance(row, dict):
                    raise DatasetError(f"{path.name} line {n} is not a JSON object.", field="data")
                rows.append(row)
        return rows
    raise DatasetError(
        f"{path.name}: unsupported format {suffix!r}; use .csv or .jsonl.", field="data"
    )


def load_text_dataset(
    data: str | Path,
    roots: list[Path],
    *,
    text_column: str = "text",
    label_column: str = "label",
) -> TextDataset:
    path = resolve_inside_roots(data, roots, field="data")
    if path.is_dir():
        raise DatasetError(f"Dataset {data} is a folder; name a .csv or .jsonl file.", field="data")
    if not path.is_file():
        raise NotFound(f"Dataset {data} does not exist.", field="data")
    try:
        rows = _rows(path)
    except UnicodeDecodeError:
        raise DatasetError(f"{path.name} is not UTF-8 text.", field="data") from None
    except csv.Error as exc:  # a NUL byte, a field over the csv module's size limit, ...
        raise DatasetError(
            f"{path.name} is not a readable CSV file: {exc}.", field="data"
        ) from None
    except OSError as exc:
        raise DatasetError(
            f"{path.name} cannot be read: {exc.strerror or type(exc).__name__}.", field="data"
        ) from None
    if not rows:
        raise DatasetError(f"{path.name} has no rows.", field="data")
    if len(rows) > MAX_ROWS:
        raise DatasetError(f"{path.name} has over {MAX_ROWS} rows.", field="data")
    columns = set(rows[0])
    for needed in (text_column, label_column):
        if needed not in columns:
            raise DatasetError(
                f"{path.name} has no {needed!r} column (columns: {', '.join(sorted(map(str, columns)))}).",
                field="data",
            )
    texts, labels, splits = [], [], []
    has_split = "split" in columns
    for n, row in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
        text, label = row.get(text_column), row.get(label_column)
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f"{path.name} row {n}: empty {text_column!r}.", field="data")
        if label is None or str(label).strip() == "":
            raise DatasetError(f"{path.name} row {n}: empty {label_column!r}.", field="data")
        texts.append(text.strip())
        labels.append(str(label).strip())
        if has_split:
            split = str(row.get("split") or "").strip().lower()
            if split not in {"train", "test", "eval", "validation"}:
                raise DatasetError(
                    f"{path.name} row {n}: split must be train or test, not {split!r}.",
                    field="data",
                )
            splits.append("train" if split == "train" else "test")
    counts = Counter(labels)
    if len(counts) < 2:
        raise DatasetError(
            f"{path.name} has {len(counts)} distinct label(s); a classifier needs at least 2.",
            field="data",
        )
    return TextDataset(texts, labels, splits)


def stratified_split(
    indices: list[int], labels: list[str], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split ``indices`` into (keep, held) with ``fraction`` of every label held out;
    every label keeps at least one row on the ``keep`` side."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i in indices:
        by_label.setdefault(labels[i], []).append(i)
    keep: list[int] = []
    held: list[int] = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n_held = min(len(group) - 1, round(len(group) * fraction))
        held += group[:n_held]
        keep += group[n_held:]
    if not held:
        raise DatasetError("Too few rows to hold out an evaluation split.", field="data")
    return sorted(keep), sorted(held)


@dataclass
class Splits:
    train: list[int]
    validation: list[int]  # early stopping looks at this
    test: list[int]  # reported metrics come from this


def make_splits(dataset: TextDataset, eval_fraction: float, seed: int) -> Splits:
    """With a ``split`` column, rows marked test are held out for the reported metrics and
    the validation rows for early stopping come out of the training rows; without one, a
    stratified ``eval_fraction`` serves as both."""
    everything = list(range(len(dataset.texts)))
    if dataset.splits:
        train = [i for i in everything if dataset.splits[i] == "train"]
        test = [i for i in everything if dataset.splits[i] == "test"]
        if train and test:
            train, validation = stratified_split(train, dataset.labels, eval_fraction, seed)
            return Splits(train, validation, test)
    train, held = stratified_split(everything, dataset.labels, eval_fraction, seed)
    return Splits(train, held, held)
