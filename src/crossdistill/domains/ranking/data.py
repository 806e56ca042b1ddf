"""Ranking data: queries with candidate lists, and retrieval sets of queries against a corpus.

A ranking example is ``{"id", "views": {name: {"query": str, "candidates": (str, ...)}},
"target": 0, "aug"}``: each query comes with the same number ``C`` of candidates, the positive
first (the layout of sentence-transformers' ``(query, positive, negative_1, ...)`` columns and of
the ranking losses' ``(B, C)`` scores), so ``target`` is always 0 and a model's ``(B, C)`` scores
are class logits whose correct class is 0. The default collate turns a batch's view into
``{"query": [B str], "candidates": [C lists of B str]}``; :func:`ranking_columns` gives it back as
rows.

Triples files (:func:`read_triples`, :func:`write_triples`) are JSON lines
``{"query": str, "positive": str, "negatives": [str, ...]}``: the format of the ``triples`` data
source and of what ``crossdistill mine`` writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdistill._util.files import atomic_path
from crossdistill.data.split import RankingSplit
from crossdistill.errors import DataError


def ranking_columns(view: Any, who: str = "model") -> tuple[list[str], list[list[str]]]:
    """A collated ranking view ``{"query": [B str], "candidates": [C lists of B str]}`` as
    ``(queries, rows)``: the ``B`` queries and ``B`` rows of ``C`` candidate texts."""
    if not isinstance(view, Mapping) or not {"query", "candidates"} <= set(view):
        keys = f" with keys {sorted(view)}" if isinstance(view, Mapping) else ""
        raise DataError(
            f"{who} takes ranking batches {{'query': [str], 'candidates': [[str]]}}, got "
            f"{type(view).__name__}{keys}",
            hint="give it a ranking data source (triples, wordnet_ranking)",
        )
    queries = list(view["query"])
    columns = [list(c) for c in view["candidates"]]
    if not columns or any(len(c) != len(queries) for c in columns):
        raise DataError(
            f"{who}: a ranking batch of {len(queries)} queries needs candidate columns of "
            f"{len(queries)} texts each, got {[len(c) for c in columns]}",
            hint="build views with crossdistill.domains.ranking.data.ranking_view(queries, rows)",
        )
    return queries, [list(r) for r in zip(*columns, strict=True)]


def ranking_view(queries: Sequence[str], rows: Sequence[Sequence[str]]) -> dict[str, Any]:
    """The collated view of ``queries`` with their candidate ``rows`` (inverse of
    :func:`ranking_columns`), for calling a ranking model directly."""
    if len(queries) != len(rows) or len({len(r) for r in rows}) > 1:
        raise DataError(
            f"{len(queries)} queries with candidate rows of lengths "
            f"{sorted({len(r) for r in rows})}",
            hint="give every query the same number of candidates",
        )
    return {"query": list(queries), "candidates": [list(c) for c in zip(*rows, strict=True)]}


# ------------------------------------------------------------------------- triples files


def read_triples(path: str | Path, negatives: int | None = None) -> RankingSplit:
    """A triples file (JSON lines ``{"query", "positive", "negatives": [...]}``) as a split.

    ``negatives`` keeps the first that many of each line's negatives (every line must have at
    least as many); without it, every line must have the same number.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"triples file {path} does not exist", hint="check the path")
    queries: list[str] = []
    candidates: list[list[str]] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = _parse_triple(line, f"{path}:{number}")
            negs = row["negatives"]
            want = negatives if negatives is not None else len(negs)
            if candidates and negatives is None and len(negs) != len(candidates[0]) - 1:
                raise DataError(
                    f"{path}:{number}: {len(negs)} negatives, earlier lines have "
                    f"{len(candidates[0]) - 1}",
                    hint="set the source's `negatives:` to keep the same number from every line",
                )
            if len(negs) < want or want < 1:
                raise DataError(
                    f"{path}:{number}: {len(negs)} negatives, {want} wanted",
                    hint="every line needs at least `negatives` negatives (and at least one)",
                )
            queries.append(row["query"])
            candidates.append([row["positive"], *negs[:want]])
    if not queries:
        raise DataError(f"triples file {path} holds no triples")
    return RankingSplit(queries, candidates, name=str(path))


def _parse_triple(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not a JSON line: {exc}") from None
    ok = (
        isinstance(row, dict)
        and isinstance(row.get("query"), str)
        and isinstance(row.get("positive"), str)
        and isinstance(row.get("negatives"), list)
        and all(isinstance(n, str) for n in row["negatives"])
    )
    if not ok:
        raise DataError(
            f"{where}: expected {{'query': str, 'positive': str, 'negatives': [str, ...]}}",
            hint="one JSON object per line",
        )
    return row


def write_triples(path: str | Path, rows: Iterable[tuple[str, Sequence[str]]]) -> int:
    """Write ``(query, [positive, negative, ...])`` rows as a triples file, atomically (a
    half-written file never appears under ``path``); returns the number of rows."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for query, candidates in rows:
            record = {"query": query, "positive": candidates[0], "negatives": list(candidates[1:])}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


# ------------------------------------------------------------------------- retrieval sets


@dataclass
class RetrievalSet:
    """Queries to search a corpus with; ``relevant[i]`` is the index of query ``i``'s relevant
    document in ``corpus`` (one per query)."""

    queries: list[str]
    corpus: list[str]
    relevant: list[int]
    name: str

    def __post_init__(self) -> None:
        if len(self.queries) != len(self.relevant):
            raise DataError(
                f"retrieval set {self.name!r}: {len(self.queries)} queries, "
                f"{len(self.relevant)} relevance labels"
            )
        bad = [r for r in self.relevant if not 0 <= r < len(self.corpus)]
        if bad:
            raise DataError(
                f"retrieval set {self.name!r}: relevant document {bad[0]} is outside the corpus "
                f"of {len(self.corpus)}"
            )
