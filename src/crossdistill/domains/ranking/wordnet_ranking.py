"""WordNet 3.0 as a ranking task: find the dictionary sense an example sentence uses.

A query is an example sentence of a synset; a document is the synset's dictionary entry, its
first three lemmas and its definition (``"bank: sloping land (especially the slope beside a body
of water)"``). The relevant document of a query is its own synset's entry; hard negatives are
*related* synsets — the other senses of its lemmas (``bank`` the financial institution) and the
synsets its pointers name (hypernyms, hyponyms, similar adjectives, ...) — and easy ones are
random synsets. Telling the senses of one word apart from context is what a cross-encoder, which
reads sentence and entry together, does better than two independent embeddings.

The split is the ``sentences`` source's: a synset is held out when
``blake2b(pos + offset) mod 100 < 5`` (about 5%). Training queries and every document they are
trained with (positive or negative) come from training synsets only, so a held-out query, its
entry and its own sentences never occur in training. Example sentences that occur in more than
one synset are dropped (their answer is ambiguous).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from crossdistill.data.sources.base import DATA_SOURCES, check_split
from crossdistill.data.split import RankingSplit
from crossdistill.domains.ranking.data import RetrievalSet
from crossdistill.domains.text.sentences import (
    DEFAULT_ROOT,
    FILES,
    INSTALL_HINT,
    MIN_CHARS,
    _normalise,
    parse_gloss,
    synset_split,
)
from crossdistill.errors import ConfigError, DataError

LEMMAS_IN_DOC = 3
# pointer part-of-speech -> data file letter (satellite adjectives live in data.adj)
_POS = {"n": "n", "v": "v", "a": "a", "s": "a", "r": "r"}


@dataclass
class Synset:
    """One synset: ``id`` is ``pos + offset`` (``"n09213565"``)."""

    id: str
    lemmas: list[str]
    definition: str
    examples: list[str]
    pointers: list[str]
    split: str
    related: list[str] = field(default_factory=list)

    @property
    def document(self) -> str:
        """The dictionary entry a query retrieves: first lemmas, then the definition."""
        return f"{', '.join(self.lemmas[:LEMMAS_IN_DOC])}: {self.definition}"


def _lemma(word: str) -> str:
    # "able(a)" -> "able"; underscores join the words of a collocation
    return word.split("(", 1)[0].replace("_", " ")


def _parse_line(line: str, pos: str, where: str) -> Synset | None:
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    try:
        offset, count = fields[0], int(fields[3], 16)
        lemmas = [_lemma(fields[4 + 2 * i]) for i in range(count)]
        at = 4 + 2 * count
        pointers = [
            _POS[fields[at + 3 + 4 * i]] + fields[at + 2 + 4 * i] for i in range(int(fields[at]))
        ]
    except (IndexError, ValueError, KeyError):
        raise DataError(
            f"{where}: not a WordNet synset line: {line[:60]!r}", hint=f"reinstall: {INSTALL_HINT}"
        ) from None
    if not sep:
        return None
    definition, examples = parse_gloss(gloss)
    examples = [e for e in (_normalise(x) for x in examples) if len(e) >= MIN_CHARS]
    return Synset(
        f"{pos}{offset}",
        lemmas,
        _normalise(definition),
        examples,
        pointers,
        synset_split(pos, offset),
    )


@lru_cache(maxsize=2)
def read_synsets(root: str = DEFAULT_ROOT) -> dict[str, Synset]:
    """Every synset with a definition, by id, each with its ``related`` synsets (other senses
    of its lemmas, then its pointers' targets; no duplicates, not itself)."""
    base = Path(root)
    missing = [f"data.{name}" for name, _ in FILES if not (base / f"data.{name}").is_file()]
    if missing:
        raise DataError(
            f"WordNet 3.0 not found: {base} lacks {', '.join(missing)}", hint=INSTALL_HINT
        )
    synsets: dict[str, Synset] = {}
    for name, pos in FILES:
        path = base / f"data.{name}"
        for number, line in enumerate(path.read_bytes().decode("latin-1").splitlines(), 1):
            if line.strip() and not line.startswith("  "):  # skip the licence header
                synset = _parse_line(line, pos, f"{path}:{number}")
                if synset is not None and synset.definition:
                    synsets[synset.id] = synset
    senses: dict[str, list[str]] = {}
    for synset in synsets.values():
        for lemma in synset.lemmas:
            senses.setdefault(lemma.lower(), []).append(synset.id)
    for synset in synsets.values():
        found = [s for lemma in synset.lemmas for s in senses[lemma.lower()]] + synset.pointers
        synset.related = [s for s in dict.fromkeys(found) if s != synset.id and s in synsets]
    return synsets


def _order_key(text: str) -> bytes:
    """A stable pseudo-random order: any prefix of the queries is a sample of all of them."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def queries_of(synsets: dict[str, Synset], split: str) -> list[tuple[str, str]]:
    """``(example sentence, synset id)`` of ``split``'s synsets, in a stable shuffled order,
    without sentences that occur in more than one synset."""
    owners: dict[str, set[str]] = {}
    for synset in synsets.values():
        for example in synset.examples:
            owners.setdefault(example, set()).add(synset.id)
    pairs = [
        (text, next(iter(ids)))
        for text, ids in owners.items()
        if len(ids) == 1 and synsets[next(iter(ids))].split == split
    ]
    return sorted(pairs, key=lambda p: _order_key(p[0]))


def _check_count(name: str, value: int | None, minimum: int) -> None:
    if value is not None and (int(value) != value or value < minimum):
        raise ConfigError(f"wordnet_ranking: {name} must be an integer >= {minimum}, got {value!r}")


@DATA_SOURCES.register("wordnet_ranking")
def load(
    split: str,
    root: str = DEFAULT_ROOT,
    negatives: int = 3,
    related: int = 2,
    max_queries: int | None = None,
    skip: int = 0,
    seed: int = 0,
) -> RankingSplit:
    """Example sentences of WordNet synsets, each with its own entry and ``negatives`` others.

    Of the negatives, up to ``related`` are drawn from the query synset's related synsets (other
    senses of its lemmas, pointer targets), the rest at random; in the ``train`` split all come
    from training synsets. Draws are seeded by ``seed`` and made query by query in a fixed
    order, so ``max_queries`` (the first that many of a stable shuffle) is a prefix of the full
    set. ``skip`` leaves out the first that many queries of that order first: mining with
    ``skip: 8000`` draws queries the teacher, trained on ``max_queries: 8000``, never saw.
    About 45,000 training and 2,500 held-out queries.
    """
    check_split(split, "wordnet_ranking")
    _check_count("negatives", negatives, 1)
    _check_count("related", related, 0)
    _check_count("max_queries", max_queries, 1)
    _check_count("skip", skip, 0)
    synsets = read_synsets(str(root))
    pairs = queries_of(synsets, split)[skip:]
    pairs = pairs[:max_queries]
    pool = [s for s in synsets.values() if split == "test" or s.split == "train"]
    allowed = {s.id for s in pool}
    rng = np.random.default_rng(int(seed))
    queries, candidates = [], []
    for text, sid in pairs:
        own = synsets[sid]
        near = [r for r in own.related if r in allowed]
        take = min(int(related), len(near), int(negatives))
        chosen = [near[j] for j in rng.choice(len(near), size=take, replace=False)] if take else []
        while len(chosen) < negatives:
            other = pool[int(rng.integers(len(pool)))].id
            if other != sid and other not in chosen:
                chosen.append(other)
        queries.append(text)
        candidates.append([own.document] + [synsets[c].document for c in chosen])
    return RankingSplit(queries, candidates, name=f"wordnet_ranking/{split}")


def wordnet_retrieval_set(
    queries: int = 1000, corpus: int = 10_000, seed: int = 0, root: str = DEFAULT_ROOT
) -> RetrievalSet:
    """Held-out queries against a corpus of dictionary entries.

    The queries are the first ``queries`` held-out example sentences (a stable shuffle, so a
    smaller set is a subset of a larger one). The corpus holds their own entries, then the
    related synsets of their synsets (the hard distractors), then the other held-out synsets,
    then random training synsets until it has ``corpus`` entries (the related ones are sampled
    down if they alone would exceed it).
    """
    _check_count("queries", queries, 1)
    _check_count("corpus", corpus, 1)
    synsets = read_synsets(str(root))
    pairs = queries_of(synsets, "test")[:queries]
    rng = np.random.default_rng(int(seed))
    own = list(dict.fromkeys(sid for _, sid in pairs))
    if len(own) > corpus:
        raise ConfigError(
            f"wordnet_retrieval_set: {len(pairs)} queries have {len(own)} relevant entries, more "
            f"than a corpus of {corpus}",
            hint="raise `corpus` or lower `queries`",
        )
    chosen = dict.fromkeys(own)
    near = [r for sid in own for r in synsets[sid].related if r not in chosen]
    near = list(dict.fromkeys(near))
    rest = [s for s in synsets if s not in chosen and synsets[s].split == "test"]
    train = [s for s in synsets if s not in chosen and synsets[s].split == "train"]
    for group in (near, rest, train):
        room = corpus - len(chosen)
        if room <= 0:
            break
        group = [s for s in group if s not in chosen]
        picks = (
            group
            if len(group) <= room
            else [group[j] for j in sorted(rng.choice(len(group), room, replace=False))]
        )
        chosen.update(dict.fromkeys(picks))
    # two synsets can share an entry's text: keep it once (the relevant ones come first)
    texts = list(dict.fromkeys(synsets[s].document for s in chosen))
    index = {text: i for i, text in enumerate(texts)}
    return RetrievalSet(
        queries=[text for text, _ in pairs],
        corpus=texts,
        relevant=[index[synsets[sid].document] for _, sid in pairs],
        name=f"wordnet_retrieval(queries={len(pairs)}, corpus={len(texts)})",
    )
