"""English sentences from WordNet 3.0 (Debian package ``wordnet-base``): glosses and examples.

Each synset of ``data.{noun,verb,adj,adv}`` gives its gloss (the definition) and its quoted
example sentences; every sentence is labelled with its synset's lexicographer class (one of the
45 of ``lexnames(5WN)``), which makes a real 45-class text task, and the sentences are the corpus
that text distillation embeds with a sentence-encoder teacher.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from crossdistill.data.sources.base import DATA_SOURCES, check_split
from crossdistill.data.split import TextSplit
from crossdistill.errors import ConfigError, DataError

DEFAULT_ROOT = "/usr/share/wordnet"
INSTALL_HINT = "apt-get install -y wordnet-base"
# Read in this order: it fixes which copy of a duplicated sentence is kept.
FILES: tuple[tuple[str, str], ...] = (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r"))
KINDS: tuple[str, ...] = ("glosses", "examples")
TEST_PERCENT = 5
MIN_CHARS = 3
# lexnames(5WN): the lexicographer file of number i is CLASS_NAMES[i].
CLASS_NAMES: list[str] = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_QUOTED = re.compile(r'"([^"]*)"')


def synset_split(pos: str, offset: str) -> str:
    """``"test"`` for about 5% of synsets, chosen by a stable hash of ``pos + offset``."""
    digest = hashlib.blake2b(f"{pos}{offset}".encode("ascii"), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") % 100 < TEST_PERCENT else "train"


def _normalise(text: str) -> str:
    return " ".join(text.split())


def parse_gloss(gloss: str) -> tuple[str, list[str]]:
    """The definition (text before the first quote, without a trailing ``;``) and the quoted
    example sentences of a WordNet gloss field."""
    definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
    return definition, _QUOTED.findall(gloss)


def _synsets(path: Path, pos: str) -> Iterator[tuple[str, int, str]]:
    """``(offset, lex_filenum, gloss field)`` of every synset line of one data file."""
    try:
        lines = path.read_bytes().decode("latin-1").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read WordNet file {path}: {exc}", hint=INSTALL_HINT) from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("  "):  # the licence header
            continue
        head, sep, gloss = line.partition(" | ")
        fields = head.split(" ", 2)
        if len(fields) < 3 or not fields[0].isdigit() or not fields[1].isdigit():
            raise DataError(
                f"{path}:{number}: not a WordNet synset line: {line[:60]!r}",
                hint=f"reinstall it: {INSTALL_HINT}",
            )
        lex = int(fields[1])
        if lex >= len(CLASS_NAMES):
            raise DataError(f"{path}:{number}: lexicographer file {lex} is not in 0..44")
        if sep:
            yield fields[0], lex, gloss


def read_sentences(
    root: str | Path = DEFAULT_ROOT, include: Sequence[str] = KINDS
) -> dict[str, tuple[list[str], list[int]]]:
    """All sentences of both splits: ``{split: (texts, lexicographer classes)}``, deduplicated."""
    root = Path(root)
    missing = [f"data.{name}" for name, _ in FILES if not (root / f"data.{name}").is_file()]
    if missing:
        raise DataError(
            f"WordNet 3.0 not found: {root} lacks {', '.join(missing)}", hint=INSTALL_HINT
        )
    want_glosses, want_examples = "glosses" in include, "examples" in include
    seen: set[str] = set()
    out: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    for name, pos in FILES:
        for offset, lex, gloss in _synsets(root / f"data.{name}", pos):
            texts, labels = out[synset_split(pos, offset)]
            definition, examples = parse_gloss(gloss)
            candidates = ([definition] if want_glosses else []) + (
                examples if want_examples else []
            )
            for text in candidates:
                text = _normalise(text)
                if len(text) >= MIN_CHARS and text not in seen:
                    seen.add(text)
                    texts.append(text)
                    labels.append(lex)
    return out


@DATA_SOURCES.register("sentences")
def load(
    split: str,
    root: str = DEFAULT_ROOT,
    include: Sequence[str] = KINDS,
    max_sentences: int | None = None,
) -> TextSplit:
    """WordNet 3.0 glosses and example sentences, labelled with their lexicographer class.

    Sentences are whitespace-normalised; those shorter than 3 characters are dropped, and exact
    duplicates keep only their first occurrence (files read noun, verb, adj, adv; in a synset the
    gloss before its examples). The split is by synset, so a held-out synset's gloss and examples
    are never trained on: a synset is in ``"test"`` when ``blake2b(pos + offset) mod 100 < 5``
    (``pos`` in n/v/a/r, ``offset`` its 8-digit offset), else in ``"train"``. Deduplication runs
    before the split, so no sentence is in both. WordNet 3.0 gives about 150k train sentences
    and 8k test sentences. ``max_sentences`` keeps the first that many.
    """
    check_split(split, "sentences")
    kinds = [include] if isinstance(include, str) else list(include)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(
            f"sentences: include must name some of {list(KINDS)}, got {list(kinds)}",
            hint="e.g. include: [glosses, examples]",
        )
    if max_sentences is not None and (int(max_sentences) != max_sentences or max_sentences < 1):
        raise ConfigError(
            f"sentences: max_sentences must be a positive integer, got {max_sentences!r}"
        )
    texts, labels = read_sentences(root, kinds)[split]
    if max_sentences is not None:
        texts, labels = texts[:max_sentences], labels[:max_sentences]
    return TextSplit(
        texts=texts,
        targets=torch.tensor(labels, dtype=torch.int64),
        class_names=list(CLASS_NAMES),
        name=f"sentences/{split}",
    )


def heldout_synsets(
    root: str | Path = DEFAULT_ROOT,
) -> list[tuple[str, int, str, list[str]]]:
    """The held-out (``"test"`` split) synsets as ``(id, lexicographer class, gloss, examples)``.

    ``id`` is ``pos + offset`` (``"n00001740"``). The texts are exactly the ``"test"`` sentences
    of :func:`read_sentences`, grouped by synset: whitespace-normalised, at least 3 characters,
    and any text that also occurs among the ``"train"`` sentences (or earlier in the held-out
    set) dropped, so evaluation texts never overlap the training corpus and no two held-out
    texts are equal. A synset whose gloss was dropped is left out with its examples (an example
    is only a retrieval query when its synset's gloss is in the corpus). Used by the
    ``wordnet_lexname`` and ``wordnet_retrieval`` tasks of the text evaluation suite.
    """
    root = Path(root)
    missing = [f"data.{name}" for name, _ in FILES if not (root / f"data.{name}").is_file()]
    if missing:
        raise DataError(
            f"WordNet 3.0 not found: {root} lacks {', '.join(missing)}", hint=INSTALL_HINT
        )
    # The same first-occurrence rule as read_sentences: one pass over the files in their order,
    # every kept text of either split marks its string as seen.
    seen: set[str] = set()
    train: set[str] = set()
    held: list[tuple[str, int, str | None, list[str]]] = []
    for name, pos in FILES:
        for offset, lex, gloss in _synsets(root / f"data.{name}", pos):
            definition, examples = parse_gloss(gloss)
            kept: list[str | None] = []
            for text in [definition, *examples]:
                text = _normalise(text)
                fresh = len(text) >= MIN_CHARS and text not in seen
                if fresh:
                    seen.add(text)
                kept.append(text if fresh else None)
            if synset_split(pos, offset) == "train":
                train.update(t for t in kept if t is not None)
            else:
                held.append((f"{pos}{offset}", lex, kept[0], [t for t in kept[1:] if t]))
    # By the rule above no held-out text is a train sentence; checked again so that a change to
    # that rule cannot leak training text into evaluation.
    return [
        (sid, lex, gloss, [e for e in examples if e not in train])
        for sid, lex, gloss, examples in held
        if gloss is not None and gloss not in train
    ]
