"""Reading a table: CSV, TSV, JSONL or Parquet into a pandas DataFrame, with errors that
name the row and the column.

Key rules: text formats are read as strings (``dtype=str``, no value turned into NaN by
pandas' guesses); what counts as missing and how a column parses is
:mod:`fnbundle.tabular.schema`'s decision, the same for every format. Parquet keeps its
column types. A file that is empty, has no header, has ragged rows or is not one of the
four formats is an :class:`TableError` (400) that says which row. Importing this module
does not import pandas.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fnbundle.errors import FnbError

if TYPE_CHECKING:
    import pandas as pd

Format = Literal["csv", "tsv", "jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "tsv", "jsonl", "parquet")
SUFFIXES: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
PARQUET_MAGIC = b"PAR1"
MAX_COLUMNS = 2000  # wider than any table a model here trains on; a guard against junk


class TableError(FnbError):
    """A file that cannot be read as a table (the message says where and why)."""

    status, type = 400, "invalid_dataset"


class ExtraMissing(FnbError):
    """This installation lacks the optional packages a feature needs."""

    status, type = 501, "not_installed"


def require_pandas() -> None:
    """ExtraMissing (501) instead of an ImportError (a 500) where pandas is not installed."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        raise ExtraMissing(
            "Tables need the tabular extra, not installed here: pip install 'fnbundle[tabular]'."
        ) from None


def sniff_format(path: Path, name: str | None = None) -> Format:
    """The format by the file name's suffix, else by its first bytes."""
    suffix = Path(name or path.name).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    with path.open("rb") as f:
        head = f.read(64 * 1024)
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if not head.strip():
        raise TableError(f"{name or path.name} is empty.", field="file")
    try:
        text = head.decode("utf-8")
        binary = "\x00" in text
    except UnicodeDecodeError as exc:
        text, binary = head[: exc.start].decode("utf-8"), exc.start < 3
    if binary or not text.strip():
        raise TableError(
            f"{name or path.name} is neither text nor Parquet: upload a CSV, TSV, JSONL or "
            "Parquet file.",
            field="file",
        )
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    if first.startswith("{"):
        return "jsonl"
    return "tsv" if first.count("\t") > first.count(",") else "csv"


def read_table(path: Path, fmt: Format | None = None, *, name: str | None = None) -> pd.DataFrame:
    """The table in ``path`` (format from ``fmt``, else sniffed); TableError if it is not one."""
    require_pandas()
    import pandas as pd

    label = name or path.name
    fmt = fmt or sniff_format(path, name)
    if path.stat().st_size == 0:
        raise TableError(f"{label} is empty.", field="file")
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "jsonl":
            frame = _read_jsonl(path, label)
        else:
            _check_header(path, "\t" if fmt == "tsv" else ",", label)
            frame = pd.read_csv(
                path,
                sep="\t" if fmt == "tsv" else ",",
                dtype=str,
                keep_default_na=False,
                skip_blank_lines=True,
                encoding="utf-8",
                encoding_errors="strict",
            )
    except TableError:
        raise
    except UnicodeDecodeError as exc:
        raise TableError(
            f"{label} is not UTF-8 text (byte {exc.start}): save it as UTF-8 or Parquet.",
            field="file",
        ) from None
    except pd.errors.EmptyDataError:
        raise TableError(f"{label} has no header row and no data.", field="file") from None
    except pd.errors.ParserError as exc:
        raise TableError(
            f"{label} is not a {fmt.upper()} table: {_parser_message(exc)}", field="file"
        ) from None
    except (OSError, ValueError) as exc:
        raise TableError(
            f"{label} could not be read as {fmt.upper()}: {exc}", field="file"
        ) from None
    return check_frame(frame, label)


def check_frame(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    """Refuse what no schema can come from: no rows, no or duplicate column names."""
    if frame.shape[1] == 0:
        raise TableError(f"{label} has no columns.", field="file")
    if frame.shape[1] > MAX_COLUMNS:
        raise TableError(
            f"{label} has {frame.shape[1]} columns; at most {MAX_COLUMNS}.", field="file"
        )
    if len(frame) == 0:
        raise TableError(f"{label} has a header but no rows.", field="file")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _check_header(path: Path, sep: str, label: str) -> None:
    """Every column named, no name twice (pandas would rename a second ``a`` to ``a.1``)."""
    with path.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f, delimiter=sep), [])
    names = [n.strip() for n in header]
    if not any(names):
        raise TableError(f"{label} has no header row: its first line is empty.", field="file")
    for i, n in enumerate(names):
        if not n:
            raise TableError(
                f"{label}: column {i + 1} has no name in the header row.", field="file"
            )
        if names.index(n) != i:
            raise TableError(f"{label}: the column name {n!r} appears twice.", field="file")


def _read_jsonl(path: Path, label: str) -> pd.DataFrame:
    import pandas as pd

    rows: list[dict] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TableError(
                    f"{label}, line {number}: not JSON ({exc.msg}).", field="file"
                ) from None
            if not isinstance(row, dict):
                raise TableError(
                    f"{label}, line {number}: a JSONL table has one object per line, "
                    f"not {type(row).__name__}.",
                    field="file",
                )
            nested = next((k for k, v in row.items() if isinstance(v, dict | list)), None)
            if nested is not None:
                raise TableError(
                    f"{label}, line {number}: column {nested!r} holds a nested value; "
                    "a table's cells are strings, numbers, booleans or null.",
                    field="file",
                )
            rows.append(row)
    if not rows:
        raise TableError(f"{label} has no rows.", field="file")
    return pd.DataFrame.from_records(rows)


def _parser_message(exc: Exception) -> str:
    """pandas' 'Expected 5 fields in line 7, saw 6' as 'row 7 has 6 fields, the header 5'."""
    text = str(exc).strip()
    found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if found:
        want, line, saw = found.groups()
        return f"line {line} has {saw} fields where the header has {want}."
    return text.splitlines()[-1] if text else type(exc).__name__
