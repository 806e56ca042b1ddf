"""Data sources for your own files: arrays, image_folder, table, windows; and grouped splits."""

from __future__ import annotations

import json
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdistill.data import DistillDataset, Split
from crossdistill.data.clips import Clips
from crossdistill.data.grouping import (
    assign_by_column,
    assign_by_hash,
    hash_bucket,
    select,
)
from crossdistill.data.sources import load_source
from crossdistill.errors import ConfigError, DataError

# ----------------------------------------------------------------------------- helpers


def _straddle(split_of: list[str] | np.ndarray, groups: list) -> set:
    """Groups found in more than one split."""
    seen: dict = {}
    for g, s in zip(groups, split_of, strict=True):
        seen.setdefault(g, set()).add(str(s))
    return {g for g, s in seen.items() if len(s) > 1}


def _npz(tmp_path: Path, n: int = 60, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(
        path,
        x=rng.normal(size=(n, 4)).astype(np.float32),
        y=(np.arange(n) % 3).astype(np.int64),
        user=np.array([f"u{i % 12}" for i in range(n)]),
        **extra,
    )
    return path


def _image(path: Path, value: int, size: tuple[int, int] = (6, 5)) -> None:
    image = pytest.importorskip("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((*size, 3), value, dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    image.fromarray(pixels).save(path)


def _images(root: Path) -> Path:
    for c, name in enumerate(["dog", "cat", "bird"]):
        for i in range(8):
            _image(root / name / f"subject{i % 4}_{i}.png", 30 * c + i)
    return root


def _csv(tmp_path: Path, rows: list[str], name: str = "rows.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n")
    return path


def _table_rows(n: int = 40) -> list[str]:
    labels = ["2", "10", "1"]
    return ["a,b,label,user"] + [f"{i},{i * 0.5},{labels[i % 3]},user{i % 10}" for i in range(n)]


def _wav(path: Path, x: np.ndarray) -> str:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(x, -1, 32767 / 32768) * 32768).astype("<i2").tobytes())
    return path.name


# frames of a hand-made signal, and what each window of 4 steps with hop 2 must get
FRAMES = [0, 0, 1, 0, 2, 2, 1, 1, 1, 1, 0]
# windows at 0, 2, 4, 6 and, zero-padded, 8 (steps 8..10 and one of padding)
MAJORITY = [0, 2, 1, 1, 1]  # [0,0,1,0] [1,0,2,2] [2,2,1,1]: tie -> lowest [1,1,1,1] [1,1,0]
CENTRE = [1, 2, 1, 1, 0]  # steps 2, 4, 6, 8 and 10 (the centre 10 is the last real step)


def signals(split: str, frames: bool = True) -> Split:
    """Two recordings of 2 channels, 11 and 11 steps, with per-step labels (a source callable)."""
    x = torch.arange(2 * 2 * 11, dtype=torch.float32).reshape(2, 2, 11)
    fields = {"x": x}
    if frames:
        fields["frame_targets"] = torch.tensor([FRAMES, FRAMES[::-1]])
    return Split(
        fields,
        name=f"signals/{split}",
        targets=torch.tensor([1, 0]),
        class_names=["rest", "walk", "run"],
        default_side="x",
        meta={"recording": ["r0", "r1"]},
    )


# ----------------------------------------------------------------------------- grouping


def test_hash_assignment_keeps_groups_whole_is_stable_and_near_its_fractions() -> None:
    groups = [f"user{i % 1000}" for i in range(5000)]
    a = assign_by_hash(groups, test_fraction=0.2, val_fraction=0.1)
    assert a.names == ("train", "val", "test")
    assert not _straddle(a.split_of, groups)
    assert sum(a.group_counts.values()) == a.num_groups == 1000
    assert abs(a.group_counts["test"] / 1000 - 0.2) < 0.05
    assert abs(a.group_counts["val"] / 1000 - 0.1) < 0.04
    assert sum(a.counts.values()) == 5000
    # the same again, and a group's split does not depend on the other examples or their order
    again = assign_by_hash(groups[::-1], test_fraction=0.2, val_fraction=0.1)
    assert list(again.split_of[::-1]) == list(a.split_of)
    alone = assign_by_hash(groups[:7], test_fraction=0.2, val_fraction=0.1)
    assert list(alone.split_of) == list(a.split_of[:7])
    assert assign_by_hash(groups, 0.2).names == ("train", "test")


