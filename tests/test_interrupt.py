"""Interruption and concurrency, with real processes and real signals: Ctrl-C (SIGINT) and
SIGTERM stop ``crossdistill run`` / ``cache`` with one line saying where the work stands and the
exact command that continues it (exit 130 / 143), and that command finishes the work; two
``crossdistill run --resume`` started at once on one run: one trains, the other is refused.

The children use ``tests/slow_teacher.py`` (a teacher that sleeps per batch, or one held at a
gate) so that a signal lands while they work; waits are capped at 120 s.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import CLI_ENV, DIGITS, squash
from crossdistill.cli import main
from crossdistill.cli._app import console
from crossdistill.config import load_recipe
from crossdistill.pipeline import run_recipe
from crossdistill.runs import Run, RunLockedError
from crossdistill.store import KnowledgeStore

TESTS = Path(__file__).parent
ENV = {**CLI_ENV, "PYTHONPATH": str(TESTS)}  # slow_teacher.py
WAIT_S = 120


def kd_raw(teacher_run: Path, out: Path, teacher: str) -> dict[str, Any]:
    raw = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    raw["teacher"].update(model=teacher, weights=str(Run(teacher_run).student_file))
    raw["train"].update(epochs=2, progress=False)
    raw["output"] = {"dir": str(out)}
    return raw


def write_yaml(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """``crossdistill ARGS`` as a terminal starts it (SIGINT not ignored)."""
    return subprocess.Popen(
        [sys.executable, "-m", "crossdistill", *args],
        cwd=cwd,
        env={**ENV, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the child never got there"
        time.sleep(0.02)


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str]) -> int:
    """``crossdistill ARGS`` in this process; its exit code."""
    monkeypatch.setattr(sys, "argv", ["crossdistill", *args])
    monkeypatch.setattr(console, "width", 10_000)
    with pytest.raises(SystemExit) as end:
        main()
    return end.value.code or 0


def continue_command(line: str) -> list[str]:
    """The arguments of the command after ``continue with:`` / ``finish it with:``."""
    command = line.split(" with: ", 1)[1]
    assert command.startswith("crossdistill "), line
    return shlex.split(command)[1:]


# ------------------------------------------------------------------------------- signals


@pytest.mark.parametrize(
    ("signum", "code", "name", "resume"),
    # the run's files are the same after either signal: one resume is enough (and saves time)
    [(signal.SIGINT, 130, "Ctrl-C", False), (signal.SIGTERM, 143, "SIGTERM", True)],
    ids=["sigint", "sigterm"],
)
def test_a_signal_says_where_the_run_stands_and_its_resume_finishes_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    digits_teacher_run: Path,
    signum: int,
    code: int,
    name: str,
    resume: bool,
) -> None:
    raw = kd_raw(digits_teacher_run, tmp_path / "runs", "slow_teacher:slow_cnn")
    raw["data"]["limit_train"] = 960  # 15 steps an epoch
    recipe = write_yaml(tmp_path / "my kd.yaml", raw)  # a path the command must quote
    # a first checkpoint after 3 steps, mid-epoch: a signal lands with most of the run to go
    args = ["run", "my kd.yaml", "--name", "mine", "--set", "train.checkpoint_every_steps=3"]
    run = Run(tmp_path / "runs" / "mine")
    proc = start(args, tmp_path)
    wait_for(proc, lambda: bool(run.checkpoint_list()))
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=WAIT_S)

    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, one command that can be copied
    last = run.checkpoint_list()[-1]
    assert lines[0].startswith(f"interrupted ({name}): the last checkpoint is {last}; "), err
    assert lines[0].endswith(
        "continue with: crossdistill run 'my kd.yaml' --resume --name mine "
        "--set train.checkpoint_every_steps=3"
    ), err
    assert not run.finished and not run.lock_file.exists()
    assert [p for p in run.path.rglob("*") if ".tmp" in p.name] == []
    if not resume:
        return

    # the command it printed finishes the run, with the student of a run never interrupted
    monkeypatch.chdir(tmp_path)
    assert cli(monkeypatch, capsys, continue_command(lines[0])) == 0
    reference = load_recipe(
        recipe, ["name=reference", "teacher.model=cnn", "train.checkpoint_every_steps=3"]
    )
    assert run.student_file.read_bytes() == run_recipe(reference).run.student_file.read_bytes()


def test_a_signal_to_cache_says_how_to_finish_the_store(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    raw = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    raw["teacher"].update(model="slow_teacher:slow_cnn")
    raw["teacher"].pop("weights")  # a seeded random teacher is as good a teacher here
    raw["data"].update(limit_train=600)
    raw["train"].update(epochs=1, progress=False)
    raw["store"] = {"path": str(tmp_path / "store"), "batch_size": 32, "shard_size": 50}
    write_yaml(tmp_path / "store.yaml", raw)
    shards = tmp_path / "store" / "shards"
    proc = start(["cache", "store.yaml", "--set", "store.dtype=float32"], tmp_path)
    wait_for(
        proc, lambda: shards.is_dir() and any(not p.name.startswith(".") for p in shards.iterdir())
    )
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT_S)

    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert squash(err) == (
        f"interrupted (SIGTERM): the knowledge store {tmp_path / 'store'} is not complete; "
        "finish it with: crossdistill cache store.yaml --set store.dtype=float32"
    )
    assert not KnowledgeStore.complete(tmp_path / "store")

    monkeypatch.chdir(tmp_path)
    assert cli(monkeypatch, capsys, continue_command(squash(err))) == 0
    assert KnowledgeStore.complete(tmp_path / "store")


# ------------------------------------------------------------------------------- two writers


def test_two_resumes_at_once_one_trains_the_other_is_refused(
    tmp_path: Path, digits_teacher_run: Path
) -> None:
    """The issue's experiment: ``crossdistill run RECIPE --resume`` twice at once on one run.
    Both are held in their first training step until one of them has stopped, so they overlap
    whatever the machine's speed."""
    raw = kd_raw(digits_teacher_run, tmp_path / "runs", "slow_teacher:gated_cnn")
    write_yaml(tmp_path / "kd.yaml", raw)
    gate = tmp_path / "go"
    procs = [start(["run", "kd.yaml", "--resume"], tmp_path, CROSSDISTILL_TEST_GATE=str(gate))
             for _ in range(2)]  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_S
        while all(p.poll() is None for p in procs):  # the one refused stops; the other waits
            assert time.monotonic() < deadline, "neither process stopped"
            time.sleep(0.05)
    finally:
        gate.touch()
    outputs = [p.communicate(timeout=WAIT_S) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    err = squash(outputs[loser][1])
    assert f"is locked by PID {procs[winner].pid}" in err, err
    assert "Traceback" not in err
    run = Run(tmp_path / "runs" / raw["name"])
    records = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    assert [r for r in records if r["kind"] == "resume"] == []  # one writer, from scratch
    assert run.student() is not None and not run.lock_file.exists()


def test_a_refused_writer_never_removes_the_folder_it_lost(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two processes starting at once may both find no run folder: the one refused by the lock
    must not remove the folder (it is the other's) as if it had made it itself."""
    spec = load_recipe(DIGITS / "teacher.yaml", [f"output.dir={tmp_path}"])
    run = Run(spec.run_dir)
    exists = Path.exists
    with run.writing(spec):
        # the second process looked before the first made the folder
        monkeypatch.setattr(Path, "exists", lambda p: p != run.path and exists(p))
        with pytest.raises(RunLockedError), run.writing(spec, resume=True):
            pass
        monkeypatch.undo()
        assert run.config_file.is_file() and run.lock_file.is_file()
