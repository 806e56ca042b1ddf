"""The Run: one owner of a run directory — a run trained from Python is a run like any other,
two processes never write one run, and a run folder names no code it imports."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import crossdistill
from conftest import CLI_ENV, DIGITS
from crossdistill import Run, Student, Teacher, distill
from crossdistill.data.steps import build_pipeline
from crossdistill.errors import CheckpointError, UnknownNameError
from crossdistill.models.registry import load_weights
from crossdistill.runs import RunLockedError

NORMALIZE = [{"name": "normalize", "params": {"mean": [0.3053], "std": [0.3759]}}]


def _teacher(digits_teacher_run: Path) -> Teacher:
    model = crossdistill.build_model("cnn", {"width": 16, "num_classes": 10})
    load_weights(model, Run(digits_teacher_run).student_file)
    return Teacher(model, pipeline=build_pipeline(NORMALIZE))


def _api_run(run_dir: Path, digits_teacher_run: Path, **kwargs) -> crossdistill.DistillResult:
    student = crossdistill.build_model("cnn", {"width": 4, "num_classes": 10})
    return distill(
        _teacher(digits_teacher_run),
        Student(student, pipeline=build_pipeline(NORMALIZE)),
        crossdistill.load_source("digits", "train"),
        losses=["ce", ("kd", {"temperature": 4.0})],
        eval_data=crossdistill.load_source("digits", "test"),
        batch_size=64,
        epochs=1,
        run_dir=run_dir,
        progress=False,
        device="cpu",
        **kwargs,
    )


def test_the_digits_teacher_recipe_matches_the_teacher_built_here(
    digits_teacher_run: Path,
) -> None:
    spec = Run(digits_teacher_run).config.student
    assert (spec.model, spec.params) == ("cnn", {"in_channels": 1, "num_classes": 10, "width": 16})
    assert [s.model_dump() for s in spec.pipeline] == NORMALIZE


def test_a_run_trained_from_python_is_complete(digits_teacher_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "api_kd"
    model = _api_run(run_dir, digits_teacher_run).student
    run = Run.open(run_dir)
    assert run.finished and not run.lock_file.exists()
    recipe = run.config
    assert (recipe.data.source, recipe.data.train_split, recipe.data.eval_split) == (
        "digits",
        "train",
        "test",
    )
    assert recipe.teacher is not None and recipe.teacher.weights is not None
    assert [loss.term for loss in recipe.losses] == ["ce", "kd"]
    assert set(run.final_metrics()) >= {"epoch", "accuracy", "agreement"}
    rebuilt, model = run.student().eval(), model.eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x)["logits"], model(rebuilt.pipeline(x)))


def test_commands_take_a_run_trained_from_python(
    digits_teacher_run: Path, tmp_path: Path, cli
) -> None:
    run_dir = tmp_path / "api_kd"
    _api_run(run_dir, digits_teacher_run)
    run = Run(run_dir)
    exported = cli(["export", str(run_dir), "--format", "onnx"], cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert json.loads((run.export_dir("onnx") / "parity.json").read_text())["top1_agreement"] == 1.0
    evaluated = cli(["eval", str(run_dir), "--json"], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout.strip().splitlines()[-1])["accuracy"] == pytest.approx(
        run.final_metrics()["accuracy"]
    )
    benched = cli(["bench", str(run_dir), "--repeats", "2", "--batches", "1"], cwd=tmp_path)
    assert benched.returncode == 0, benched.stderr
    assert {"teacher", "student", "onnx"} <= set(json.loads(run.bench_file.read_text())["results"])
    reported = cli(["report", str(run_dir)], cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr
    assert run.report_file.is_file()


def test_a_python_run_keeps_data_that_came_from_no_source(
    digits_teacher_run: Path, tmp_path: Path
) -> None:
    from torch.utils.data import TensorDataset

    digits = crossdistill.load_source("digits", "test")
    pairs = TensorDataset(digits.inputs.float() / 255, digits.targets)
    student = crossdistill.build_model("mlp", {"in_features": 64, "num_classes": 10})
    distill(
        _teacher(digits_teacher_run),
        student,
        pairs,
        eval_data=pairs,
        epochs=1,
        run_dir=tmp_path / "pairs",
        progress=False,
    )
    run = Run.open(tmp_path / "pairs")
    assert run.config.data.source == "saved_split"
    (batch,) = list(run.eval_data(limit=len(pairs)))
    torch.testing.assert_close(batch["views"]["student"], digits.inputs.float() / 255)
    assert batch["target"].tolist() == digits.targets.tolist()


def test_a_student_built_in_python_keeps_its_weights_and_says_so(tmp_path: Path) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    student = torch.nn.Sequential(torch.nn.Linear(4, 3))
    distill(None, student, data, losses=["ce"], epochs=1, run_dir=tmp_path / "r", progress=False)
    run = Run.open(tmp_path / "r")
    assert run.student_meta()["model"] is None and run.student_file.is_file()
    with pytest.raises(CheckpointError, match="built in Python"):
        run.student()


def test_not_a_run_and_unfinished_runs_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a run directory"):
        Run.open(tmp_path)
    (tmp_path / "config.yaml").write_text((DIGITS / "kd.yaml").read_text())
    with pytest.raises(CheckpointError, match="has not finished"):
        Run.open(tmp_path)
    assert Run.open(tmp_path, finished=False).path == tmp_path


def test_a_run_folder_never_imports_what_its_recipe_imports(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(
            {**yaml.safe_load((DIGITS / "kd.yaml").read_text()), "imports": ["pwned_module"]}
        )
    )
    (tmp_path / "student.safetensors").write_bytes(b"")
    empty = hashlib.sha256(b"").hexdigest()
    meta = {"model": "not_registered", "params": {}, "sha256": empty}
    (tmp_path / "student.json").write_text(json.dumps(meta))
    with pytest.raises(UnknownNameError, match=r"--import pwned_module"):
        Run.open(tmp_path).student()
    assert "pwned_module" not in sys.modules


def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text((DIGITS / "teacher.yaml").read_text())
    spec = crossdistill.load_recipe(recipe, [f"output.dir={tmp_path / 'runs'}"])
    run = Run(spec.run_dir)
    with run.writing(spec):
        assert f'"pid": {os.getpid()}' in run.lock_file.read_text()
        with (
            pytest.raises(RunLockedError, match=rf"locked by PID {os.getpid()}"),
            run.writing(spec, resume=True),
        ):
            pass
    assert not run.lock_file.exists()


def test_a_lock_taken_but_not_yet_described_names_its_holder_once_it_is(tmp_path: Path) -> None:
    """The holder writes its record just after taking the lock; a second writer arriving in
    between waits for the record rather than naming "another process" (CI caught that race)."""
    import fcntl
    import threading

    from crossdistill.runs import _Lock

    path = tmp_path / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked, record not yet written
    record = json.dumps({"pid": 4242, "command": "crossdistill run", "since": "now"}).encode()
    writer = threading.Timer(0.3, lambda: os.pwrite(fd, record, 0))
    writer.start()
    try:
        with pytest.raises(RunLockedError, match=r"locked by PID 4242 \(crossdistill run"):
            _Lock(path)
    finally:
        writer.join()
        os.close(fd)


def test_two_run_processes_on_one_run_directory(
    digits_teacher_run: Path, tmp_path: Path, flat
) -> None:
    """While one ``crossdistill run`` trains, a second ``--resume`` on the same run stops with
    a clear error naming the first's PID, and the first then finishes untouched."""
    raw = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    raw["teacher"]["model"] = "slow_teacher:gated_cnn"  # holds the first run in its first step
    raw["teacher"]["weights"] = str(Run(digits_teacher_run).student_file)
    raw["train"].update(epochs=2, progress=False)
    raw["output"] = {"dir": str(tmp_path / "runs")}
    recipe = tmp_path / "kd.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    gate = tmp_path / "go"
    env = {**CLI_ENV, "PYTHONPATH": str(Path(__file__).parent), "CROSSDISTILL_TEST_GATE": str(gate)}
    command = [sys.executable, "-m", "crossdistill", "run", str(recipe)]
    run = Run(tmp_path / "runs" / raw["name"])
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run.lock_file.exists() and run.config_file.exists()):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run(
            [*command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert first.poll() is None  # still held in its first step
    finally:
        gate.touch()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    assert f"is locked by PID {first.pid}" in flat(second.stderr)
    assert "Traceback" not in second.stderr
    epochs = [
        r
        for r in map(json.loads, run.metrics_file.read_text().splitlines())
        if r["kind"] == "epoch"
    ]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert run.student() is not None and not run.lock_file.exists()
