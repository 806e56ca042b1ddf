"""A full disk, a quota, a read-only or forbidden folder while crossdistill writes: one clear
error (exit code 2, no traceback) naming what, where, the free space and the bytes needed;
nothing half-written left looking valid; and ``--resume`` once space is freed ends with the
student an uninterrupted run trains.

Failures are simulated by making ``os.fsync`` / ``os.write`` / ``os.replace`` / ``os.mkdir``
raise for matching paths (every atomic write fsyncs its file before renaming it); when running
as root with ``mount`` available, a real tiny tmpfs fills up and a real read-only one refuses.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from conftest import CLI_ENV, DIGITS, squash
from crossdistill._util.files import AppendLog, write_atomic
from crossdistill.cli import main
from crossdistill.cli._app import console
from crossdistill.config import load_recipe
from crossdistill.errors import WriteError
from crossdistill.pipeline import run_recipe
from crossdistill.runs import Run
from crossdistill.train import checkpoint as ckpt

EPOCHS = 2


# ------------------------------------------------------------------------------- helpers


def fail_writes(
    monkeypatch: pytest.MonkeyPatch,
    match: Callable[[str], bool],
    code: int = errno.ENOSPC,
    after: int = 0,
) -> list[str]:
    """From the ``after``-th on, writes to paths that ``match`` fail with ``code``: ``os.write``
    writes half its bytes first (as a disk filling up does), ``os.fsync`` (which every atomic
    write and checkpoint file goes through), ``os.replace`` and ``os.mkdir`` fail outright.
    Returns the paths that failed."""
    real = {name: getattr(os, name) for name in ("fsync", "write", "replace", "mkdir")}
    failed: list[str] = []
    seen = [0]

    def hit(path: str) -> bool:
        if not match(path):
            return False
        seen[0] += 1
        if seen[0] <= after:
            return False
        failed.append(path)
        return True

    def fd_path(fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def error() -> OSError:
        return OSError(code, os.strerror(code))

    def fsync(fd: int) -> None:
        if hit(fd_path(fd)):
            raise error()
        real["fsync"](fd)

    def write(fd: int, data: bytes) -> int:
        if hit(fd_path(fd)):
            real["write"](fd, bytes(data)[: len(data) // 2])
            raise error()
        return real["write"](fd, data)

    def replace(src: str, dst: str, **kwargs: object) -> None:
        if hit(os.fspath(dst)):
            raise error()
        real["replace"](src, dst, **kwargs)

    def mkdir(path: str, *args: object, **kwargs: object) -> None:
        if hit(os.path.abspath(path)):
            raise error()
        real["mkdir"](path, *args, **kwargs)

    for name, fake in (("fsync", fsync), ("write", write), ("replace", replace), ("mkdir", mkdir)):
        monkeypatch.setattr(os, name, fake)
    return failed


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple:
    """``crossdistill ARGS`` in this process: (exit code, stderr squashed to one line)."""
    monkeypatch.setattr(sys, "argv", ["crossdistill", *args])
    monkeypatch.setattr(console, "width", 10_000)  # one message, one line
    capsys.readouterr()
    with pytest.raises(SystemExit) as end:
        main()
    return end.value.code or 0, squash(capsys.readouterr().err)


def overrides(teacher_run: Path, out: Path) -> list[str]:
    return [
        f"teacher.weights={teacher_run / 'student.safetensors'}",
        f"output.dir={out}",
        "train.progress=false",
        f"train.epochs={EPOCHS}",
    ]


def run_args(teacher_run: Path, out: Path, *extra: str) -> list[str]:
    sets = [w for o in overrides(teacher_run, out) for w in ("--set", o)]
    return ["run", str(DIGITS / "kd.yaml"), *sets, *extra]


def next_command(message: str) -> list[str]:
    """The arguments of the ``crossdistill ...`` command a hint says to run next."""
    command = message.rsplit("`crossdistill ", 1)[1].split("`", 1)[0]
    return shlex.split(command)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files or folders a writer left behind."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name or ".old-" in p.name]


def assert_nothing_half_written(run: Run) -> None:
    """What a failed write leaves may be incomplete, never look complete."""
    assert not run.lock_file.exists()
    if not run.path.exists():
        return
    assert not run.finished
    assert leftovers(run.path) == []
    for line in run.metrics_file.read_text().splitlines() if run.metrics_file.exists() else []:
        json.loads(line)  # whole records only
    for found in run.checkpoint_list():
        ckpt.load_checkpoint(found)  # every checkpoint listed is complete and verifies


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, digits_teacher_run: Path) -> Path:
    """The KD run trained without a fault (its student is what every resume must end with)."""
    out = tmp_path_factory.mktemp("reference")
    recipe = load_recipe(DIGITS / "kd.yaml", overrides(digits_teacher_run, out))
    return run_recipe(recipe).run_dir


def student_bytes(run_dir: Path) -> bytes:
    return Run(run_dir).student_file.read_bytes()


# ------------------------------------------------------------------------------- a run


@pytest.mark.parametrize(
    ("where", "code", "after", "says"),
    [
        ("epoch-0002", errno.ENOSPC, 2, "could not write the checkpoint"),  # its 2nd file
        ("metrics.jsonl", errno.ENOSPC, 4, "could not write the metrics log"),
        ("student.safetensors", errno.ENOSPC, 0, "could not write the student"),
        ("eval.json", errno.EDQUOT, 0, "could not write the evaluation"),
        ("student.json", errno.ENOSPC, 0, "could not write the student's description"),
        ("config.yaml", errno.EROFS, 0, "read-only file system"),
        ("checkpoints", errno.EACCES, 0, "permission denied"),
    ],
    ids=["checkpoint", "metrics", "student", "eval-quota", "student.json", "config", "forbidden"],
)
def test_a_write_failure_in_a_run_is_one_error_and_resume_finishes_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    digits_teacher_run: Path,
    reference: Path,
    where: str,
    code: int,
    after: int,
    says: str,
) -> None:
    run = Run(tmp_path / "runs" / "digits_kd")
    failed = fail_writes(monkeypatch, lambda p: where in p, code, after)
    status, err = cli(monkeypatch, capsys, *run_args(digits_teacher_run, tmp_path / "runs"))
    assert failed, f"no write to {where} was attempted"
    assert status == 2, err
    assert "Traceback" not in err
    assert says in err and "hint:" in err, err
    if code in (errno.ENOSPC, errno.EDQUOT):
        assert "free in" in err and "needed" in err, err
    assert_nothing_half_written(run)
    if where == "config.yaml":  # nothing was trained: the folder it made is gone
        assert not run.path.exists()
    if where == "epoch-0002":
        assert [p.name for p in run.checkpoint_list()] == ["epoch-0001"]

    monkeypatch.undo()  # space freed: the command the hint names finishes the run
    command = next_command(err)
    assert command[:2] == ["run", str(DIGITS / "kd.yaml")] and "--resume" in command
    status, err = cli(monkeypatch, capsys, *command)
    assert status == 0, err
    assert run.finished and not run.lock_file.exists()
    assert student_bytes(run.path) == student_bytes(reference)
    epochs = [r["epoch"] for r in map(json.loads, run.metrics_file.read_text().splitlines())
              if r["kind"] == "epoch"]  # fmt: skip
    assert set(epochs) == set(range(1, EPOCHS + 1))


def test_a_read_only_output_folder_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    digits_teacher_run: Path,
) -> None:
    """chmod 0o555 as a user; root writes there anyway, so for root the folder is made to
    answer EROFS, as a read-only mount does."""
    out = tmp_path / "readonly"
    out.mkdir()
    if os.geteuid() == 0:
        fail_writes(monkeypatch, lambda p: p.startswith(str(out) + os.sep), errno.EROFS)
        says = f"{out} is on a read-only file system"
    else:
        out.chmod(0o555)
        says = f"permission denied in {out}"
    try:
        status, err = cli(monkeypatch, capsys, *run_args(digits_teacher_run, out))
    finally:
        out.chmod(0o755)
    assert status == 2, err
    assert "Traceback" not in err
    assert says in err and "hint:" in err, err
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------- the writers


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.ENOSPC, "the disk is full"),
        (errno.EDQUOT, "the disk quota is used up"),
        (errno.EROFS, "is on a read-only file system"),
        (errno.EACCES, "permission denied in"),
        (errno.EPERM, "permission denied in"),
    ],
)
def test_write_errors_name_the_file_the_folder_and_the_cause(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int, says: str
) -> None:
    target = tmp_path / "a" / "eval.json"
    target.parent.mkdir()
    target.write_text("old")
    fail_writes(monkeypatch, lambda p: p == str(target), code)
    with pytest.raises(WriteError, match=says) as caught:
        write_atomic(target, b"x" * 5000, what="the evaluation")
    exc = caught.value
    assert isinstance(exc, OSError) and exc.errno == code  # still an OSError to old handlers
    assert exc.message.startswith(f"could not write the evaluation {target}: ")
    assert exc.hint
    if code in (errno.ENOSPC, errno.EDQUOT):
        assert f"free in {target.parent}; at least 5.0 kB needed)" in exc.message
        assert f"free at least 5.0 kB more in {target.parent}" in exc.hint
    assert target.read_text() == "old"  # the previous version stays whole
    assert leftovers(tmp_path) == []


def test_a_failed_checkpoint_never_counts_and_keeps_the_one_it_replaces(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "checkpoints"
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}

    def save(epoch: int, value: float) -> Path:
        return ckpt.save_checkpoint(
            root / f"epoch-{epoch:04d}",
            trainable={"w": torch.full((6,), value)},
            optimizer=optimizer,
            state={"epoch": epoch},
        )

    save(1, 1.0)
    save(2, 2.0)
    fail_writes(monkeypatch, lambda p: "epoch-0002" in p and "optimizer" in p)  # mid-way
    with pytest.raises(WriteError, match=r"could not write the checkpoint .*epoch-0002"):
        save(2, 3.0)
    assert leftovers(root) == []
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["epoch-0001", "epoch-0002"]
    assert torch.equal(
        ckpt.load_checkpoint(root / "epoch-0002")["trainable"]["w"], torch.full((6,), 2.0)
    )

    fail_writes(monkeypatch, lambda p: "epoch-0003" in p)  # a new one: absent, not half there
    with pytest.raises(WriteError, match="the disk is full"):
        save(3, 3.0)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["epoch-0001", "epoch-0002"]
    assert leftovers(root) == []


def test_the_metrics_log_never_keeps_half_a_record(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "metrics.jsonl"
    log = AppendLog(path, "the metrics log")
    try:
        log.write('{"kind": "step", "step": 1}\n')
        fail_writes(monkeypatch, lambda p: p == str(path))
        with pytest.raises(WriteError, match="could not write the metrics log"):
            log.write('{"kind": "step", "step": 2, "loss": 0.5}\n')
        monkeypatch.undo()
        log.write('{"kind": "step", "step": 3}\n')
    finally:
        log.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 3]


def test_export_and_report_on_a_full_disk_leave_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path, reference: Path
) -> None:
    export = tmp_path / "ts"
    fail_writes(monkeypatch, lambda p: "model.pt" in p)  # the export's model file
    status, err = cli(
        monkeypatch,
        capsys,
        "export",
        str(reference),
        "--format",
        "torchscript",
        "--out",
        str(export),
    )
    assert status == 2 and "Traceback" not in err, err
    assert f"could not write the export {export}: the disk is full" in err, err
    assert list(tmp_path.iterdir()) == []  # neither the export nor its temporary folder

    report = tmp_path / "report.html"
    monkeypatch.undo()
    fail_writes(monkeypatch, lambda p: p == str(report))
    status, err = cli(monkeypatch, capsys, "report", str(reference), "--out", str(report))
    assert status == 2 and "Traceback" not in err, err
    assert f"could not write the report {report}: the disk is full" in err, err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- a real disk


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """A folder on its own tmpfs, as root where ``mount`` works; yields ``remount(options)``."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real tmpfs needs root and mount")
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)

    try:
        yield remount
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_real_full_disk_then_more_space(
    tmpfs: Callable[[str], None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    digits_teacher_run: Path,
    reference: Path,
) -> None:
    """64 kB hold the config and a checkpoint or so, not the whole run: the real command
    stops with one message; on a larger disk its resume ends with the reference student."""
    out = tmp_path / "disk"
    done = subprocess.run(
        [sys.executable, "-m", "crossdistill", *run_args(digits_teacher_run, out)],
        env=CLI_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = squash(done.stderr)
    assert done.returncode == 2, err
    assert "Traceback" not in err
    assert "the disk is full" in err and "free in" in err and "--resume" in err, err
    run = Run(out / "digits_kd")
    assert_nothing_half_written(run)

    tmpfs("size=4m")
    status, err = cli(monkeypatch, capsys, *next_command(err))
    assert status == 0, err
    assert student_bytes(run.path) == student_bytes(reference)

    tmpfs("ro")
    status, err = cli(monkeypatch, capsys, *run_args(digits_teacher_run, out), "--name", "again")
    assert status == 2, err
    assert f"{out} is on a read-only file system" in err, err
