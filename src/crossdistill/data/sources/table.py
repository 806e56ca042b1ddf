"""``table``: your own rows, a CSV file or JSON lines, each row one example.

Number columns become one float32 feature tensor, a text column a text field, a label column
class targets; a group column keeps a user's (or a subject's) rows in one split.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill.data.grouping import assign_by_column, assign_by_hash, select
from crossdistill.data.sources.base import DATA_SOURCES
from crossdistill.data.split import Split
from crossdistill.errors import ConfigError, DataError

JSON_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson", ".json")
TAB_SUFFIXES: tuple[str, ...] = (".tsv", ".tab")


def _csv_rows(path: Path, delimiter: str, columns: list[str]) -> Iterator[tuple[int, dict]]:
    # utf-8-sig: a byte-order mark (Excel writes one) must not become part of the first name
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(
                f"table: {path} has no column {', '.join(map(repr, missing))}; its columns are "
                f"{header}",
                hint="the first line of a CSV names the columns"
                + ("" if len(header) > 1 else f"; is the delimiter {delimiter!r} right?"),
            )
        for row in reader:
            yield reader.line_num, row


def _json_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"table: {path}, line {number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(
                    f"table: {path}, line {number}: a JSON line must be an object of columns, "
                    f"got {type(row).__name__}"
                )
            yield number, row


def _cell(path: Path, number: int, row: dict, column: str) -> Any:
    """The value of ``column`` in a row; a missing or empty one is a DataError naming it."""
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(
            f"table: {path}, line {number}, column {column!r}: the value is missing",
            hint="every row needs a value in every column the source reads",
        )
    return value


def _number(path: Path, number: int, row: dict, column: str) -> float:
    value = _cell(path, number, row, column)
    try:
        if isinstance(value, bool):  # JSON true/false are not measurements
            raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"table: {path}, line {number}, column {column!r}: {value!r} is not a number",
            hint="feature columns hold numbers; read a text column with `text`",
        ) from None
    if not math.isfinite(out):
        raise DataError(
            f"table: {path}, line {number}, column {column!r}: {value!r} is not a finite number",
            hint="fill in or drop rows with missing measurements",
        )
    return out


def _label(path: Path, number: int, row: dict, column: str) -> str:
    value = _cell(path, number, row, column)
    if isinstance(value, (dict, list)):
        raise DataError(
            f"table: {path}, line {number}, column {column!r}: expected a label, got "
            f"{type(value).__name__}"
        )
    return str(value).strip()


def _class_order(labels: set[str]) -> list[str]:
    """Class names sorted: numerically when every label is an integer (so "10" follows "9"),
    else as strings."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


@dataclass
class _Table:
    """The columns a source reads, one entry per row."""

    lines: list[int] = field(default_factory=list)  # each row's line in the file
    numbers: list[list[float]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: dict[str, list[str]] = field(default_factory=dict)  # target, group, split columns


def _read(
    path: Path,
    rows: Iterator[tuple[int, dict]],
    features: list[str],
    text: str | None,
    labels: list[str],
) -> _Table:
    table = _Table(labels={c: [] for c in labels})
    try:
        for number, row in rows:
            table.lines.append(number)
            table.numbers.append([_number(path, number, row, c) for c in features])
            if text is not None:
                value = _cell(path, number, row, text)
                table.texts.append(value if isinstance(value, str) else json.dumps(value))
            for column in labels:
                table.labels[column].append(_label(path, number, row, column))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"table: {path}: not UTF-8 after line {len(table.lines)} ({exc.reason})",
            hint=f"re-encode it, e.g. iconv -f LATIN1 -t UTF-8 {path} > fixed.csv",
        ) from None
    except csv.Error as exc:
        raise DataError(
            f"table: {path}: cannot read after line {len(table.lines)}: {exc}"
        ) from None
    if not table.lines:
        raise DataError(f"table: {path} has no rows")
    return table


@DATA_SOURCES.register("table")
def load(
    split: str,
    path: str,
    features: list[str] | None = None,
    text: str | None = None,
    target: str | None = None,
    group: str | None = None,
    split_column: str | None = None,
    sides: dict[str, str | list[str]] | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    delimiter: str | None = None,
) -> Split:
    """The ``split`` of the rows of ``path``: CSV (``.tsv`` tab-separated, other delimiters with
    ``delimiter``), or JSON lines when the name ends in ``.jsonl``, ``.ndjson`` or ``.json``.

    ``features``: number columns, one float32 field ``input`` of shape ``(N, F)``. ``text``: a
    column of text, the field ``text``. With both, ``sides`` says which each view reads.
    ``target``: the label column; its distinct values are the class names, sorted (numerically
    when all are integers), and the targets their int64 indices (over the whole file, so every
    split numbers the classes alike). A row whose value is missing, empty, not a number (for a
    feature) or not finite is an error naming the file, line and column.

    The split: ``split_column`` names it per row (``train``, ``val``, ``test``); else a stable
    hash of the row's ``group`` (a user, a subject) or, without one, of its features and text,
    puts ``test_fraction`` of the groups in ``test`` and ``val_fraction`` in ``val``. No group
    is in two splits. ``meta["line"]`` is each example's line in the file.
    """
    if not features and text is None:
        raise ConfigError(
            "table: say which columns the models read",
            hint="features: [col1, col2] (numbers) and/or text: column",
        )
    if features and text is not None and not sides:
        raise ConfigError(
            "table: with features and text there are two fields, input and text: say which one "
            "each view reads",
            hint="sides: {teacher: text, student: input}",
        )
    file = Path(path).expanduser()
    where = f"table: {file}"
    if not file.is_file():
        raise DataError(f"{where} does not exist", hint="`path` is a CSV or JSON-lines file")
    features = list(features or [])
    labels = list(dict.fromkeys(c for c in (target, group, split_column) if c is not None))
    wanted = [*features, *([text] if text is not None else []), *labels]
    if file.suffix.lower() in JSON_SUFFIXES:
        rows = _json_rows(file)
    else:
        sep = delimiter or ("\t" if file.suffix.lower() in TAB_SUFFIXES else ",")
        rows = _csv_rows(file, sep, wanted)
    table = _read(file, rows, features, text, labels)
    lines, numbers, texts = table.lines, table.numbers, table.texts
    targets, groups, splits = (table.labels.get(c, []) for c in (target, group, split_column))
    if split_column is not None:
        assignment = assign_by_column(splits, groups or None, where)
    else:
        # without groups a row is its own group, keyed by what the models read: a duplicate
        # row is never in train and test
        keys = groups or [repr((x, texts[i] if texts else None)) for i, x in enumerate(numbers)]
        assignment = assign_by_hash(keys, test_fraction, val_fraction, where)
    index = select(assignment, split, where)
    fields: dict[str, Any] = {}
    if features:
        fields["input"] = torch.tensor([numbers[i] for i in index], dtype=torch.float32)
    if text is not None:
        fields["text"] = [texts[i] for i in index]
    class_names = _class_order(set(targets)) if target is not None else []
    position = {name: j for j, name in enumerate(class_names)}
    return Split(
        fields,
        name=f"table/{split}",
        targets=(
            torch.tensor([position[targets[i]] for i in index], dtype=torch.int64)
            if target is not None
            else None
        ),
        class_names=class_names,
        sides=sides,  # type: ignore[arg-type]  # Split makes a list side a tuple
        groups=[groups[i] for i in index] if group is not None else None,
        meta={"line": np.array([lines[i] for i in index], dtype=np.int64)},
    )
