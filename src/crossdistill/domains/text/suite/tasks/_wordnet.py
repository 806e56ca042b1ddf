"""Held-out WordNet synsets for the WordNet tasks, read once per process and root."""

from __future__ import annotations

import functools

from crossdistill.domains.text.sentences import DEFAULT_ROOT, heldout_synsets, read_sentences
from crossdistill.domains.text.suite.base import every_nth

QUICK_SYNSETS = 1000


@functools.lru_cache(maxsize=2)
def _heldout(root: str) -> tuple[tuple[str, int, str, tuple[str, ...]], ...]:
    return tuple((s, lex, g, tuple(e)) for s, lex, g, e in heldout_synsets(root))


def synsets(
    root: str = DEFAULT_ROOT, quick: bool = False
) -> list[tuple[str, int, str, tuple[str, ...]]]:
    """The held-out synsets (``quick``: 1,000 of them, evenly spread over the file order, the
    same for both WordNet tasks so that their glosses are encoded once)."""
    every = _heldout(str(root))
    keep = every_nth(len(every), QUICK_SYNSETS) if quick else range(len(every))
    return [every[i] for i in keep]


@functools.lru_cache(maxsize=2)
def sentences(root: str = DEFAULT_ROOT) -> dict[str, tuple[str, ...]]:
    """The ``train`` and ``test`` sentences of the ``sentences`` data source (read once)."""

    return {split: tuple(texts) for split, (texts, _) in read_sentences(root).items()}
