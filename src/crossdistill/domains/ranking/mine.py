"""Hard-negative mining with the teacher: keep the negatives a cross-encoder finds hardest.

Each query of a ranking split arrives with a pool of candidate negatives (for WordNet: other
senses of its words, linked synsets, random entries). The teacher scores the whole pool and the
query keeps its positive and the ``keep`` negatives it scores highest — the negatives that teach
a student most (TAS-B, Hofstätter et al., SIGIR 2021; Augmented SBERT, Thakur et al., NAACL
2021, label with the cross-encoder in the same spirit). A negative the teacher scores *above*
the positive is more likely an unlabelled positive than a hard negative (RocketQA's denoising,
Qu et al., NAACL 2021), so those come last: taken only when too few others remain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from crossdistill._util.progress import ProgressBar
from crossdistill.data.sources import load_source
from crossdistill.data.split import RankingSplit
from crossdistill.domains.ranking.data import write_triples
from crossdistill.domains.ranking.retrieval import Scorer, cross_scorer
from crossdistill.errors import ConfigError, KnowledgeError
from crossdistill.runs import load_student


def choose_negatives(scores: torch.Tensor, keep: int) -> list[int]:
    """Candidate columns (``≥ 1``) of the ``keep`` negatives to keep from one query's ``(C,)``
    scores (column 0 the positive): those below the positive, hardest first, then those above
    it, least suspicious first."""
    positive = float(scores[0])
    negatives = sorted(range(1, len(scores)), key=lambda j: -float(scores[j]))
    below = [j for j in negatives if float(scores[j]) <= positive]
    above = [j for j in reversed(negatives) if float(scores[j]) > positive]
    return (below + above)[:keep]


def mine_negatives(
    score: Scorer,
    split: RankingSplit,
    keep: int,
    batch_size: int = 16,
    progress: bool = True,
) -> Iterator[tuple[str, list[str], list[float]]]:
    """``(query, [positive, negative_1..keep], teacher scores of those)`` for every query of
    ``split``, in order. ``score(queries, rows)`` gives the teacher's ``(B, C)`` scores."""
    if int(keep) != keep or not 1 <= keep < split.num_candidates:
        raise ConfigError(
            f"mine: keep must be between 1 and the pool's {split.num_candidates - 1} negatives, "
            f"got {keep!r}",
            hint="give the data source more negatives per query (the pool) than you keep",
        )
    with ProgressBar(progress, "mine", total=len(split), unit="queries") as bar:
        for start in range(0, len(split), batch_size):
            queries = split.queries[start : start + batch_size]
            rows = split.candidates[start : start + batch_size]
            scores = score(queries, rows).float().cpu()
            if scores.shape != (len(rows), split.num_candidates) or not scores.isfinite().all():
                raise KnowledgeError(
                    f"mine: the teacher gave scores of shape {tuple(scores.shape)} (finite: "
                    f"{bool(scores.isfinite().all())}) for {len(rows)} queries of "
                    f"{split.num_candidates} candidates",
                    hint="the teacher must output finite `scores` (B, C) for ranking views",
                )
            for query, row, s in zip(queries, rows, scores, strict=True):
                picks = [0, *choose_negatives(s, keep)]
                yield query, [row[j] for j in picks], [float(s[j]) for j in picks]
            bar.advance(len(rows))


def mine_to_file(
    teacher_run: str | Path,
    out: str | Path,
    source: str,
    params: dict[str, Any],
    keep: int,
    split: str = "train",
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Mine ``source``'s ``split`` (built with ``params``; each query's candidates are the
    pool) with the cross-encoder student of the run ``teacher_run``, writing a triples file
    ``out``. Returns a summary: queries, pool and kept sizes, the teacher's mean margin between
    the positive and the kept negatives, and how many kept negatives it scored above the
    positive."""
    data = load_source(source, split, **params)
    if not isinstance(data, RankingSplit):
        raise ConfigError(
            f"mine: data source {source!r} gives {type(data).__name__}, not ranking data",
            hint="mine from a ranking source (wordnet_ranking, triples) with a pool of negatives",
        )
    scorer = cross_scorer(load_student(teacher_run))
    margins: list[float] = []
    above = 0

    def rows() -> Iterator[tuple[str, list[str]]]:
        nonlocal above
        for query, candidates, scores in mine_negatives(scorer, data, keep, batch_size, progress):
            margins.extend(scores[0] - s for s in scores[1:])
            above += sum(s > scores[0] for s in scores[1:])
            yield query, candidates

    n = write_triples(out, rows())
    return {
        "triples": str(out),
        "queries": n,
        "pool": data.num_candidates - 1,
        "kept": keep,
        "mean_teacher_margin": sum(margins) / max(len(margins), 1),
        "kept_above_positive": above,
    }
