"""The Split protocol: per-side fields, fingerprints over contents, saved splits, and the docs'
examples of bringing one's own data (docs/own-teacher-and-data.md) and one's own loss
(docs/extending.md), executed as the pages print them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import crossdistill
from crossdistill import Run, Split
from crossdistill.data import ArraySplit, Clips, DistillDataset, PairSplit, RankingSplit, TextSplit
from crossdistill.data.saved import load_split, save_split
from crossdistill.errors import DataError
from crossdistill.losses import LOSSES, build_loss

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _sensors(n: int = 96, seed: int = 0) -> tuple[Split, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 9, generator=g)
    y = (x[:, 0] + x[:, 4] > 0).long() + (x[:, 1] > 1).long()
    split = Split(
        {"all": x, "wrist": x[:, :3].clone()},
        name="sensors/train",
        targets=y,
        class_names=["walk", "run", "sit"],
        sides={"teacher": "all", "student": "wrist"},
    )
    return split, x


def test_each_side_reads_its_own_field() -> None:
    split, x = _sensors()
    example = DistillDataset(split)[5]
    torch.testing.assert_close(example["views"]["teacher"], x[5])
    torch.testing.assert_close(example["views"]["student"], x[5, :3])
    assert example["target"].dtype == torch.int64
    with pytest.raises(DataError, match="does not say what the 'peer' side reads"):
        DistillDataset(split, views=("teacher", "student", "peer"))


def test_the_docs_split_example_trains_and_reopens(tmp_path: Path, monkeypatch) -> None:
    """docs/own-teacher-and-data.md's Split example, run as printed: a teacher on all nine
    channels, a student on three, from Python, into a run that the commands can reopen (its
    data kept in the run, its sides too)."""
    code = _docs_block("own-teacher-and-data.md", "a teacher that reads all 9 sensor channels")
    train, x = _sensors(96, 0)
    test, x_test = _sensors(48, 1)
    names = {
        "x": x,
        "y": train.targets,
        "test": test,
        "teacher": nn.Sequential(nn.Linear(9, 3)),
        "student": crossdistill.build_model(
            "mlp", {"in_features": 3, "num_classes": 3, "hidden": [8]}
        ),
    }
    monkeypatch.chdir(tmp_path)  # its run folder goes under tmp_path
    exec(compile(code, "docs/own-teacher-and-data.md", "exec"), names)
    # the page's Split is the one _sensors builds (same fields, targets, sides)
    assert names["train"].fingerprint() == train.fingerprint()
    run = Run.open(tmp_path / "runs" / "sensors")
    (batch,) = list(run.eval_data())
    torch.testing.assert_close(batch["views"]["student"], x_test[:, :3])
    torch.testing.assert_close(batch["views"]["teacher"], x_test)
    assert run.split().class_names == ["walk", "run", "sit"]
    assert 0.0 <= run.final_metrics()["accuracy"] <= 1.0


def test_a_fingerprint_is_of_the_contents() -> None:
    a, _ = _sensors()
    b, x = _sensors()
    assert a.fingerprint() == b.fingerprint()
    renamed = Split(dict(a.fields), name="other", targets=a.targets, sides=a.sides)
    assert renamed.fingerprint() == a.fingerprint()  # a name is not content
    changed = x.clone()
    changed[0, 8] += 1.0  # a field the student never reads is still content
    other = Split({"all": changed, "wrist": a.fields["wrist"]}, name="s", targets=a.targets)
    assert other.fingerprint() != a.fingerprint()
    relabelled = Split(dict(a.fields), name="s", targets=1 - a.targets)
    assert relabelled.fingerprint() != a.fingerprint()
    # ranking lists: every candidate counts (the bug a store keyed by its digest once had)
    r1 = RankingSplit(["q"], [["pos", "neg"]], "r")
    r2 = RankingSplit(["q"], [["pos", "another neg"]], "r")
    assert r1.fingerprint() != r2.fingerprint()


def _kinds() -> list[Split]:
    clips = Clips.from_list([np.linspace(-1, 1, 50), np.zeros(30)], 16000, 40)
    pair = PairSplit(
        {"text": ["a bird", "a bell"], "speech": clips},
        torch.tensor([0, 1]),
        ["animal", "thing"],
        "pairs",
        meta={"text_id": np.array([0, 1]), "voice": np.array(["m1", "f2"])},
    )
    return [
        ArraySplit(
            torch.arange(24, dtype=torch.uint8).reshape(2, 1, 3, 4),
            torch.tensor([1, 0]),
            ["a", "b"],
            "arrays",
        ),
        TextSplit(["one", "two"], None, [], "texts"),
        pair,
        RankingSplit(["q1", "q2"], [["p1", "n1"], ["p2", "n2"]], "ranking"),
        _sensors(4)[0],
    ]


@pytest.mark.parametrize("split", _kinds(), ids=lambda s: s.name)
def test_a_saved_split_reads_back_the_same_examples(split: Split, tmp_path: Path) -> None:
    again = load_split(save_split(split, tmp_path / "saved"))
    assert again.fingerprint() == split.fingerprint()
    assert (again.name, again.class_names, again.sides) == (
        split.name,
        split.class_names,
        split.sides,
    )
    for view in ("teacher", "student"):
        for i in range(len(split)):
            a, b = (DistillDataset(s, views=(view,))[i] for s in (split, again))
            assert repr(a) == repr(b)
    assert sorted(again.meta) == sorted(split.meta)


def test_a_saved_split_refuses_what_it_cannot_hold(tmp_path: Path) -> None:
    odd = Split({"x": [object(), object()]}, name="odd")
    with pytest.raises(DataError, match="field 'x': cannot save items of type"):
        save_split(odd, tmp_path / "odd")
    assert not (tmp_path / "odd").exists()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "split.json").write_text("{")
    with pytest.raises(DataError, match="is not a readable saved split"):
        load_split(tmp_path / "broken")


def _docs_block(page: str, after: str) -> str:
    """The ```python block of docs/PAGE that holds the text ``after``, else the next one."""
    text = (DOCS / page).read_text()
    at = text.index(after)
    for block in re.finditer(r"```python\n(.*?)```", text, re.S):
        if block.end() > at:
            return block.group(1)
    raise AssertionError(f"docs/{page} has no Python example at {after!r}")


def test_the_docs_loss_example_registers_and_builds() -> None:
    code = _docs_block("extending.md", "A loss in full")
    try:
        exec(compile(code, "docs/extending.md", "exec"), {})
        loss = build_loss("soft_mse", {"temperature": 2.0})
        s, t = torch.randn(4, 5), torch.randn(4, 5)
        expected = nn.functional.mse_loss(torch.softmax(s / 2, 1), torch.softmax(t / 2, 1))
        torch.testing.assert_close(loss({"logits": s}, {"logits": t}), expected)
    finally:
        LOSSES._items.pop("soft_mse", None)
