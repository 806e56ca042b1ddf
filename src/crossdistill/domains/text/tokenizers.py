"""Tokenizers trained on the distillation corpus with the Hugging Face ``tokenizers`` library.

A student given such a tokenizer has its own input pipeline, independent of the teacher's: its
vocabulary comes from the corpus, not from the teacher. Three kinds:

- ``wordpiece``: BERT's scheme (Schuster & Nakajima, 2012; Devlin et al., 2019): words split on
  whitespace and punctuation, continuation pieces marked ``##``;
- ``bpe``: byte-level BPE (Sennrich et al., 2016; GPT-2's byte alphabet, Radford et al., 2019),
  which never needs ``[UNK]``;
- ``unigram``: the Unigram language model of SentencePiece (Kudo, 2018), words marked with
  ``▁`` (metaspace).

Each has the special tokens ``[PAD]`` (id 0) and ``[UNK]`` (id 1). The output is a
``tokenizer.json`` that ``tokenizers.Tokenizer.from_file``, sentence-transformers and the
``static_embedding`` student read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from crossdistill._util.files import write_atomic
from crossdistill.data.sources import load_source
from crossdistill.errors import TEXT_EXTRA, ConfigError, DataError, did_you_mean, require

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]")
UNK = "[UNK]"
MIN_VOCAB = 10
BYTE_LEVEL_MIN = 256 + len(SPECIAL_TOKENS)


def _tokenizers() -> Any:
    return require("tokenizers", "training a tokenizer", f"pip install tokenizers  {TEXT_EXTRA}")


def _normalizer(lowercase: bool) -> Any:
    """NFKC, then, when ``lowercase``, BERT uncased's cleaning: control characters removed,
    CJK characters spaced, accents stripped, lower case."""
    from tokenizers import normalizers

    steps = [normalizers.NFKC()]
    if lowercase:
        steps.append(
            normalizers.BertNormalizer(
                clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
            )
        )
    return normalizers.Sequence(steps)


def _wordpiece(vocab_size: int, min_frequency: int) -> tuple[Any, Any]:
    t = _tokenizers()
    tok = t.Tokenizer(t.models.WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
    tok.pre_tokenizer = t.pre_tokenizers.BertPreTokenizer()
    tok.decoder = t.decoders.WordPiece(prefix="##")
    trainer = t.trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    return tok, trainer


def _seed_continuations(tok: Any, trainer: Any, corpus: list[str]) -> list[str]:
    """Make WordPiece training reproducible: give every ``##c`` continuation piece its id
    before training (as a special token, demoted again by :func:`canonical_json`).

    The trainer otherwise numbers them in hash-map order, and merges of equal count are
    ordered by those numbers (huggingface/tokenizers#1794), so two runs on the same corpus
    could pick different merges.
    """
    chars: set[str] = set()
    for text in corpus:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            chars.update(word[1:])
    seeds = [f"##{c}" for c in sorted(chars)]
    trainer.special_tokens = list(SPECIAL_TOKENS) + seeds
    return seeds


def _bpe(vocab_size: int, min_frequency: int) -> tuple[Any, Any]:
    t = _tokenizers()
    tok = t.Tokenizer(t.models.BPE())  # byte-level: every byte is in the alphabet, no [UNK]
    tok.pre_tokenizer = t.pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = t.decoders.ByteLevel()
    trainer = t.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=t.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def _unigram(vocab_size: int, min_frequency: int) -> tuple[Any, Any]:
    t = _tokenizers()
    tok = t.Tokenizer(t.models.Unigram())
    tok.pre_tokenizer = t.pre_tokenizers.Metaspace()
    tok.decoder = t.decoders.Metaspace()
    # the Unigram trainer has no min_frequency: it prunes by likelihood instead
    trainer = t.trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        unk_token=UNK,
        show_progress=False,
    )
    return tok, trainer


# kind -> (vocab_size, min_frequency) -> (untrained tokenizer, trainer)
KINDS: dict[str, Callable[[int, int], tuple[Any, Any]]] = {
    "wordpiece": _wordpiece,
    "bpe": _bpe,
    "unigram": _unigram,
}


def _write_atomic(path: Path, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise DataError(
            f"cannot write the tokenizer to {path}: {exc}",
            hint="choose a writable --out path on a disk with free space",
        ) from None


def train_tokenizer(
    texts: Iterable[str],
    *,
    out: str | Path,
    kind: str = "unigram",
    vocab_size: int = 16000,
    lowercase: bool = True,
    min_frequency: int = 2,
) -> Path:
    """Train a ``kind`` tokenizer (``wordpiece``, ``bpe`` or ``unigram``) of at most
    ``vocab_size`` tokens on ``texts`` and write its ``tokenizer.json`` to ``out``.

    The same texts in the same order give the same file. ``min_frequency`` (WordPiece, BPE) is
    how often a pair must occur to be merged. The file is written atomically: ``out`` is either
    the old file or the complete new one. Returns ``out``.
    """
    if kind not in KINDS:
        raise ConfigError(
            f"tokenizer kind {kind!r} is not one of {sorted(KINDS)}",
            hint=did_you_mean(kind, KINDS),
        )
    if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < MIN_VOCAB:
        raise ConfigError(
            f"tokenizer vocab_size must be an integer ≥ {MIN_VOCAB}, got {vocab_size!r}",
            hint="e.g. 16000; the byte-level BPE alphabet alone has 256 tokens",
        )
    if kind == "bpe" and vocab_size < BYTE_LEVEL_MIN:
        raise ConfigError(
            f"a byte-level BPE tokenizer has at least {BYTE_LEVEL_MIN} tokens (256 bytes and "
            f"{len(SPECIAL_TOKENS)} special tokens), got vocab_size={vocab_size}",
            hint=f"set vocab_size ≥ {BYTE_LEVEL_MIN}, or use kind unigram or wordpiece",
        )
    if int(min_frequency) != min_frequency or min_frequency < 1:
        raise ConfigError(
            f"tokenizer min_frequency must be a positive integer, got {min_frequency!r}"
        )
    if isinstance(texts, str):
        raise DataError(
            "train_tokenizer takes an iterable of texts, got one str",
            hint="wrap a single text in a list",
        )
    corpus = [t for t in texts if isinstance(t, str) and t.strip()]
    if not corpus:
        raise DataError(
            "train_tokenizer: no non-empty text to train on",
            hint="give a corpus of sentences (e.g. the 'sentences' source)",
        )
    tok, trainer = KINDS[kind](int(vocab_size), int(min_frequency))
    tok.normalizer = _normalizer(bool(lowercase))
    seeds = _seed_continuations(tok, trainer, corpus) if kind == "wordpiece" else []
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    out = Path(out)
    _write_atomic(out, canonical_json(tok, corpus, demote=seeds))
    return out


def canonical_json(tok: Any, corpus: list[str], demote: Iterable[str] = ()) -> str:
    """The trained tokenizer's JSON made reproducible, with ids in frequency order: the special
    tokens, then every other token by decreasing count in ``corpus`` (ties by the token's text).

    The ``tokenizers`` trainers are not reproducible on their own (hash-map orders): WordPiece
    numbers tokens arbitrarily (see :func:`_seed_continuations` for its merges), and Unigram's
    log-probabilities differ in the last bits (rounded here to 1e-9) while the characters it
    adds at the end get their small penalties (``min_score + k·1e-4``) in arbitrary order
    (given here in code-point order). Frequency order also makes a token's id its Zipf rank,
    which model2vec's SIF weighting assumes (``models/init_static.py``). ``demote`` names
    tokens trained as special that are ordinary tokens.
    """
    import json

    t = _tokenizers()
    spec = json.loads(tok.to_str())
    demoted = set(demote)
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["content"] not in demoted]
    model = spec["model"]
    if model["type"] == "Unigram":
        model["vocab"] = _canonical_unigram(model["vocab"])
    tok = t.Tokenizer.from_str(json.dumps(spec))  # count with the canonical model
    counts: dict[int, int] = {}
    for encoding in tok.encode_batch(corpus, add_special_tokens=False):
        for i in encoding.ids:
            counts[i] = counts.get(i, 0) + 1
    vocab = tok.get_vocab(with_added_tokens=False)
    special = [tk for tk in SPECIAL_TOKENS if tk in vocab]
    rest = sorted(
        (tk for tk in vocab if tk not in SPECIAL_TOKENS),
        key=lambda tk: (-counts.get(vocab[tk], 0), tk),
    )
    order = special + rest
    new_id = {tk: i for i, tk in enumerate(order)}
    if model["type"] == "Unigram":
        score = dict((piece, s) for piece, s in model["vocab"])
        model["vocab"] = [[tk, score[tk]] for tk in order]
        model["unk_id"] = new_id[UNK]
    else:
        model["vocab"] = new_id
    for added in spec["added_tokens"]:
        added["id"] = new_id[added["content"]]
    return json.dumps(spec, ensure_ascii=False, indent=2)


def _canonical_unigram(vocab: list[list[Any]]) -> list[list[Any]]:
    """Unigram pieces with scores rounded to 1e-9 and the trainer's end-of-training character
    penalties given in code-point order (see :func:`canonical_json`)."""
    pieces = [[piece, round(float(score), 9)] for piece, score in vocab]
    ordinary = [s for p, s in pieces if p not in SPECIAL_TOKENS]
    if not ordinary:
        return pieces
    floor = min(ordinary)
    penalised = [
        i
        for i, (p, s) in enumerate(pieces)
        if len(p) == 1
        and s >= floor - 1e-9
        and abs((s - floor) / 1e-4 - round((s - floor) / 1e-4)) < 1e-4
        and (s - floor) < 1e-4 * len(pieces)
    ]
    scores = sorted((pieces[i][1] for i in penalised), reverse=True)
    chars = sorted(pieces[i][0] for i in penalised)
    given = dict(zip(chars, scores, strict=True))
    return [[p, given.get(p, s) if len(p) == 1 else s] for p, s in pieces]


def train_tokenizer_from_source(
    source: str,
    split: str = "train",
    params: Mapping[str, Any] | None = None,
    *,
    out: str | Path,
    kind: str = "unigram",
    vocab_size: int = 16000,
    lowercase: bool = True,
    min_frequency: int = 2,
) -> Path:
    """:func:`train_tokenizer` on the texts of a registered text data source's ``split``
    (e.g. ``"sentences"``: about 150k WordNet glosses and examples in ``"train"``)."""

    data = load_source(source, split, **dict(params or {}))
    texts = getattr(data, "texts", None)
    if texts is None:
        raise ConfigError(
            f"data source {source!r} gives {type(data).__name__}, not texts: a tokenizer "
            "trains on a text source",
            hint="use a text source such as 'sentences'",
        )
    return train_tokenizer(
        texts,
        out=out,
        kind=kind,
        vocab_size=vocab_size,
        lowercase=lowercase,
        min_frequency=min_frequency,
    )
