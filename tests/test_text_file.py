"""The ``text_file`` data source: a UTF-8 corpus, one sentence per line."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

import crossdistill.domains.text.text_file  # noqa: F401  (registers text_file)
from crossdistill.build import build_dataset
from crossdistill.config import load_recipe
from crossdistill.data import DATA_SOURCES, load_source
from crossdistill.data.dataset import DistillDataset
from crossdistill.data.split import TextSplit
from crossdistill.errors import ConfigError, DataError


def _file(tmp_path: Path, data: bytes, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _all(path: Path, **params: object) -> list[str]:
    """Every sentence of a one-file corpus: nothing held out for test."""
    return load_source("text_file", "train", path=str(path), test_fraction=0.0, **params).texts


def test_registered_and_unlabelled(tmp_path: Path) -> None:
    assert "text_file" in DATA_SOURCES
    path = _file(tmp_path, b"the cat sat\n\n   \nthe dog ran  \n")
    split = load_source("text_file", "train", path=str(path), test_fraction=0.0)
    assert isinstance(split, TextSplit)
    assert split.texts == ["the cat sat", "the dog ran"]  # empty and blank lines dropped
    assert split.targets is None and split.class_names == [] and split.name == "text_file/train"


def test_bom_and_crlf_read_like_plain_lf(tmp_path: Path) -> None:
    lines = ["caf\u00e9 au lait", "na\u00efve \u2014 r\u00e9sum\u00e9", "\u65e5\u672c\u8a9e"]
    plain = _file(tmp_path, "\n".join(lines).encode("utf-8"), "lf.txt")
    crlf = _file(tmp_path, b"\xef\xbb\xbf" + "\r\n".join([*lines, ""]).encode("utf-8"), "crlf.txt")
    assert _all(plain) == lines
    assert _all(crlf) == lines  # no "\ufeff" on the first sentence, no "\r" on any


def test_split_only_on_newline(tmp_path: Path) -> None:
    # str.splitlines would also split at U+2028, \x0b and \x1c; a line is a line of the file
    text = "one\u2028still one\x0bsame\nnext"
    assert _all(_file(tmp_path, text.encode("utf-8"))) == ["one\u2028still one\x0bsame", "next"]


def test_strict_names_line_and_byte_offset(tmp_path: Path) -> None:
    # "ok\n" is 3 bytes and "fine line\n" 10, so line 3 starts at byte 13 and its 7th byte
    # (offset 6 in the line, 19 in the file) is the Latin-1 "\xe9"
    data = b"ok\nfine line\nla caf\xe9 est\nlast\n"
    path = _file(tmp_path, data)
    offset, column = 19, 6
    assert data[offset] == 0xE9 and data[offset - column - 1] == ord("\n")
    with pytest.raises(DataError) as info:
        _all(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert (
        f"byte offset {offset} in the file" in message and f"byte {column} of the line" in message
    )
    assert "e9" in message
    assert "errors: replace" in message and "errors: skip" in message and "iconv" in message


def test_strict_offset_counts_the_bom(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbfgood\n\xff bad\n"
    with pytest.raises(
        DataError, match=r"line 2, byte offset 8 in the file \(byte 0 of the line\)"
    ):
        _all(_file(tmp_path, data))


def test_truncated_multibyte_sequence_is_reported_at_its_start(tmp_path: Path) -> None:
    data = "\u00e9t\u00e9\n".encode() + b"ab\xe2\x82\n"  # a 3-byte sequence cut after 2 bytes
    with pytest.raises(DataError, match=r"line 2, byte offset 8 .*e2 82"):
        _all(_file(tmp_path, data))


def test_replace_and_skip_count_affected_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = b"good one\nbad \xe9 one\nalso good\n\xff\xfe\xfd\nbad \xc3 two\n"
    path = _file(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="crossdistill.domains.text.text_file"):
        replaced = _all(path, errors="replace")
    assert replaced == [
        "good one",
        "bad \ufffd one",
        "also good",
        "\ufffd\ufffd\ufffd",
        "bad \ufffd two",
    ]
    assert replaced == [line.decode("utf-8", "replace") for line in data.splitlines()]
    [record] = caplog.records
    assert "3 line(s)" in record.getMessage() and "lines 2, 4, 5" in record.getMessage()
    assert str(path) in record.getMessage() and "U+FFFD" in record.getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crossdistill.domains.text.text_file"):
        assert _all(path, errors="skip") == ["good one", "also good"]
    [record] = caplog.records
    assert "3 line(s)" in record.getMessage() and "skipped" in record.getMessage()


def test_clean_file_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        _all(_file(tmp_path, b"a\nb\n"), errors="replace")
    assert not caplog.records


def test_utf16_file_refused_whatever_errors_says(tmp_path: Path) -> None:
    path = _file(tmp_path, "hello\nworld\n".encode("utf-16"))
    for errors in ("strict", "replace", "skip"):
        with pytest.raises(DataError, match="UTF-16LE byte-order mark") as info:
            _all(path, errors=errors)
        assert "iconv -f UTF-16LE -t UTF-8" in str(info.value)


def test_dedupe_min_chars_and_max_sentences(tmp_path: Path) -> None:
    path = _file(tmp_path, b"b\nalpha\n  alpha \nbeta\nalpha\ngamma\nbeta\n")
    assert _all(path) == ["b", "alpha", "beta", "gamma"]  # first occurrences, file order
    assert _all(path, dedupe=False) == ["b", "alpha", "alpha", "beta", "alpha", "gamma", "beta"]
    assert _all(path, min_chars=5) == ["alpha", "gamma"]  # "beta" has 4 characters
    assert _all(path, max_sentences=2) == ["b", "alpha"]
    assert _all(path, dedupe=False, max_sentences=3) == ["b", "alpha", "alpha"]


def test_single_file_hash_split(tmp_path: Path) -> None:
    lines = [f"sentence number {i}" for i in range(400)]
    path = _file(tmp_path, ("\n".join(lines + lines[:50]) + "\n").encode())

    def held_out(text: str, fraction: float) -> bool:  # the documented rule, re-derived
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % 10_000 < fraction * 10_000

    for fraction in (None, 0.25):
        extra = {} if fraction is None else {"test_fraction": fraction}
        train = load_source("text_file", "train", path=str(path), **extra).texts
        test = load_source("text_file", "test", path=str(path), **extra).texts
        want = 0.05 if fraction is None else fraction
        assert test == [t for t in lines if held_out(t, want)]
        assert train == [t for t in lines if not held_out(t, want)]
        assert 0 < len(test) < len(train)
    # line order does not move a sentence between splits
    shuffled = _file(tmp_path, "\n".join(reversed(lines)).encode(), "reversed.txt")
    again = load_source("text_file", "test", path=str(shuffled)).texts
    assert sorted(again) == sorted(load_source("text_file", "test", path=str(path)).texts)


def test_one_file_per_split(tmp_path: Path) -> None:
    train = _file(tmp_path, b"a train sentence\nanother\n", "train.txt")
    test = _file(tmp_path, b"a test sentence\n", "test.txt")
    paths = {"train": str(train), "test": str(test)}
    assert load_source("text_file", "train", path=paths).texts == ["a train sentence", "another"]
    assert load_source("text_file", "test", path=paths).texts == ["a test sentence"]
    with pytest.raises(DataError, match="no file for split 'test'"):
        load_source("text_file", "test", path={"train": str(train)})
    with pytest.raises(ConfigError, match="test_fraction applies to a single file"):
        load_source("text_file", "train", path=paths, test_fraction=0.1)
    with pytest.raises(ConfigError, match="split names"):
        load_source("text_file", "train", path={"validation": str(test)})


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "corpus.txt"
    with pytest.raises(DataError, match="does not exist") as info:
        _all(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(DataError, match="is a directory"):
        _all(tmp_path)


def test_empty_split_and_bad_params(tmp_path: Path) -> None:
    path = _file(tmp_path, b"\n  \n\r\n")
    with pytest.raises(DataError, match="has no sentences"):
        _all(path)
    good = _file(tmp_path, b"fine\n", "good.txt")
    with pytest.raises(ConfigError, match="errors must be one of"):
        _all(good, errors="ignore")
    for bad in ({"min_chars": 0}, {"max_sentences": 0}, {"max_sentences": 1.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            _all(good, **bad)
    with pytest.raises(ConfigError, match="test_fraction must be in"):
        load_source("text_file", "train", path=str(good), test_fraction=1.0)
    with pytest.raises(ConfigError, match="accepts: path, errors"):
        load_source("text_file", "train", path=str(good), encoding="latin-1")
    with pytest.raises(DataError, match="no split 'validation'"):
        load_source("text_file", "validation", path=str(good))


def test_recipe_builds_a_text_dataset(tmp_path: Path) -> None:
    corpus = _file(tmp_path, "\n".join(f"line {i}" for i in range(40)).encode(), "c.txt")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(
        f"""
name: text_file_test
data:
  source: text_file
  params: {{path: {corpus}, test_fraction: 0.2, max_sentences: 10}}
teacher: {{model: minilm, outputs: [embedding]}}
student:
  model: static_embedding
  params: {{tokenizer: minilm, dim: 8}}
  outputs: [embedding]
losses: [{{name: cosine, adapter: linear}}]
output: {{dir: {tmp_path / "runs"}}}
"""
    )
    recipe = load_recipe(recipe_file)
    train = build_dataset(recipe, "train", True)
    assert isinstance(train, DistillDataset) and len(train) == 10
    expected = load_source("text_file", "train", path=str(corpus), test_fraction=0.2).texts
    assert train.split.texts == expected[:10]
    example = train[3]
    assert example["views"] == {"teacher": expected[3], "student": expected[3]}
    assert "target" not in example
    test = build_dataset(recipe, "test", False)
    assert set(test.split.texts).isdisjoint(train.split.texts)
