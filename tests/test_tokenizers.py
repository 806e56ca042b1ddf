"""Tokenizers trained on a corpus: reproducible files, the three kinds, bad parameters."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from crossdistill.domains.text.tokenizers import KINDS, train_tokenizer, train_tokenizer_from_source
from crossdistill.errors import ConfigError, DataError

tokenizers = pytest.importorskip("tokenizers")

SYLLABLES = ["ka", "to", "ri", "mé", "su", "na", "lo", "pe", "dis", "til", "ing", "ed", "Ün"]


def corpus(n: int = 1500, seed: int = 0) -> list[str]:
    """Sentences of pseudo-words from a few syllables: many pair counts tie, which is where
    the trainers' hash-map orders used to make two runs differ."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(400)]
    return [
        " ".join(rng.choices(words, k=rng.randint(3, 12))) + rng.choice([".", "!", ", ok"])
        for _ in range(n)
    ]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_same_corpus_same_file(kind: str, tmp_path: Path) -> None:
    texts = corpus()
    a = train_tokenizer(texts, out=tmp_path / "a.json", kind=kind, vocab_size=300)
    b = train_tokenizer(iter(texts), out=tmp_path / "b.json", kind=kind, vocab_size=300)
    c = train_tokenizer(texts, out=tmp_path / "c.json", kind=kind, vocab_size=300)
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c.json"]
    other = train_tokenizer(corpus(seed=1), out=tmp_path / "d.json", kind=kind, vocab_size=300)
    assert other.read_bytes() != a.read_bytes()


@pytest.mark.parametrize(
    ("kind", "model", "marked"),
    [("wordpiece", "WordPiece", "##"), ("bpe", "BPE", "Ġ"), ("unigram", "Unigram", "▁")],
)
def test_kinds(kind: str, model: str, marked: str, tmp_path: Path) -> None:
    texts = corpus()
    path = train_tokenizer(texts, out=tmp_path / "t.json", kind=kind, vocab_size=300)
    spec = json.loads(path.read_text())
    assert spec["model"]["type"] == model
    tok = tokenizers.Tokenizer.from_file(str(path))
    assert 100 < tok.get_vocab_size() <= 300
    assert (tok.token_to_id("[PAD]"), tok.token_to_id("[UNK]")) == (0, 1)
    assert {a["content"]: a["special"] for a in spec["added_tokens"]} == {
        "[PAD]": True,
        "[UNK]": True,
    }
    vocab = tok.get_vocab()
    assert any(t.startswith(marked) for t in vocab)
    # lower case, accents stripped (BERT uncased)
    enc = tok.encode("KATO MÉSU", add_special_tokens=False)
    assert "".join(enc.tokens).replace(marked, "").replace(" ", "") == "katomesu"
    # ids follow frequency: the most frequent token of the corpus has the first ordinary id
    counts: dict[int, int] = {}
    for e in tok.encode_batch(texts, add_special_tokens=False):
        for i in e.ids:
            counts[i] = counts.get(i, 0) + 1
    assert max(counts, key=lambda i: (counts[i], -i)) == 2
    ranked = [counts.get(i, 0) for i in range(2, tok.get_vocab_size())]
    assert ranked == sorted(ranked, reverse=True)


def test_unknown_characters(tmp_path: Path) -> None:
    texts = corpus()
    uni = tokenizers.Tokenizer.from_file(
        str(train_tokenizer(texts, out=tmp_path / "u.json", kind="unigram", vocab_size=200))
    )
    assert 1 in uni.encode("ka ☃", add_special_tokens=False).ids
    bpe = tokenizers.Tokenizer.from_file(
        str(train_tokenizer(texts, out=tmp_path / "b.json", kind="bpe", vocab_size=300))
    )
    # byte level: every character is some bytes, never [UNK]
    assert 1 not in bpe.encode("ka ☃", add_special_tokens=False).ids
    assert bpe.decode(bpe.encode("ka ☃").ids).strip() == "ka ☃"


def test_case_kept_without_lowercase(tmp_path: Path) -> None:
    texts = corpus()
    path = train_tokenizer(
        texts, out=tmp_path / "t.json", kind="wordpiece", vocab_size=200, lowercase=False
    )
    tok = tokenizers.Tokenizer.from_file(str(path))
    assert "Ün" in tok.get_vocab() or "##Ün" in tok.get_vocab()
    assert tok.encode("Ünka", add_special_tokens=False).tokens[0].startswith("Ü")


def test_bad_parameters(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    out.write_text("old")
    with pytest.raises(ConfigError, match="vocab_size must be an integer ≥ 10, got 5"):
        train_tokenizer(["a b c"], out=out, vocab_size=5)
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(["a b c"], out=out, vocab_size=100.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="kind 'sentencepiece' is not one of") as err:
        train_tokenizer(["a b c"], out=out, kind="sentencepiece")
    assert "bpe" in err.value.hint and "unigram" in err.value.hint
    with pytest.raises(ConfigError, match="did you mean 'wordpiece'"):
        train_tokenizer(["a b c"], out=out, kind="wordpeice")
    with pytest.raises(ConfigError, match="byte-level BPE tokenizer has at least 258"):
        train_tokenizer(["a b c"], out=out, kind="bpe", vocab_size=200)
    with pytest.raises(ConfigError, match="min_frequency"):
        train_tokenizer(["a b c"], out=out, min_frequency=0)
    with pytest.raises(DataError, match="no non-empty text"):
        train_tokenizer(["", "  "], out=out)
    with pytest.raises(DataError, match="got one str"):
        train_tokenizer("a b c", out=out)
    assert out.read_text() == "old"  # nothing half-written over it
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match="cannot write the tokenizer"):
        train_tokenizer(corpus(50), out=blocker / "t.json", kind="bpe", vocab_size=300)


def test_from_source(tmp_path: Path) -> None:
    if not Path("/usr/share/wordnet/data.noun").is_file():
        pytest.skip("WordNet is not installed: apt-get install -y wordnet-base")
    path = train_tokenizer_from_source(
        "sentences",
        params={"max_sentences": 3000},
        out=tmp_path / "t.json",
        kind="unigram",
        vocab_size=500,
    )
    tok = tokenizers.Tokenizer.from_file(str(path))
    assert tok.get_vocab_size() == 500
    assert tok.id_to_token(2) in {"▁a", "▁the", "▁of", "s", "▁"}
    with pytest.raises(ConfigError, match="max_sentences"):
        train_tokenizer_from_source("sentences", params={"max_sentences": 0}, out=tmp_path / "x")
    with pytest.raises(ConfigError, match="no_such_param"):
        train_tokenizer_from_source("sentences", params={"no_such_param": 1}, out=tmp_path / "x")