def test_the_hash_is_the_text_file_sources_and_numpy_ids_hash_like_python_ones() -> None:
    from crossdistill.domains.text.text_file import hash_bucket as text_bucket

    assert [hash_bucket(s) for s in ("a", "user7", "é")] == [
        text_bucket(s) for s in ("a", "user7", "é")
    ]
    assert hash_bucket(np.int64(3)) == hash_bucket(3) == hash_bucket("3")
    assert hash_bucket(np.str_("u1")) == hash_bucket("u1")


def test_a_split_column_is_taken_as_it_is_and_a_straddling_group_refused() -> None:
    a = assign_by_column(["train", "test", "val", "train"], ["a", "b", "c", "a"], "rows.csv")
    assert a.names == ("train", "val", "test")
    assert a.group_counts == {"train": 1, "val": 1, "test": 1} and a.num_groups == 3
    assert select(a, "train", "rows.csv").tolist() == [0, 3]
    with pytest.raises(
        DataError, match=r"rows\.csv: 1 groups are in two splits: 'a' in test/train"
    ):
        assign_by_column(["train", "test"], ["a", "a"], "rows.csv")


def test_select_names_missing_and_empty_splits() -> None:
    a = assign_by_hash(["one"], test_fraction=0.0)
    with pytest.raises(DataError, match="has no split 'val'") as caught:
        select(a, "val", "data.npz")
    assert "val_fraction" in str(caught.value)
    with pytest.raises(DataError, match=r"split 'test' is empty \(1 groups split by hash"):
        select(a, "test", "data.npz")
    with pytest.raises(ConfigError, match="test_fraction \\+ val_fraction must be below 1"):
        assign_by_hash(["a"], 0.6, 0.4)
    with pytest.raises(ConfigError, match="test_fraction must be in"):
        assign_by_hash(["a"], 1.0)


# ----------------------------------------------------------------------------- arrays


def test_arrays_fields_targets_class_names_and_group_split(tmp_path: Path) -> None:
    path = _npz(tmp_path)
    params = {"path": str(path), "targets": "y", "groups": "user", "test_fraction": 0.3}
    train = load_source("arrays", "train", **params)
    test = load_source("arrays", "test", **params)
    assert list(train.fields) == ["x"] and train.fields["x"].dtype == torch.float32
    assert train.class_names == ["0", "1", "2"] and train.targets.dtype == torch.int64
    assert len(train) + len(test) == 60 and len(test) > 0
    assert not set(train.groups) & set(test.groups)
    index = np.concatenate([train.meta["index"], test.meta["index"]])
    assert sorted(index.tolist()) == list(range(60))
    whole = np.load(path)
    assert torch.equal(train.fields["x"], torch.from_numpy(whole["x"][train.meta["index"]]))
    assert train.targets.tolist() == whole["y"][train.meta["index"]].tolist()
    named = load_source("arrays", "train", **params, class_names=["a", "b", "c"])
    assert named.class_names == ["a", "b", "c"]
    thirds = {
        s: load_source("arrays", s, **{**params, "val_fraction": 0.3}) for s in ("train", "val")
    }
    assert not set(thirds["train"].groups) & set(thirds["val"].groups)
    assert not set(thirds["val"].groups) & set(test.groups)  # test does not move
    assert len(thirds["train"]) + len(thirds["val"]) == len(train)


def test_arrays_from_a_folder_with_sides_a_split_key_and_string_labels(tmp_path: Path) -> None:
    folder = tmp_path / "arrays"
    folder.mkdir()
    n = 10
    np.save(folder / "all.npy", np.arange(n * 9, dtype=np.float32).reshape(n, 9))
    np.save(folder / "wrist.npy", np.arange(n * 3, dtype=np.float32).reshape(n, 3))
    np.save(folder / "label.npy", np.array(["walk", "run", "sit", "run", "walk"] * 2))
    np.save(folder / "split.npy", np.array(["train"] * 6 + ["test"] * 4))
    split = load_source(
        "arrays",
        "test",
        path=str(folder),
        targets="label",
        split_key="split",
        sides={"teacher": "all", "student": "wrist"},
    )
    assert len(split) == 4 and split.meta["index"].tolist() == [6, 7, 8, 9]
    assert split.class_names == ["run", "sit", "walk"]
    assert split.targets.tolist() == [0, 1, 0, 2]
    item = DistillDataset(split)[0]
    assert item["views"]["teacher"].shape == (9,) and item["views"]["student"].shape == (3,)


def test_arrays_float_targets_are_regression(tmp_path: Path) -> None:
    path = _npz(tmp_path, score=np.linspace(0, 1, 60))
    split = load_source("arrays", "train", path=str(path), fields={"input": "x"}, targets="score")
    assert split.targets.dtype == torch.float32 and split.class_names == []
    assert DistillDataset(split)[0]["target"].dtype == torch.float32
    with pytest.raises(DataError, match=r"regression.*class_names"):
        load_source(
            "arrays",
            "train",
            path=str(path),
            fields={"input": "x"},
            targets="score",
            class_names=["a"],
        )


