"""Retrieval evaluation: a dual encoder searching a corpus, and a cross-encoder re-ranking it.

:func:`dense_search` embeds the corpus once (the *index*; its build time is measured), then
ranks every document for every query by cosine similarity. :func:`rerank` has a cross-encoder
score each query's first ``depth`` documents and reorders them. :func:`ranking_metrics` scores a
ranking against the one relevant document per query: R@1, R@10, MRR@10, nDCG@10 (and R@depth,
the ceiling of a re-ranker).

Latency is per query, as a search service sees it: one query at a time, ``ms_per_query`` the
mean over a fixed sample of queries of the wall time from the query string to its ranked list
(for re-ranking: first-stage search plus the cross-encoder on that query's ``depth`` pairs, in
one batch). Quality is computed in large batches, which gives the same rankings faster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydantic
import torch

from crossdistill._util.progress import ProgressBar
from crossdistill.domains.ranking.data import RetrievalSet
from crossdistill.domains.ranking.wordnet_ranking import wordnet_retrieval_set
from crossdistill.domains.text.suite.encoders import TextEncoder, load_encoder
from crossdistill.errors import ConfigError
from crossdistill.evaluate.embeddings import unit_rows
from crossdistill.runs import load_student
from crossdistill.suites import SUITES, Suite

CUTOFF = 10  # MRR@10, nDCG@10


def ranks_of(rankings: np.ndarray, relevant: Sequence[int]) -> np.ndarray:
    """The 1-based rank of each query's relevant document in its ranking row, ``inf`` when the
    row does not contain it."""
    rankings = np.asarray(rankings)
    hits = rankings == np.asarray(relevant, dtype=np.int64)[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1) + 1.0, np.inf)


def ranking_metrics(rankings: np.ndarray, relevant: Sequence[int]) -> dict[str, float]:
    """R@1, R@10, MRR@10, nDCG@10 and R@depth (``depth`` = the rankings' width) of rankings
    ``(queries, depth)`` of corpus indices, best first, with one relevant document per query
    (nDCG's ideal is then 1: the relevant document first)."""
    ranks = ranks_of(rankings, relevant)
    within = ranks <= CUTOFF
    return {
        "r_at_1": float(np.mean(ranks <= 1)),
        "r_at_10": float(np.mean(within)),
        "mrr_at_10": float(np.mean(np.where(within, 1.0 / ranks, 0.0))),
        "ndcg_at_10": float(np.mean(np.where(within, 1.0 / np.log2(ranks + 1.0), 0.0))),
        f"r_at_{np.shape(rankings)[1]}": float(np.mean(np.isfinite(ranks))),
    }


@dataclass
class Search:
    """What a search produced: rankings ``(queries, depth)``, the measured times, metrics."""

    rankings: np.ndarray
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)


def _top(scores: np.ndarray, depth: int) -> np.ndarray:
    """The ``depth`` best columns of each row, best first (ties: the lower index first)."""
    depth = min(depth, scores.shape[1])
    part = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _check(rset: RetrievalSet, depth: int, latency_queries: int) -> None:
    if int(depth) != depth or depth < CUTOFF:
        raise ConfigError(f"retrieval depth must be an integer >= {CUTOFF}, got {depth!r}")
    if int(latency_queries) != latency_queries or latency_queries < 0:
        raise ConfigError(
            f"latency_queries must be a non-negative integer, got {latency_queries!r}"
        )
    if not rset.queries or not rset.corpus:
        raise ConfigError(f"retrieval set {rset.name!r} has no queries or no documents")


def _latency_sample(n_queries: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_queries - 1, min(k, n_queries)).round().astype(np.int64))


def dense_search(
    encoder: TextEncoder,
    rset: RetrievalSet,
    depth: int = 100,
    latency_queries: int = 50,
    batch_size: int = 128,
    latency_threads: int | None = None,
) -> Search:
    """Rank the corpus for every query by the cosine of ``encoder``'s embeddings.

    Timings: ``index_build_s`` (embedding the corpus), ``ms_per_query`` (one query at a time:
    embed it, score the index, take the top ``depth``; mean over ``latency_queries`` queries
    spread over the set, after one warm-up query; with ``latency_threads`` torch threads).
    """
    _check(rset, depth, latency_queries)
    start = time.perf_counter()
    index = unit_rows(encoder.encode(rset.corpus, batch_size=batch_size))
    build_s = time.perf_counter() - start
    queries = unit_rows(encoder.encode(rset.queries, batch_size=batch_size))
    rankings = np.concatenate(
        [_top(queries[i : i + 256] @ index.T, depth) for i in range(0, len(queries), 256)]
    )

    def one(i: int) -> np.ndarray:
        q = unit_rows(encoder.encode([rset.queries[i]], batch_size=1))
        return _top(q @ index.T, depth)[0]

    latency = _time_queries(one, len(rset.queries), latency_queries, latency_threads)
    timings = {"index_build_s": build_s, **latency}
    return Search(rankings, ranking_metrics(rankings, rset.relevant), timings)


