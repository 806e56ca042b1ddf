"""``train.prequential`` (test, then train) and ``data.order: given`` (a stream in its order)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import rewind_run
from crossdistill import distill
from crossdistill.build import build_loaders
from crossdistill.config import load_recipe, validate_recipe
from crossdistill.data import load_source
from crossdistill.errors import ConfigError
from crossdistill.pipeline import run_recipe
from crossdistill.train.checkpoint import list_checkpoints, load_checkpoint
from crossdistill.train.prequential import Prequential, _right_and_scored

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"progress": False, "device": "cpu"}
N, BATCH = 192, 32


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return TensorDataset(x, y)


def _student(seed: int = 1) -> nn.Module:
    # dropout: scoring must neither draw random numbers nor score in training mode
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def _train(student: nn.Module, run_dir: Path | None = None, **train: Any) -> Any:
    loader = DataLoader(_data(), batch_size=BATCH, shuffle=False)
    settings = {"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.5}, **QUIET, **train}
    return distill(None, student, loader, losses=["ce"], run_dir=run_dir, **settings)


def _epoch_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


def test_each_batch_is_scored_by_the_model_before_its_step(tmp_path: Path) -> None:
    """Replayed from the weights before every step (the start, then a checkpoint per step)."""
    student = _student()
    start = copy.deepcopy(student.state_dict())
    run_dir = tmp_path / "run"
    _train(student, run_dir, prequential=True, checkpoint_every_steps=1, keep_checkpoints=0)
    states = [start] + [
        {k.removeprefix("student.model."): v for k, v in load_checkpoint(path)["trainable"].items()}
        for path in list_checkpoints(run_dir / "checkpoints")
    ]
    assert len(states) == N // BATCH + 1
    x, y = _data().tensors
    replay, right = _student(), 0
    replay.eval()
    for i in range(N // BATCH):
        replay.load_state_dict(states[i])
        part = slice(i * BATCH, (i + 1) * BATCH)
        with torch.no_grad():
            right += int((replay(x[part]).argmax(1) == y[part]).sum())
    (record,) = _epoch_records(run_dir)
    assert record["prequential_accuracy"] == pytest.approx(right / N, abs=1e-12)
    assert 0 < right < N  # neither trivially right nor wrong: the replay is informative


def test_scoring_changes_no_weight() -> None:
    scored, plain = _student(), _student()
    _train(scored, prequential=True, epochs=2)
    _train(plain, epochs=2)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in scored.state_dict().items())


def test_peers_are_scored_under_their_names(tmp_path: Path) -> None:
    loader = DataLoader(_data(), batch_size=BATCH, shuffle=False)
    distill(
        None,
        _student(),
        loader,
        losses=["ce", {"name": "ce", "label": "ce_wide", "sides": {"student": "wide"}}],
        peers={"wide": _student(2)},
        run_dir=tmp_path / "run",
        epochs=1,
        prequential=True,
        **QUIET,
    )
    (record,) = _epoch_records(tmp_path / "run")
    assert {"prequential_accuracy", "wide/prequential_accuracy"} <= set(record)
    assert record["prequential_accuracy"] != record["wide/prequential_accuracy"]


def test_a_run_resumed_mid_epoch_keeps_the_epochs_counts(tmp_path: Path) -> None:
    def recipe(name: str) -> Any:
        return load_recipe(
            ROOT / "recipes" / "digits" / "teacher.yaml",
            [
                f"output.dir={tmp_path}",
                f"name={name}",
                "train.progress=false",
                "train.epochs=2",
                "train.prequential=true",
                "data.limit_train=512",
                "train.checkpoint_every_steps=3",
                "train.keep_checkpoints=0",
            ],
        )

    whole = run_recipe(recipe("whole"))
    cut = recipe("cut")
    run_recipe(cut)
    rewind_run(cut.run_dir, "epoch-0001-step")  # mid-way through the second epoch
    run_recipe(cut, resume=True)
    key = "prequential_accuracy"
    expected = [r[key] for r in _epoch_records(whole.run_dir)]
    # the cut run's log: both epochs of its first try, then the second epoch resumed
    got = [r[key] for r in _epoch_records(cut.run_dir)]
    assert [got[0], got[-1]] == expected
    assert expected[1] > expected[0]  # the second epoch's predictions come from a better model


def test_given_order_reads_the_split_as_it_is(tmp_path: Path) -> None:
    def first_targets(*overrides: str) -> list[list[int]]:
        recipe = load_recipe(
            ROOT / "recipes" / "digits" / "teacher.yaml",
            [f"output.dir={tmp_path}", "data.limit_train=256", *overrides],
        )
        loader, _ = build_loaders(recipe, torch.device("cpu"))
        epochs = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            epochs.append(next(iter(loader))["target"].tolist())
        return epochs

    given = first_targets("data.order=given", "data.limit_mode=first")
    shuffled = first_targets("data.limit_mode=first")
    targets = load_source("digits", "train").targets[:64]
    assert given == [list(map(int, targets))] * 2
    assert shuffled[0] != shuffled[1] and shuffled[0] != given[0]


def test_unlabelled_data_or_a_model_without_logits_is_named() -> None:
    scorer = Prequential(torch.device("cpu"), None)
    x = torch.randn(8, 4)
    with pytest.raises(ConfigError, match="has none"):
        scorer.score({"student": _student()}, {"views": {"student": x}})

    class Embedder(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"embedding": x}

    batch = {"views": {"student": x}, "target": torch.zeros(8, dtype=torch.long)}
    with pytest.raises(ConfigError, match=r"the student's `logits`, and it emits \['embedding'\]"):
        scorer.score({"student": Embedder()}, batch)


@pytest.mark.parametrize(
    ("logits", "target", "right", "scored"),
    [
        # classes: the arg-max against the label
        ([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]], [0, 1, 1], 2, 3),
        # frames with padding (-100) left out
        ([[[2.0, 1.0], [0.0, 3.0], [5.0, 0.0]]], [[0, 0, -100]], 1, 2),
        # yes/no decisions: a trailing 1, by the logit's sign
        ([[0.5], [-1.0], [2.0]], [1.0, 1.0, 0.0], 1, 3),
        # multi-label: as wide as the logits
        ([[0.5, -1.0], [2.0, 3.0]], [[1.0, 0.0], [0.0, 1.0]], 3, 4),
    ],
)
def test_right_and_scored(logits: list, target: list, right: int, scored: int) -> None:
    got = _right_and_scored(torch.tensor(logits), torch.tensor(target))
    assert (int(got[0]), int(got[1])) == (right, scored)


def test_logits_that_do_not_fit_the_labels_are_named() -> None:
    with pytest.raises(ConfigError, match=r"logits \(2, 3\) do not fit the labels \(4,\)"):
        _right_and_scored(torch.zeros(2, 3), torch.zeros(4, dtype=torch.long))


def test_each_task_of_a_continual_sequence_is_scored(tmp_path: Path) -> None:
    from test_continual import _recipe as continual_recipe

    raw = continual_recipe(tmp_path).model_dump(mode="json")
    raw["train"]["prequential"] = True
    raw["data"]["order"] = "given"
    run_recipe(validate_recipe(raw))
    for task in ("task1", "task2"):
        (record,) = _epoch_records(tmp_path / "seq" / task)
        assert 0 <= record["prequential_accuracy"] <= 1
