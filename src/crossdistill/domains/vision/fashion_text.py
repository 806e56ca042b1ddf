"""Fashion-MNIST images paired with texts that describe their class, for image -> text space.

The teacher (a sentence encoder) reads the text, the student sees the 28x28 image. Every class
has a pool of texts, fixed and ordered:

- ``templates``: ``TEMPLATES`` filled with the class phrase (``"a photo of a sneaker"``,
  ``"a black and white photo of trousers"``, ``"sneaker"``, ...) and the class's kind
  (``"an item of clothing: coat"``, ``"a kind of footwear: sandal"``, ``"an accessory: bag"``);
- ``glosses``: WordNet 3.0 definitions of the class words, ``"{word}: {definition}"``
  (``"sneaker: a canvas shoe with a pliable rubber sole"``), from the noun senses in
  ``WORDNET_SENSES`` (a lemma and its sense number in ``index.noun``; an ankle boot is a
  ``boot``, a pullover is also a ``sweater``, a bag also a ``handbag``).

An image's text is drawn from its class's pool by a hash of its Fashion-MNIST file (``train``
or ``t10k``) and its index there, so it never changes between runs, splits or held-out choices.
``meta["text_id"]`` is the text's index in :func:`all_texts` (every class's pool, class by
class), ``meta["held_out"]`` marks images of held-out classes.

The ``held_out`` classes never enter training, neither their images nor their texts:

- ``train``: Fashion-MNIST training images of the other classes (48,000 with two held out);
- ``test``: all 10,000 test images, every class;
- ``probe``: training images of the held-out classes (12,000), for a linear probe's upper
  bound only; never for distillation.

Zero-shot classification compares an image's embedding with the teacher's embedding of one
prompt per class, ``CLASS_PROMPTS`` (``"a photo of a sneaker"``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from crossdistill.data.sources.base import DATA_SOURCES, check_split
from crossdistill.data.sources.fashion_mnist import CLASS_NAMES as FASHION_NAMES
from crossdistill.data.sources.fashion_mnist import DEFAULT_ROOT, _decode
from crossdistill.data.split import PairSplit
from crossdistill.domains.text.sentences import DEFAULT_ROOT as WORDNET_ROOT
from crossdistill.domains.text.sentences import INSTALL_HINT, _normalise, parse_gloss
from crossdistill.errors import ConfigError, DataError

SPLITS = ("train", "test", "probe")
# the natural word of each Fashion-MNIST class (same order), and the phrase a sentence uses
CLASS_WORDS: tuple[str, ...] = (
    "t-shirt",
    "trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
_PHRASES: tuple[str, ...] = (
    "a t-shirt",
    "trousers",  # plural noun: no article
    "a pullover",
    "a dress",
    "a coat",
    "a sandal",
    "a shirt",
    "a sneaker",
    "a bag",
    "an ankle boot",
)
_CLOTHING, _FOOTWEAR, _ACCESSORY = "an item of clothing", "a kind of footwear", "an accessory"
_KINDS: tuple[str, ...] = (
    _CLOTHING,
    _CLOTHING,
    _CLOTHING,
    _CLOTHING,
    _CLOTHING,
    _FOOTWEAR,
    _CLOTHING,
    _FOOTWEAR,
    _ACCESSORY,
    _FOOTWEAR,
)
# "{a}": the phrase with its article, "{word}": the bare word, "{kind}": the class's kind
TEMPLATES: tuple[str, ...] = (
    "a photo of {a}",
    "a black and white photo of {a}",
    "a picture of {a}",
    "a low-resolution photo of {a}",
    "a grayscale product photo of {a}",
    "a small image of {a}",
    "{a} on a plain background",
    "{word}",
    "{kind}: {word}",
)
CLASS_PROMPTS: tuple[str, ...] = tuple(f"a photo of {a}" for a in _PHRASES)
# (lemma in index.noun, 1-based sense number) whose definitions join each class's pool
WORDNET_SENSES: tuple[tuple[tuple[str, int], ...], ...] = (
    (("t-shirt", 1),),
    (("trouser", 1),),  # WordNet's lemma is the singular: "trouser, pant"
    (("pullover", 1), ("sweater", 1)),
    (("dress", 1),),
    (("coat", 1),),
    (("sandal", 1),),
    (("shirt", 1),),
    (("sneaker", 1),),
    (("bag", 1), ("handbag", 1)),
    (("boot", 1),),
)


def class_id(name: str) -> int:
    """The class id of a Fashion-MNIST class name (``"Trouser"``) or class word
    (``"trousers"``), case-insensitive."""
    key = name.strip().lower()
    for i, (fashion, word) in enumerate(zip(FASHION_NAMES, CLASS_WORDS, strict=True)):
        if key in (fashion.lower(), word):
            return i
    raise ConfigError(
        f"fashion_text: {name!r} is not a Fashion-MNIST class",
        hint=f"valid names: {', '.join(FASHION_NAMES)} (or {', '.join(CLASS_WORDS)})",
    )


@functools.lru_cache(maxsize=64)
def wordnet_definition(lemma: str, sense: int = 1, root: str = WORDNET_ROOT) -> str:
    """The definition of noun ``lemma``'s ``sense`` (1 = most frequent) in WordNet 3.0.

    ``index.noun`` lists a lemma's synsets as byte offsets into ``data.noun``, most frequent
    sense first; the definition is the gloss field up to its first quoted example.
    """
    index, data = Path(root) / "index.noun", Path(root) / "data.noun"
    if not index.is_file() or not data.is_file():
        raise DataError(f"WordNet 3.0 not found: no {index} or {data}", hint=INSTALL_HINT)
    key = lemma.lower().replace(" ", "_") + " "
    with index.open("rb") as f:
        line = next(
            (raw.decode("latin-1") for raw in f if raw.decode("latin-1").startswith(key)), None
        )
    if line is None:
        raise DataError(f"{index}: no noun {lemma!r}", hint=f"reinstall it: {INSTALL_HINT}")
    fields = line.split()
    synsets = int(fields[2])
    if not 1 <= sense <= synsets:
        raise DataError(f"{index}: noun {lemma!r} has {synsets} senses, not {sense}")
    offset = int(fields[-synsets + sense - 1])
    with data.open("rb") as f:
        f.seek(offset)
        record = f.readline().decode("latin-1")
    head, sep, gloss = record.partition(" | ")
    if not sep or not head.startswith(f"{offset:08d} "):
        raise DataError(
            f"{data}: no synset at byte {offset} (named by {index} for {lemma!r})",
            hint=f"reinstall it: {INSTALL_HINT}",
        )
    return _normalise(parse_gloss(gloss)[0])


def _check_class(c: int) -> int:
    if not 0 <= int(c) < len(CLASS_WORDS):
        raise ConfigError(
            f"fashion_text: class index must lie in 0..{len(CLASS_WORDS) - 1}, got {c}"
        )
    return int(c)


def class_texts(
    class_index: int, templates: bool = True, glosses: bool = True, root: str = WORDNET_ROOT
) -> list[str]:
    """The text pool of class ``class_index``: its templates, then its WordNet glosses."""
    c = _check_class(class_index)
    if not (templates or glosses):
        raise ConfigError(
            "fashion_text: templates and glosses are both off: no texts to pair with",
            hint="set templates: true or glosses: true",
        )
    word = CLASS_WORDS[c]
    fill = {"a": _PHRASES[c], "word": word, "kind": _KINDS[c]}
    texts = [t.format(**fill) for t in TEMPLATES] if templates else []
    if glosses:
        for lemma, sense in WORDNET_SENSES[c]:
            # the class word names the first sense; other lemmas name themselves
            name = word if lemma == WORDNET_SENSES[c][0][0] else lemma
            texts.append(f"{name}: {wordnet_definition(lemma, sense, str(root))}")
    return texts


def all_texts(templates: bool = True, glosses: bool = True, root: str = WORDNET_ROOT) -> list[str]:
    """Every class's pool, class by class: what ``meta["text_id"]`` indexes."""
    return [t for c in range(len(CLASS_WORDS)) for t in class_texts(c, templates, glosses, root)]


