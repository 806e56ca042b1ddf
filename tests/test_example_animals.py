"""The animals example (examples/animals), tiny, end to end: a teacher trained outside
crossdistill and saved as a `.pth`, a coarser label space for the student, per-side pipelines,
the story from Python and the same run from its recipe."""

from __future__ import annotations

import gzip
import importlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

import crossdistill

pytest.importorskip(
    "animal_mnist",
    reason="the animals example reads the PyPI package animal-mnist "
    "(pip install --no-deps animal-mnist)",
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "animals"
RUN_FILES = ("config.yaml", "metrics.jsonl", "student.safetensors", "student.json", "eval.json")
TRUSTED = ["animals_nets"]  # the runs name their models by import path: reopened where allowed


@pytest.fixture(scope="module")
def animals() -> Iterator[ModuleType]:
    """examples/animals/animals.py imported as a module, its folder on sys.path (crossdistill
    builds the models from the import paths ``animals_nets:...``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLE))
        yield importlib.import_module("animals")


@pytest.fixture(scope="module")
def tiny(animals: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny story (400 images, 1 epoch, seed 0), run once for the module."""
    return animals.benchmark(True, [0], tmp_path_factory.mktemp("animals"))


def test_the_packaged_data_is_what_the_example_expects(tiny: dict[str, Any]) -> None:
    found = tiny["data"]
    assert found["images"] == [10000, 28, 28] and found["images_dtype"] == "uint8"
    assert found["label_range"] == [0, 9] and set(found["per_class"].values()) == {1000}
    assert tiny["train_images"] + tiny["test_images"] == 400
    assert tiny["test_images"] > 0


def test_the_split_is_disjoint_and_reproducible(animals: ModuleType, tiny: dict[str, Any]) -> None:
    npz = Path(tiny["npz"])
    train, test = animals.load_split(npz, "train"), animals.load_split(npz, "test")
    rows = [set(split.meta["index"].tolist()) for split in (train, test)]
    assert not rows[0] & rows[1] and len(rows[0] | rows[1]) == 400
    again = animals.load_split(npz, "test", labels="fine")  # other targets, the same images
    assert torch.equal(again.fields["image"], test.fields["image"])
    coarse = torch.from_numpy(animals.FINE_TO_COARSE)[again.targets]
    assert torch.equal(coarse, test.targets)


def test_the_tiny_story_leaves_complete_runs(tiny: dict[str, Any]) -> None:
    for variant in ("ce", "kd"):
        run = crossdistill.Run(tiny["runs"][variant]["0"]["run"], allow_import=TRUSTED)
        assert run.finished and all((run.path / name).is_file() for name in RUN_FILES)
        metrics = run.final_metrics()
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["macro_f1"] <= 1.0
        assert set(metrics["per_class"]) == {"pets", "farm", "wild", "bird"}
        student = run.student()
        out = student(torch.zeros(2, 1, 28, 28))
        assert out["logits"].shape == (2, 4) and out["teacher_logits"].shape == (2, 10)
    plain = crossdistill.Run(tiny["runs"]["ce"]["0"]["run"])
    assert "agreement" not in plain.final_metrics() and plain.config.teacher is None
    kd = crossdistill.Run(tiny["runs"]["kd"]["0"]["run"]).final_metrics()
    assert kd["agreement_of"] == "teacher_logits"  # the fine head, not the 4-group logits
    assert 0.0 <= kd["agreement"] <= 1.0 and 0.0 <= kd["agreement_top5"] <= 1.0
    assert "teacher_accuracy" not in kd  # the teacher has no accuracy on the 4 groups
    assert set(tiny["summary"]["kd"]) >= {"accuracy", "macro_f1", "agreement", "agreement_top5"}


def test_the_teacher_comes_from_its_pth(animals: ModuleType, tiny: dict[str, Any]) -> None:
    teacher = tiny["teacher"]
    # crossdistill's rebuilt teacher (its pipeline in place of the training loop's own
    # preprocessing) gives the trained model's logits
    assert teacher["reload_agreement"] == 1.0 and teacher["reload_max_abs_diff"] < 1e-4
    run = crossdistill.Run(tiny["runs"]["kd"]["0"]["run"], allow_import=TRUSTED)
    spec = run.config.teacher
    assert spec is not None and Path(str(spec.weights)) == Path(teacher["pth"])
    assert Path(teacher["pth"]).name == "teacher.pth"
    assert [step.name for step in spec.pipeline] == ["to_rgb", "resize", "normalize"]
    # the run rebuilds the same teacher from config.yaml: it agrees with itself
    images = animals.load_split(Path(tiny["npz"]), "test").fields["image"]
    rebuilt, loaded = run.teacher(), animals.load_teacher(Path(teacher["pth"]))
    assert rebuilt is not None
    assert torch.equal(rebuilt(images)["logits"], loaded(images)["logits"])


def test_the_recipe_runs_the_same_experiment(
    animals: ModuleType, tiny: dict[str, Any], tmp_path: Path
) -> None:
    npz, pth = tiny["npz"], tiny["teacher"]["pth"]
    recipe = crossdistill.load_recipe(
        EXAMPLE / "kd.yaml",
        [
            f"data.params.path={npz}",
            f"teacher.weights={pth}",
            "train.epochs=1",
            "train.progress=false",
            f"output.dir={tmp_path}",
        ],
    )
    # the recipe and the script describe one experiment
    assert recipe.student.params == animals.STUDENT_PARAMS
    assert recipe.student.outputs == animals.STUDENT_OUTPUTS
    assert [s.model_dump() for s in recipe.student.pipeline] == [
        {"name": s["name"], "params": s.get("params", {})} for s in animals.STUDENT_PIPELINE
    ]
    assert recipe.teacher is not None and recipe.teacher.params == animals.TEACHER_PARAMS
    assert [s.model_dump() for s in recipe.teacher.pipeline] == [
        {"name": s["name"], "params": s.get("params", {})} for s in animals.TEACHER_PIPELINE
    ]
    assert [(loss.name, loss.params, loss.weight) for loss in recipe.losses] == [
        (name, params, weight) for name, params, weight in animals.LOSSES["kd"]
    ]
    assert recipe.data.params["test_fraction"] == animals.TEST_FRACTION
    done = crossdistill.run_recipe(recipe)
    assert done.run.finished and done.run.path == tmp_path / "animals_kd"
    assert {"accuracy", "macro_f1", "agreement", "agreement_top5"} <= set(done.metrics)
    assert done.metrics["agreement_of"] == "teacher_logits"


def _gzip_pickle(obj: Any) -> bytes:
    return gzip.compress(pickle.dumps(obj, protocol=4))


class _Shell:
    """What a malicious pickle does: call a function of its choice while being read."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_the_unpickler_reads_arrays_and_refuses_code(animals: ModuleType) -> None:
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert np.array_equal(animals.read_pickled_array(_gzip_pickle(array), "ok"), array)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle (posix|nt)\.system"):
        animals.read_pickled_array(_gzip_pickle(_Shell()), "shell")
    with pytest.raises(pickle.UnpicklingError, match="dtype object"):
        animals.read_pickled_array(_gzip_pickle(np.array([1, "a"], dtype=object)), "objects")
    with pytest.raises(ValueError, match="expected a NumPy array"):
        animals.read_pickled_array(_gzip_pickle([1, 2]), "list")
