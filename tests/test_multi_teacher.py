"""Several teachers end to end: an ensemble exposes every member's outputs, ``multi_kd`` trains
from a recipe, from a knowledge store as online, and resumes bit for bit while it drops
teachers at random."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from conftest import DIGITS, rewind_run, same_tensors
from crossdistill.config import Recipe, validate_recipe
from crossdistill.core.wrappers import EnsembleTeacher, Teacher
from crossdistill.pipeline import cache_recipe, run_recipe
from crossdistill.store import KnowledgeStore

NORMALIZE = {"name": "normalize", "params": {"mean": [0.3053], "std": [0.3759]}}


def test_ensemble_keeps_every_members_outputs() -> None:
    torch.manual_seed(0)
    a, b = Teacher(nn.Linear(4, 3)), Teacher(nn.Linear(4, 3), outputs=["logits"])
    ensemble = EnsembleTeacher([a, b], [1.0, 3.0])
    x = torch.randn(5, 4)
    out = ensemble(x)
    assert set(out) == {"logits", "member0/logits", "member1/logits"}
    assert torch.equal(out["member0/logits"], a(x)["logits"])
    assert torch.equal(out["member1/logits"], b(x)["logits"])
    torch.testing.assert_close(out["logits"], 0.25 * a(x)["logits"] + 0.75 * b(x)["logits"])


def ensemble_recipe(tmp_path: Path, teacher_weights: Path, **changes: Any) -> Recipe:
    """digits: a width-4 CNN student taught by two CNN teachers, the trained width-16 one and a
    seeded random width-8 one, on 300 training examples (2 recorded augmentations each) for one
    epoch, on the CPU."""
    raw: dict[str, Any] = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    trained = {
        "model": "cnn",
        "params": {"in_channels": 1, "num_classes": 10, "width": 16},
        "weights": str(teacher_weights),
        "pipeline": [NORMALIZE],
    }
    other = {"model": "cnn", "params": {"in_channels": 1, "num_classes": 10, "width": 8}}
    raw["teacher"] = {"members": [trained, other | {"pipeline": [NORMALIZE]}]}
    raw["losses"] = [
        {"name": "ce", "weight": 0.5},
        {"name": "multi_kd", "weight": 0.5, "params": {"weighting": "confidence"}},
    ]
    # recorded crop/flip slots, as tests/test_store.py: the store holds each slot's knowledge
    raw["data"].update(
        augment={"name": "crop_flip", "params": {"padding": 1}}, augment_slots=2, limit_train=300
    )
    raw["train"].update(epochs=1, progress=False, device="cpu", log_every=1)
    raw["output"] = {"dir": str(tmp_path / "runs")}
    raw["store"] = {"path": str(tmp_path / "store"), "dtype": "float32", "shard_size": 64}
    for dotted, value in changes.items():
        node = raw
        *head, last = dotted.split(".")
        for part in head:  # a number indexes a list (losses.1.params)
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return validate_recipe(raw)


def step_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [r["multi_kd"] for r in records if r["kind"] == "step"]


@pytest.mark.parametrize("drop", [0.0, 0.5], ids=["confidence", "confidence-drop"])
def test_multi_kd_from_the_store_equals_online(
    tmp_path: Path, teacher_weights: Path, drop: float
) -> None:
    """The store holds the two members' logits (what the loss reads, nothing else), and
    training from it gives the same losses and the same student, bit for bit."""
    params = {"weighting": "confidence", "drop": drop}
    changes = {"name": "from_store", "losses.1.params": params}
    with_store = ensemble_recipe(tmp_path, teacher_weights, **changes)
    cache_recipe(with_store, progress=False)
    assert KnowledgeStore(with_store.store.path).keys == ["member0/logits", "member1/logits"]
    online = with_store.model_copy(update={"store": None, "name": "online"})
    a, b = run_recipe(online).run_dir, run_recipe(with_store).run_dir
    losses = step_losses(a)
    assert len(losses) == 5 and all(x > 0 for x in losses)
    assert step_losses(b) == losses
    assert (a / "student.safetensors").read_bytes() == (b / "student.safetensors").read_bytes()


def test_a_kd_store_of_an_ensemble_holds_the_mean_only(
    tmp_path: Path, teacher_weights: Path
) -> None:
    """Keeping every member's outputs changes nothing for losses that read the mean."""
    recipe = ensemble_recipe(
        tmp_path, teacher_weights, losses=[{"name": "kd", "params": {"temperature": 4.0}}]
    )
    cache_recipe(recipe, progress=False)
    assert KnowledgeStore(recipe.store.path).keys == ["logits"]


def test_different_teachers_for_different_keys(tmp_path: Path, teacher_weights: Path) -> None:
    """A logit term from member 0 and a feature term from member 1's tapped features."""
    recipe = ensemble_recipe(
        tmp_path,
        teacher_weights,
        **{
            "teacher.members.1.taps": [{"name": "b2", "path": "block2", "pool": 1}],
            "student.taps": [{"name": "b2", "path": "block2", "pool": 1}],
            "losses": [
                {"name": "ce"},
                {"name": "kd", "params": {"teacher": "member0/logits"}},
                {
                    "name": "fitnet",
                    "weight": 0.1,
                    "params": {"student": "features/b2", "teacher": "member1/features/b2"},
                    "adapter": "auto",
                },
            ],
        },
    )
    cache_recipe(recipe, progress=False)
    assert KnowledgeStore(recipe.store.path).keys == ["member0/logits", "member1/features/b2"]
    run_dir = run_recipe(recipe).run_dir
    assert run_dir is not None and (run_dir / "student.safetensors").is_file()


def test_dropping_and_learned_weights_resume_bit_for_bit(
    tmp_path: Path, teacher_weights: Path
) -> None:
    """Interrupted mid-epoch and resumed: the same teachers dropped, the same learned teacher
    weights, the same student as the run never interrupted."""
    changes = {
        "store": None,
        "train.epochs": 2,
        "losses.1.params": {"weighting": "learned", "drop": 0.5},
    }
    whole = run_recipe(ensemble_recipe(tmp_path, teacher_weights, name="whole", **changes))
    assert whole.run_dir is not None
    changes |= {"train.checkpoint_every_steps": 3, "train.keep_checkpoints": 0}
    recipe = ensemble_recipe(tmp_path, teacher_weights, name="cut", **changes)
    run_dir = recipe.run_dir
    run_recipe(recipe)
    rewind_run(run_dir, "epoch-0001-step")
    run_recipe(recipe, resume=True)
    assert same_tensors(whole.run_dir / "student.safetensors", run_dir / "student.safetensors")