def _draw(
    file_split: str, indices: np.ndarray, pool_sizes: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """The position in its class's pool of each image's text: a hash of (file, index)."""
    out = np.empty(len(indices), dtype=np.int64)
    for j, i in enumerate(indices):
        digest = hashlib.blake2b(f"{file_split}:{int(i)}".encode(), digest_size=8).digest()
        out[j] = int.from_bytes(digest, "big") % int(pool_sizes[labels[j]])
    return out


def held_out_ids(held_out: str | Sequence[str]) -> list[int]:
    """The sorted class ids of ``held_out`` names; 1..9 distinct classes."""
    names = [held_out] if isinstance(held_out, str) else list(held_out)
    ids = [class_id(str(n)) for n in names]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"fashion_text: held_out names a class twice: {names}")
    if not 1 <= len(ids) < len(CLASS_WORDS):
        raise ConfigError(
            f"fashion_text: held_out must name 1..{len(CLASS_WORDS) - 1} classes, got {names}",
            hint="e.g. held_out: [Trouser, Sneaker]",
        )
    return sorted(ids)


@DATA_SOURCES.register("fashion_text")
def load(
    split: str,
    held_out: str | Sequence[str] = ("Trouser", "Sneaker"),
    templates: bool = True,
    glosses: bool = True,
    max_per_class: int | None = None,
    seed: int = 0,
    root: str = DEFAULT_ROOT,
    wordnet_root: str = WORDNET_ROOT,
) -> PairSplit:
    """The ``split`` ("train", "test", "probe") of Fashion-MNIST images with class texts; see
    the module docstring. ``max_per_class`` keeps a sample (drawn with ``seed``) of that many
    images per class, in file order.
    """
    check_split(split, "fashion_text", SPLITS)
    held = held_out_ids(held_out)
    if max_per_class is not None and (int(max_per_class) != max_per_class or max_per_class < 1):
        raise ConfigError(
            f"fashion_text: max_per_class must be an integer >= 1, got {max_per_class!r}"
        )
    pools = [class_texts(c, templates, glosses, str(wordnet_root)) for c in range(len(CLASS_WORDS))]
    sizes = np.array([len(p) for p in pools], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    file_split = "test" if split == "test" else "train"
    images, labels = _decode(str(Path(root)), file_split)
    is_held = np.isin(labels, held)
    keep = {"train": ~is_held, "probe": is_held, "test": np.ones_like(is_held)}[split]
    indices = np.flatnonzero(keep)
    if max_per_class is not None:
        rng = np.random.default_rng(seed)
        picked = [
            rng.choice(members, size=min(int(max_per_class), len(members)), replace=False)
            for c in range(len(CLASS_WORDS))
            if len(members := indices[labels[indices] == c])
        ]
        indices = np.sort(np.concatenate(picked))
    targets = labels[indices]
    position = _draw(file_split, indices, sizes, targets)
    text_id = starts[targets] + position
    return PairSplit(
        modalities={
            "text": [pools[c][p] for c, p in zip(targets, position, strict=True)],
            "image": torch.from_numpy(images[indices]).unsqueeze(1),
        },
        targets=torch.from_numpy(targets),
        class_names=list(CLASS_WORDS),
        name=f"fashion_text/{split}",
        sides={"teacher": "text", "student": "image"},
        meta={"text_id": text_id.astype(np.int64), "held_out": is_held[indices]},
    )
