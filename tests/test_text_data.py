"""Text data: the WordNet ``sentences`` source and TextDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from crossdistill.data import DATA_SOURCES, NoAugment, RandomCropFlip, load_source
from crossdistill.data.dataset import DistillDataset
from crossdistill.data.split import TextSplit
from crossdistill.domains.text import sentences
from crossdistill.domains.text.sentences import CLASS_NAMES, parse_gloss, synset_split
from crossdistill.errors import ConfigError, DataError

WORDNET = Path("/usr/share/wordnet")
LICENCE = [
    "  1 This software and database is being provided to you, the LICENSEE, by  ",
    '  2 THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON  ',
    "  3   ",
]


def _offsets(pos: str, split: str, n: int) -> list[str]:
    """The first ``n`` 8-digit offsets whose synset falls in ``split``."""
    found = [f"{o:08d}" for o in range(1000, 200_000, 7) if synset_split(pos, f"{o:08d}") == split]
    return found[:n]


def _line(offset: str, lex: int, pos: str, gloss: str) -> str:
    # the real layout: offset lex_filenum ss_type w_cnt word lex_id p_cnt [pointers] | gloss
    return f"{offset} {lex:02d} {pos} 01 word 0 001 @ 00001740 {pos} 0000 | {gloss}  "


def _write(root: Path, name: str, lines: list[str]) -> None:
    (root / f"data.{name}").write_bytes("\n".join([*LICENCE, *lines, ""]).encode("latin-1"))


@pytest.fixture
def wordnet(tmp_path: Path) -> Path:
    """A tiny WordNet with two train and one test noun synset, and one synset per other file."""
    train, test = _offsets("n", "train", 2), _offsets("n", "test", 1)
    _write(
        tmp_path,
        "noun",
        [
            _line(train[0], 5, "n", 'a caf\xe9  animal;   "the dog  barked"; "it ran"'),
            _line(train[1], 18, "n", 'a person; "the dog barked"; "ok"'),
            _line(test[0], 20, "n", 'a held-out plant; "the plant grew"'),
        ],
    )
    _write(tmp_path, "verb", [_line(_offsets("v", "train", 1)[0], 38, "v", "move fast")])
    _write(tmp_path, "adj", [_line(_offsets("a", "train", 1)[0], 0, "s", "a person;")])
    _write(tmp_path, "adv", [_line(_offsets("r", "train", 1)[0], 2, "r", 'quickly; "ran fast"')])
    return tmp_path


def test_split_hash_is_pinned() -> None:
    # a change to the hash would silently move held-out synsets into training
    assert synset_split("n", "00001740") == "train"
    assert synset_split("v", "00002312") == "test"
    assert synset_split("r", "00002098") == "test"
    share = np.mean([synset_split("n", f"{o:08d}") == "test" for o in range(20_000)])
    assert 0.04 < share < 0.06


def test_parse_gloss() -> None:
    assert parse_gloss('a thing; "one"; "two" - Shakespeare') == ("a thing", ["one", "two"])
    assert parse_gloss("no examples;") == ("no examples", [])


def test_fake_wordnet_glosses_examples_dedup_and_labels(wordnet: Path) -> None:
    train = load_source("sentences", "train", root=str(wordnet))
    assert train.name == "sentences/train"
    assert train.class_names == CLASS_NAMES and train.num_classes == 45
    # latin-1 decoded, whitespace normalised, "ok" too short, the second "the dog barked" and the
    # adjective's "a person" are duplicates of earlier sentences; files read noun, verb, adj, adv
    assert train.texts == [
        "a café animal",
        "the dog barked",
        "it ran",
        "a person",
        "move fast",
        "quickly",
        "ran fast",
    ]
    assert train.targets.tolist() == [5, 5, 5, 18, 38, 2, 2]
    test = load_source("sentences", "test", root=str(wordnet))
    assert test.texts == ["a held-out plant", "the plant grew"]
    assert test.targets.tolist() == [20, 20]


def test_include_and_max_sentences(wordnet: Path) -> None:
    glosses = sentences.load("train", root=str(wordnet), include=("glosses",))
    assert glosses.texts == ["a café animal", "a person", "move fast", "quickly"]
    examples = sentences.load("train", root=str(wordnet), include=["examples"])
    assert examples.texts == ["the dog barked", "it ran", "ran fast"]
    first = sentences.load("train", root=str(wordnet), max_sentences=2)
    assert first.texts == ["a café animal", "the dog barked"] and len(first.targets) == 2
    with pytest.raises(ConfigError, match="include"):
        sentences.load("train", root=str(wordnet), include=("definitions",))
    with pytest.raises(ConfigError, match="max_sentences"):
        sentences.load("train", root=str(wordnet), max_sentences=0)
    with pytest.raises(DataError, match="no split 'valid'"):
        sentences.load("valid", root=str(wordnet))


def test_missing_or_broken_wordnet(tmp_path: Path, wordnet: Path) -> None:
    assert "sentences" in DATA_SOURCES
    with pytest.raises(DataError, match=r"WordNet 3\.0 not found") as info:
        load_source("sentences", "train", root=str(tmp_path / "nowhere"))
    assert info.value.hint == "apt-get install -y wordnet-base"
    (wordnet / "data.adv").write_bytes(b"  licence\nnot a synset line | gloss\n")
    with pytest.raises(DataError, match=r"data\.adv:2: not a WordNet synset line"):
        load_source("sentences", "train", root=str(wordnet))


def test_text_split_validation() -> None:
    with pytest.raises(DataError, match="2 in field 'text', 1 targets"):
        TextSplit(["ab", "cd"], torch.tensor([0]), ["x"], "t")
    with pytest.raises(DataError, match="int64"):
        TextSplit(["ab"], torch.tensor([0.0]), ["x"], "t")
    with pytest.raises(DataError, match="list of str"):
        TextSplit(["ab", 3], None, [], "t")  # type: ignore[list-item]
    assert len(TextSplit(["ab"], None, [], "t")) == 1


def test_text_dataset_interface_and_collate() -> None:
    split = TextSplit(["alpha", "beta", "gamma"], torch.tensor([2, 0, 1]), ["a", "b", "c"], "t")
    ds = DistillDataset(split, augmentation=NoAugment(), seed=3, slots=2)
    assert (len(ds), ds.num_classes, ds.class_names, ds.seed, ds.slots) == (
        3,
        3,
        split.class_names,
        3,
        2,
    )
    assert isinstance(ds.augmentation, NoAugment) and ds.views == ("teacher", "student")
    ds.set_epoch(4)
    assert ds.epoch == 4
    params = ds.slot_params(1, 1)
    assert params.dtype == np.float64 and params.shape == (0,)
    item = ds[-1]
    assert item["id"] == 2 and item["views"] == {"teacher": "gamma", "student": "gamma"}
    assert (
        item["target"].dtype == torch.int64 and item["target"].shape == () and item["target"] == 1
    )
    assert item["aug"].dtype == torch.float32 and item["aug"].shape == (0,)
    assert ds.example(0, params)["views"]["student"] == "alpha"
    batch = default_collate([ds[0], ds[1]])
    assert batch["views"] == {"teacher": ["alpha", "beta"], "student": ["alpha", "beta"]}
    assert batch["target"].tolist() == [2, 0] and batch["id"].tolist() == [0, 1]
    assert batch["aug"].shape == (2, 0)
    batches = list(DataLoader(ds, batch_size=2))
    assert [b["views"]["student"] for b in batches] == [["alpha", "beta"], ["gamma"]]
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds.slot_params(0, 2)
    with pytest.raises(DataError, match="got 3 augmentation parameters, NoAugment"):
        ds.example(0, np.zeros(3))
    with pytest.raises(ConfigError, match="no tensor field to augment"):
        DistillDataset(split, augmentation=RandomCropFlip())
    with pytest.raises(ConfigError, match="augment_slots"):
        DistillDataset(split, slots=0)
    with pytest.raises(ConfigError, match="distinct"):
        DistillDataset(split, views=("a", "a"))


def test_unlabelled_text_dataset_has_no_target() -> None:
    ds = DistillDataset(TextSplit(["alpha"], None, [], "u"), views=("teacher",))
    item = ds[0]
    assert sorted(item) == ["aug", "id", "views"] and item["views"] == {"teacher": "alpha"}
    assert "target" not in default_collate([ds[0]])


@pytest.mark.skipif(
    not (WORDNET / "data.noun").is_file(),
    reason="WordNet 3.0 is not installed: apt-get install -y wordnet-base",
)
def test_real_wordnet() -> None:
    train = load_source("sentences", "train")
    test = load_source("sentences", "test")
    assert len(train) >= 100_000 and len(test) >= 5_000
    assert not set(train.texts) & set(test.texts)
    assert len(set(train.texts)) == len(train)
    assert int(train.targets.min()) == 0 and int(train.targets.max()) == 44
    assert min(len(t) for t in train.texts) >= 3
