"""The sensors example (examples/sensors) end to end, tiny: BasicMotions written to an .npz and
read by the ``arrays`` source, a 6-channel teacher, 3-channel students (CE and KD) whose runs
are complete, the KD student exported to ONNX with a 3-channel input, and kd.yaml run through
``run_recipe`` to the very student the script trained."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import crossdistill
from crossdistill.pipeline import run_recipe

pytest.importorskip(
    "sktime", reason="the sensors example reads BasicMotions from sktime: pip install sktime"
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sensors"
SEED = 0


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, dict, Path]]:
    """The tiny benchmark, run once for the module: (the sensors module, its result, out)."""
    # The runs name their models "sensors_nets:Conv1dNet", imported from the example's folder.
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLE))
        sensors = importlib.import_module("sensors")
        out = tmp_path_factory.mktemp("sensors")
        yield sensors, sensors.benchmark(tiny=True, seeds=[SEED], out=out), out


def _first_batch(run: crossdistill.Run) -> dict[str, Any]:
    return next(iter(run.eval_data()))


def test_the_data_is_basic_motions_balanced_and_complete(story: tuple) -> None:
    _, result, out = story
    for split in ("train", "test"):
        checks = result["data"][split]
        assert checks["shape"] == [40, 6, 100]
        assert checks["classes"] == {c: 10 for c in ("badminton", "running", "standing", "walking")}
        assert checks["nan"] == 0
    with np.load(out / "basic_motions.npz") as npz:
        assert npz["signal"].dtype == np.float32
        assert sorted(npz.files) == ["label", "signal", "split"]
        assert (npz["split"] == "train").sum() == (npz["split"] == "test").sum() == 40
    assert result["test_examples"] == 40


@pytest.mark.parametrize("name", ["teacher", f"ce-seed{SEED}", f"kd-seed{SEED}"])
def test_every_run_is_complete_and_scored_at_its_last_epoch(story: tuple, name: str) -> None:
    sensors, result, out = story
    run = crossdistill.Run(out / name)
    assert run.finished
    for file in ("config.yaml", "metrics.jsonl", "student.safetensors", "student.json"):
        assert (run.path / file).is_file(), file
    metrics = run.final_metrics()
    epochs = sensors.TINY.teacher_epochs if name == "teacher" else sensors.TINY.student_epochs
    assert metrics["epoch"] == epochs
    assert {"accuracy", "macro_f1", "per_class"} <= set(metrics)
    assert set(metrics["per_class"]) == {"badminton", "running", "standing", "walking"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("accuracy", "macro_f1"))
    if name != "teacher":  # both arms are evaluated against the teacher
        arm = name.split("-")[0]
        assert "agreement" in metrics
        assert result["runs"][arm][SEED]["accuracy"] == metrics["accuracy"]
        assert result["runs"][arm][SEED]["macro_f1"] == metrics["macro_f1"]
        assert result["runs"][arm][SEED]["agreement"] == metrics["agreement"]
        assert run.config.teacher is not None  # the teacher is recorded with its weights
        assert Path(run.config.teacher.weights) == out / "teacher" / "student.safetensors"


def test_the_student_reads_the_accelerometer_and_the_teacher_all_channels(story: tuple) -> None:
    _, _, out = story
    views = _first_batch(crossdistill.Run(out / f"kd-seed{SEED}"))["views"]
    assert views["teacher"].shape[1:] == (6, 100)
    assert views["student"].shape[1:] == (3, 100)
    assert torch.equal(views["student"], views["teacher"][:, :3])
    # the teacher's own run trained it on all six channels
    teacher_view = _first_batch(crossdistill.Run(out / "teacher"))["views"]["student"]
    assert teacher_view.shape[1:] == (6, 100)
    assert torch.equal(teacher_view, views["teacher"])


def test_parameter_counts(story: tuple) -> None:
    sensors, result, _ = story
    student = crossdistill.build_model(sensors.NET, sensors.STUDENT)
    teacher = crossdistill.build_model(sensors.NET, sensors.TEACHER)
    assert result["student_parameters"] == sensors.parameters(student)
    assert result["teacher"]["parameters"] == sensors.parameters(teacher)
    assert result["student_parameters"] * 10 < result["teacher"]["parameters"]


def test_the_onnx_student_takes_three_channels(story: tuple) -> None:
    ort = pytest.importorskip("onnxruntime", reason="ONNX export checks need onnxruntime")
    sensors, result, out = story
    onnx = result["onnx"]
    assert onnx["input_shape"] == [None, 3, 100]
    folder = Path(onnx["folder"])
    pre = json.loads((folder / "preprocessing.json").read_text())
    assert pre["input"]["shape"] == [None, 3, 100]
    assert pre["class_names"] == ["badminton", "running", "standing", "walking"]
    session = ort.InferenceSession(str(folder / pre["file"]))
    assert session.get_inputs()[0].shape[1:] == [3, 100]
    run = crossdistill.Run(out / f"kd-seed{SEED}", allow_import=sensors.TRUSTED)
    x = _first_batch(run)["views"]["student"]
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = run.student().eval()(x)["logits"]
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)


def test_the_recipe_is_the_scripts_kd_experiment(story: tuple) -> None:
    sensors, _, _ = story
    recipe = crossdistill.load_recipe(EXAMPLE / "kd.yaml")
    assert recipe.data.source == "arrays"
    views = {k: v if isinstance(v, str) else v.model_dump() for k, v in recipe.data.views.items()}
    assert views == sensors.VIEWS
    assert recipe.student.model == recipe.teacher.model == sensors.NET
    assert recipe.student.params == sensors.STUDENT
    assert recipe.teacher.params == sensors.TEACHER
    losses = [(spec.name, spec.params, spec.weight) for spec in recipe.losses]
    assert losses == [(n, p, w) for n, p, w in sensors.ARMS["kd"]]
    assert recipe.train.epochs == sensors.FULL.student_epochs
    assert recipe.train.optimizer.lr == sensors.FULL.lr
    assert recipe.data.batch_size == sensors.FULL.batch_size
    assert recipe.eval.every_epochs == 0  # the last epoch only


def test_the_recipe_runs_tiny_to_the_scripts_student(story: tuple) -> None:
    sensors, _, out = story
    recipe = crossdistill.load_recipe(
        EXAMPLE / "kd.yaml",
        [
            f"data.params.path={out / 'basic_motions.npz'}",
            f"teacher.weights={out / 'teacher' / 'student.safetensors'}",
            f"output.dir={out / 'recipe'}",
            f"train.epochs={sensors.TINY.student_epochs}",
            "train.progress=false",
            f"seed={SEED}",
        ],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the benchmark trains: the same kernels, the same weights
    try:
        finished = run_recipe(recipe)
    finally:
        torch.set_num_threads(threads)
    run = crossdistill.Run(finished.run_dir)
    assert run.finished
    assert {"accuracy", "macro_f1", "agreement", "per_class"} <= set(run.final_metrics())
    views = _first_batch(run)["views"]
    assert (views["teacher"].shape[1], views["student"].shape[1]) == (6, 3)
    ours = load_file(str(run.student_file))
    script = load_file(str(out / f"kd-seed{SEED}" / "student.safetensors"))
    assert ours.keys() == script.keys()
    assert all(torch.equal(ours[k], script[k]) for k in ours)
