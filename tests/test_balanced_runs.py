"""Class-balanced losses and weight schedules in a whole run: the class counts come from the
training data the run reads (the carve and the limit applied), and a term may warm up from 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import crossdistill
from crossdistill.build import build_dataset, class_labels
from crossdistill.config import load_recipe
from crossdistill.errors import ConfigError, DataError
from crossdistill.pipeline import run_recipe

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "recipes" / "digits" / "teacher.yaml"
BALANCED = 'losses=[{"name": "ce", "params": {"class_weights": "balanced"}}]'


SEEN: list[torch.Tensor] = []


class Grab(crossdistill.Callback):
    """Keeps the class weights the run's ce loss trains with."""

    def on_start(self, trainer: Any) -> None:
        SEEN.append(trainer.distiller.losses["ce"].class_weight.detach().cpu().clone())


def test_a_run_counts_the_classes_it_trains_on(tmp_path: Path) -> None:
    SEEN.clear()
    overrides = [
        "train.device=cpu",
        "train.progress=false",
        "train.epochs=1",
        "data.validation=0.2",
        "data.limit_train=300",
        f"output.dir={tmp_path}",
        f"train.callbacks=[{{name: {__name__}:Grab}}]",
        BALANCED,
    ]
    recipe = load_recipe(TEACHER, overrides)
    labels = class_labels(build_dataset(recipe, "train", True))
    assert labels is not None and len(labels) == 300
    run_recipe(recipe)
    counts = torch.bincount(labels, minlength=10).double()
    assert len(SEEN) == 1 and not torch.equal(counts, counts.mean().expand(10))
    torch.testing.assert_close(SEEN[0].double(), counts.sum() / (10 * counts))


def test_balanced_weights_need_class_labels() -> None:
    data = torch.utils.data.TensorDataset(torch.rand(16, 4), torch.rand(16, 2))
    with pytest.raises((DataError, ConfigError), match="class"):
        crossdistill.distill(
            None,
            nn.Linear(4, 2),
            torch.utils.data.DataLoader(data, batch_size=8),
            losses=[("ce", {"class_weights": "balanced"})],
            epochs=1,
            progress=False,
            device="cpu",
        )


def test_a_term_may_warm_up_from_weight_zero(tmp_path: Path) -> None:
    ramp = 'losses=[{"name": "ce", "weight": 0, "schedule": {"weight": {"start": 0, "end": 1}}}]'
    recipe = load_recipe(
        TEACHER,
        [
            "train.device=cpu",
            "train.progress=false",
            "train.epochs=1",
            "data.limit_train=64",
            f"output.dir={tmp_path}",
            ramp,
        ],
    )
    assert run_recipe(recipe).run.finished