def _time_queries(
    one: Callable[[int], Any], n: int, k: int, threads: int | None
) -> dict[str, float]:
    """Mean milliseconds of ``one(i)`` over ``k`` queries spread over ``n``, with ``threads``
    torch threads (default: as set)."""
    sample = _latency_sample(n, k)
    if not len(sample) or k == 0:
        return {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        one(int(sample[0]))  # warm-up: first-call allocations are not a query's cost
        start = time.perf_counter()
        for i in sample:
            one(int(i))
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return {"ms_per_query": 1000 * elapsed / len(sample)}


# (queries, rows of candidates) -> (B, C) scores: a cross-encoder, for re-ranking and mining
Scorer = Callable[[list[str], list[list[str]]], torch.Tensor]


def cross_scorer(model: torch.nn.Module) -> Scorer:
    """``score(queries, rows) -> (B, C)`` of a cross-encoder (a ``cross_encoder`` model or a
    Student/Teacher wrapping one), in eval mode, without gradient."""
    inner = getattr(model, "model", model)
    if not hasattr(inner, "score"):
        raise ConfigError(
            f"{type(inner).__name__} is not a cross-encoder (it has no score(queries, rows))",
            hint="give --reranker a run directory of a cross_encoder student",
        )
    inner.eval()

    def score(queries: list[str], rows: list[list[str]]) -> torch.Tensor:
        with torch.no_grad():
            out = inner.score(queries, rows)
        return out["scores"] if isinstance(out, dict) else out

    return score


def rerank(
    score: Scorer,
    rset: RetrievalSet,
    first: Search,
    depth: int = 100,
    latency_queries: int = 20,
    pairs_per_batch: int = 256,
    cached: np.ndarray | None = None,
    progress: bool = True,
    latency_threads: int | None = None,
) -> tuple[Search, np.ndarray]:
    """Re-rank the top ``depth`` of ``first`` with a cross-encoder; returns the search and the
    ``(queries, depth)`` scores (pass them back as ``cached`` to skip recomputing them).

    ``ms_per_query`` is ``first``'s plus the cross-encoder's time on one query's ``depth`` pairs
    (one batch), measured on ``latency_queries`` queries with ``latency_threads`` threads.
    """
    _check(rset, depth, latency_queries)
    top = first.rankings[:, :depth]
    if cached is not None and cached.shape != top.shape:
        raise ConfigError(f"cached re-ranking scores {cached.shape} do not fit {top.shape}")
    scores = cached
    if scores is None:
        scores = np.zeros(top.shape, dtype=np.float32)
        per = max(1, pairs_per_batch // top.shape[1])
        bar = ProgressBar(progress, "re-rank", total=len(top), unit="queries")
        with bar:
            for i in range(0, len(top), per):
                rows = [[rset.corpus[j] for j in r] for r in top[i : i + per]]
                scores[i : i + per] = score(rset.queries[i : i + per], rows).float().cpu().numpy()
                bar.advance(len(rows))
    order = np.argsort(-scores, axis=1, kind="stable")
    rankings = np.take_along_axis(top, order, axis=1)

    def one(i: int) -> None:
        score([rset.queries[i]], [[rset.corpus[j] for j in top[i]]])

    ce = _time_queries(one, len(rset.queries), latency_queries, latency_threads)
    timings = dict(first.timings)
    if "ms_per_query" in ce:
        timings["rerank_ms_per_query"] = ce["ms_per_query"]
        timings["ms_per_query"] = first.timings.get("ms_per_query", math.nan) + ce["ms_per_query"]
    return Search(rankings, ranking_metrics(rankings, rset.relevant), timings), scores


def parameter_count(encoder: Any) -> int | None:
    """Parameters of the torch module behind an encoder (None when there is none to count)."""
    for name in ("module", "model"):
        module = getattr(encoder, name, None)
        if isinstance(module, torch.nn.Module):
            return sum(p.numel() for p in module.parameters())
    return None


def run_retrieval_suite(
    model: str,
    reranker: str | None = None,
    quick: bool = False,
    queries: int | None = None,
    corpus: int | None = None,
    depth: int = 100,
    latency_queries: int = 50,
    progress: bool = True,
) -> dict[str, Any]:
    """WordNet held-out retrieval (see ``wordnet_retrieval_set``): ``model`` (anything
    ``load_encoder`` reads: a run, a dual-encoder run, a sentence-transformers folder, a
    registered name) as a dense retriever, and with ``reranker`` (a cross-encoder run) that
    retriever's top ``depth`` re-ranked. ``quick``: 100 queries against 2,000 entries."""
    rset = wordnet_retrieval_set(
        queries or (100 if quick else 1000), corpus or (2000 if quick else 10_000)
    )
    encoder = load_encoder(model)
    first = dense_search(encoder, rset, depth, latency_queries)
    result: dict[str, Any] = {
        "set": rset.name,
        "dense": {"model": model, **first.metrics, **first.timings},
    }
    result["dense"]["params"] = parameter_count(encoder)
    if reranker is not None:
        cross = load_student(reranker)
        search, _ = rerank(
            cross_scorer(cross), rset, first, depth, min(latency_queries, 20), progress=progress
        )
        result["rerank"] = {"model": reranker, **search.metrics, **search.timings}
        # the system is both models: the retriever finds the candidates the re-ranker reads
        first_params = result["dense"]["params"] or 0
        result["rerank"]["params"] = first_params + sum(p.numel() for p in cross.parameters())
    return result


class RetrievalOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    reranker: str | None = None  # a cross-encoder run re-ranking the retriever's top 100
    quick: bool = False


@SUITES.register("retrieval")
class RetrievalSuite(Suite):
    """WordNet held-out retrieval: R@1, R@10, MRR@10, nDCG@10, ms per query, index build
    time; with ``--reranker`` the retriever's top 100 re-ranked by a cross-encoder too."""

    Options = RetrievalOptions

    def run(self, target: str, options: RetrievalOptions) -> dict[str, Any]:
        return run_retrieval_suite(target, reranker=options.reranker, quick=options.quick)