def test_arrays_errors_name_keys_and_lengths(tmp_path: Path) -> None:
    path = _npz(tmp_path)
    with pytest.raises(DataError, match=r"has no array 'label'; it holds \['user', 'x', 'y'\]"):
        load_source("arrays", "train", path=str(path), targets="label")
    np.savez(tmp_path / "short.npz", x=np.zeros((10, 2)), y=np.zeros(9, dtype=np.int64))
    with pytest.raises(
        DataError, match=r"different lengths: field 'x' \('x'\) 10, targets \('y'\) 9"
    ):
        load_source("arrays", "train", path=str(tmp_path / "short.npz"), targets="y")
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 2)), b=np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="say which one each view reads"):
        load_source("arrays", "train", path=str(tmp_path / "two.npz"))
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="'x' cannot be read without pickle"):
        load_source("arrays", "train", path=str(tmp_path / "obj.npz"))
    np.savez(tmp_path / "neg.npz", x=np.zeros((3, 2)), y=np.array([0, -1, 1]))
    with pytest.raises(DataError, match="hold -1; classes start at 0"):
        load_source("arrays", "train", path=str(tmp_path / "neg.npz"), targets="y")
    with pytest.raises(DataError, match="does not exist"):
        load_source("arrays", "train", path=str(tmp_path / "nope.npz"))


# ----------------------------------------------------------------------------- image_folder


def test_image_folder_classes_modes_and_a_hash_split_by_subject(tmp_path: Path) -> None:
    root = _images(tmp_path / "images")
    params = {"root": str(root), "group": r"^(subject\d+)_", "test_fraction": 0.5}
    train = load_source("image_folder", "train", **params)
    test = load_source("image_folder", "test", **params)
    assert train.class_names == ["bird", "cat", "dog"]
    x = train.fields["input"]
    assert x.dtype == torch.uint8 and x.shape[1:] == (3, 6, 5)
    assert len(train) + len(test) == 24 and len(test) > 0
    assert not set(train.groups) & set(test.groups)
    path = train.meta["path"][0]
    assert train.targets[0] == train.class_names.index(path.split("/")[0])
    assert x[0, :, 0, 0].tolist() == [255, 0, 0]
    gray = load_source("image_folder", "train", **params, mode="L", size=[4, 3])
    assert gray.fields["input"].shape[1:] == (1, 4, 3)
    # without a group pattern every file is its own group: all of them, each once
    files = [
        p
        for s in ("train", "test")
        for p in load_source("image_folder", s, root=str(root)).meta["path"]
    ]
    assert sorted(files) == sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


def test_image_folder_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _image(root / "train" / "cat" / "a.png", 1)
    _image(root / "train" / "dog" / "b.png", 2)
    _image(root / "test" / "dog" / "c.png", 3)
    test = load_source("image_folder", "test", root=str(root))
    assert test.class_names == ["cat", "dog"] and test.targets.tolist() == [1]
    assert test.meta["path"] == ["test/dog/c.png"]
    with pytest.raises(DataError, match="has no split 'val'"):
        load_source("image_folder", "val", root=str(root))
    with pytest.raises(ConfigError, match="has split folders"):
        load_source("image_folder", "train", root=str(root), test_fraction=0.1)


