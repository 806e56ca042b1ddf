"""Your own ranking data: a triples file of queries with a positive and negatives each.

The file is JSON lines, ``{"query": str, "positive": str, "negatives": [str, ...]}`` (what
``crossdistill mine`` writes; see :mod:`crossdistill.domains.ranking.data`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from crossdistill.data.sources.base import DATA_SOURCES, check_split
from crossdistill.data.split import RankingSplit
from crossdistill.domains.ranking.data import read_triples
from crossdistill.domains.text.text_file import _BUCKETS, DEFAULT_TEST_FRACTION, hash_bucket
from crossdistill.errors import ConfigError, DataError


@DATA_SOURCES.register("triples")
def load(
    split: str,
    path: str | Mapping[str, str],
    negatives: int | None = None,
    test_fraction: float | None = None,
    max_queries: int | None = None,
) -> RankingSplit:
    """Queries, each with its positive and ``negatives`` negatives, from a triples file.

    ``path`` is one file, split by a stable hash of each query like the ``text_file`` source (a
    query is in ``"test"`` when ``blake2b(utf-8 query) mod 10000 < test_fraction * 10000``;
    ``test_fraction`` defaults to 0.05), or a mapping ``{train: file, test: file}``.
    ``negatives`` keeps the first that many negatives of each line (default: all, and then every
    line must have the same number). ``max_queries`` keeps the first that many of the split.
    """
    check_split(split, "triples")
    if max_queries is not None and (int(max_queries) != max_queries or max_queries < 1):
        raise ConfigError(f"triples: max_queries must be a positive integer, got {max_queries!r}")
    if isinstance(path, Mapping):
        if test_fraction is not None:
            raise ConfigError("triples: test_fraction splits one file; path names one per split")
        if split not in path:
            raise DataError(
                f"triples: path names no file for split {split!r} (it has {list(path)})",
                hint=f"add `{split}: FILE` to path, or give one file to split by hash",
            )
        data = read_triples(Path(path[split]).expanduser(), negatives)
        keep = list(range(len(data)))
    else:
        fraction = DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction)
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"triples: test_fraction must be in [0, 1), got {test_fraction!r}")
        data = read_triples(Path(path).expanduser(), negatives)
        threshold = round(fraction * _BUCKETS)
        keep = [
            i
            for i, q in enumerate(data.queries)
            if (hash_bucket(q) < threshold) == (split == "test")
        ]
    keep = keep[:max_queries]
    if not keep:
        raise DataError(
            f"triples: split {split!r} of {path} has no queries",
            hint="with one file, test_fraction sets the share of queries held out for test",
        )
    return RankingSplit(
        [data.queries[i] for i in keep],
        [data.candidates[i] for i in keep],
        name=f"triples/{split}",
    )