def test_image_folder_errors_name_the_files(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _image(root / "cat" / "a.png", 1)
    _image(root / "cat" / "b.png", 2, size=(7, 5))
    with pytest.raises(DataError, match=r"different sizes: .*a\.png is 6x5, .*b\.png is 7x5"):
        load_source("image_folder", "train", root=str(root), test_fraction=0.0)
    assert len(load_source("image_folder", "train", root=str(root), test_fraction=0.0, size=5)) == 2
    (root / "cat" / "b.png").write_bytes((root / "cat" / "a.png").read_bytes()[:60])
    with pytest.raises(DataError, match=r"cannot decode .*b\.png"):
        load_source("image_folder", "train", root=str(root), test_fraction=0.0)
    with pytest.raises(DataError, match="does not match"):
        load_source("image_folder", "train", root=str(root), group=r"^subject(\d)")


# ----------------------------------------------------------------------------- table


def test_table_csv_features_targets_and_groups(tmp_path: Path) -> None:
    path = _csv(tmp_path, _table_rows())
    params = {"path": str(path), "features": ["a", "b"], "target": "label", "group": "user"}
    train = load_source("table", "train", **params, test_fraction=0.3)
    test = load_source("table", "test", **params, test_fraction=0.3)
    assert train.class_names == ["1", "2", "10"]  # integers in numeric order
    x = train.fields["input"]
    assert x.dtype == torch.float32 and x.shape == (len(train), 2)
    row = int(x[0, 0])
    assert train.targets[0] == train.class_names.index(["2", "10", "1"][row % 3])
    assert train.meta["line"][0] == row + 2  # the header is line 1
    assert len(train) + len(test) == 40 and len(test) > 0
    assert not set(train.groups) & set(test.groups)


def test_table_json_lines_with_text_sides_and_a_split_column(tmp_path: Path) -> None:
    rows = [
        {"text": f"sentence {i}", "f": i, "label": ["neg", "pos"][i % 2], "split": s}
        for i, s in enumerate(["train", "train", "test", "val", "test"])
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    split = load_source(
        "table",
        "test",
        path=str(path),
        features=["f"],
        text="text",
        target="label",
        split_column="split",
        sides={"teacher": "text", "student": "input"},
    )
    assert split.fields["text"] == ["sentence 2", "sentence 4"]
    assert split.fields["input"].tolist() == [[2.0], [4.0]]
    assert split.class_names == ["neg", "pos"] and split.targets.tolist() == [0, 0]
    item = DistillDataset(split)[1]
    assert item["views"]["teacher"] == "sentence 4" and item["views"]["student"].tolist() == [4.0]
    assert len(load_source("table", "val", path=str(path), text="text", split_column="split")) == 1
    with pytest.raises(ConfigError, match="say which one each view reads"):
        load_source("table", "test", path=str(path), features=["f"], text="text")


def test_table_errors_name_file_line_and_column(tmp_path: Path) -> None:
    rows = _table_rows(5)
    bad = _csv(tmp_path, [*rows[:3], "x1,2,1,u", *rows[3:]])
    with pytest.raises(DataError, match=r"rows\.csv, line 4, column 'a': 'x1' is not a number"):
        load_source("table", "train", path=str(bad), features=["a", "b"])
    missing = _csv(tmp_path, [*rows[:2], "1,,2,u"])
    with pytest.raises(DataError, match=r"line 3, column 'b': the value is missing"):
        load_source("table", "train", path=str(missing), features=["a", "b"])
    nan = _csv(tmp_path, [*rows[:2], "nan,1,2,u"])
    with pytest.raises(DataError, match=r"line 3, column 'a': 'nan' is not a finite number"):
        load_source("table", "train", path=str(nan), features=["a", "b"])
    with pytest.raises(DataError, match=r"has no column 'age'; its columns are \['a', 'b'"):
        load_source("table", "train", path=str(bad), features=["age"])
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"f": 1}\n{"g": 2}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl, line 2, column 'f': the value is missing"):
        load_source("table", "train", path=str(jsonl), features=["f"])


# ----------------------------------------------------------------------------- windows


@pytest.mark.parametrize(("label", "expected"), [("majority", MAJORITY), ("centre", CENTRE)])
def test_windows_labels_from_per_step_labels(label: str, expected: list[int]) -> None:
    split = load_source("windows", "train", source=signals, size=4, hop=2, pad="zeros", label=label)
    first = split.meta["source_index"] == 0
    assert split.targets[torch.from_numpy(first)].tolist() == expected
    assert split.class_names == ["rest", "walk", "run"]
    assert "frame_targets" not in split.fields


def test_windows_cut_every_channel_pad_and_keep_the_source_index() -> None:
    split = load_source("windows", "train", source=signals, size=4, hop=2, pad="zeros")
    x = split.fields["x"]
    assert x.shape == (10, 2, 4) and len(split) == 10
    assert split.meta["start"].tolist() == [0, 2, 4, 6, 8] * 2
    assert split.meta["source_index"].tolist() == [0] * 5 + [1] * 5
    assert split.groups.tolist() == split.meta["source_index"].tolist()
    assert split.meta["recording"] == ["r0"] * 5 + ["r1"] * 5
    assert x[1].tolist() == [[2, 3, 4, 5], [13, 14, 15, 16]]
    assert x[4].tolist() == [[8, 9, 10, 0], [19, 20, 21, 0]]  # the tail, zero-padded
    assert split.targets.tolist() == [1] * 5 + [0] * 5  # label: source
    dropped = load_source("windows", "train", source=signals, size=4, hop=2)
    assert dropped.meta["start"].tolist() == [0, 2, 4, 6] * 2
    assert DistillDataset(split)[4]["views"]["student"].shape == (2, 4)


def test_windows_zscore_each_window_and_channel() -> None:
    split = load_source(
        "windows", "train", source=signals, size=4, hop=2, pad="zeros", normalize="zscore"
    )
    x = split.fields["x"]
    assert x.dtype == torch.float32
    full = x[:4]
    assert torch.allclose(full.mean(-1), torch.zeros(4, 2), atol=1e-6)
    assert torch.allclose(full.std(-1, unbiased=False), torch.ones(4, 2), atol=1e-5)
    tail = x[4, :, :3]  # three real steps, then padding that stays zero
    assert torch.allclose(tail.mean(-1), torch.zeros(2), atol=1e-6) and x[4, :, 3].eq(0).all()


def test_windows_errors() -> None:
    with pytest.raises(DataError, match=r"window of 12 steps is longer than every signal .*11"):
        load_source("windows", "train", source=signals, size=12)
    with pytest.raises(DataError, match="per-time-step labels from field 'frame_targets'"):
        load_source(
            "windows",
            "train",
            source=signals,
            params={"frames": False},
            size=4,
            label="majority",
        )
    with pytest.raises(ConfigError, match="pad must be one of"):
        load_source("windows", "train", source=signals, size=4, pad="reflect")
    with pytest.raises(DataError, match=r"'recording' .* is not a signal"):
        load_source("windows", "train", source=signals, size=4, fields=["recording"])


def test_windows_of_a_registered_source_keep_its_split(tmp_path: Path) -> None:
    path = tmp_path / "sensors.npz"
    rng = np.random.default_rng(1)
    np.savez(path, x=rng.normal(size=(20, 3, 32)).astype(np.float32), y=np.arange(20) % 2)
    inner = {"path": str(path), "targets": "y", "test_fraction": 0.25}
    test = load_source("arrays", "test", **inner)
    windows = load_source("windows", "test", source="arrays", params=inner, size=16, hop=8)
    assert len(windows) == 3 * len(test)
    assert torch.equal(windows.fields["x"][0], test.fields["x"][0, :, :16])
    assert windows.targets.tolist() == test.targets.repeat_interleave(3).tolist()


def test_long_clips_are_reported_and_windows_use_every_sample(tmp_path: Path) -> None:
    t = np.arange(48000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    lines = [
        {"text": "long", "audio": _wav(tmp_path / "long.wav", tone)},
        {"text": "short", "audio": _wav(tmp_path / "short.wav", tone[:12000])},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    params = {"path": str(path), "test_fraction": 0.0, "max_seconds": 1.0}
    with pytest.warns(UserWarning, match=r"1 clips longer than max_seconds=1.0.*line 1 \(long"):
        load_source("audio_files", "train", **params)
    with pytest.warns(UserWarning):
        split = load_source("windows", "train", source="audio_files", params=params, size=8000)
    clips = split.fields["speech"]
    assert isinstance(clips, Clips) and clips.max_samples == 8000
    assert split.meta["source_index"].tolist() == [0] * 6 + [1]
    assert split.fields["text"] == ["long"] * 6 + ["short"]
    assert split.side("student") == "speech" and split.side("teacher") == "text"
    assert torch.allclose(clips[5], torch.from_numpy(tone[40000:48000]).float(), atol=1e-4)


# ----------------------------------------------------------------------------- every source


def _every_source(tmp_path: Path) -> dict[str, Callable[[], Split]]:
    npz = _npz(tmp_path)
    root = _images(tmp_path / "images")
    table = _csv(tmp_path, _table_rows())
    return {
        "arrays": lambda: load_source("arrays", "train", path=str(npz), targets="y", groups="user"),
        "image_folder": lambda: load_source("image_folder", "train", root=str(root)),
        "table": lambda: load_source(
            "table", "train", path=str(table), features=["a", "b"], target="label"
        ),
        "windows": lambda: load_source("windows", "train", source=signals, size=4, hop=2),
    }


@pytest.mark.parametrize("name", ["arrays", "image_folder", "table", "windows"])
def test_every_source_feeds_a_dataset_and_has_a_stable_fingerprint(
    tmp_path: Path, name: str
) -> None:
    build = _every_source(tmp_path)[name]
    split = build()
    dataset = DistillDataset(split)
    item = dataset[len(dataset) - 1]
    assert isinstance(item["views"]["teacher"], torch.Tensor)
    assert item["target"].dtype == torch.int64
    assert 0 <= int(item["target"]) < split.num_classes
    assert split.fingerprint() == build().fingerprint()
    assert split.origin is not None and split.origin["source"] == name
