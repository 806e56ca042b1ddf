"""Data-parallel training under torchrun (gloo, CPU): two processes with a global batch B give
the student one process gives with batch B; checkpoints of a DDP run resume; the CLI launches
torchrun itself, on one node or as two node ranks on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import CLI_ENV, DIGITS
from crossdistill.data.dataset import EpochSampler


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe_file(tmp_path: Path, teacher: Path, name: str, **changes: Any) -> Path:
    """digits KD with an MLP student: no BatchNorm, whose per-rank statistics would differ."""
    raw = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    raw.update(name=name, output={"dir": str(tmp_path / "runs")})
    raw["teacher"]["weights"] = str(teacher)
    raw["student"] = {"model": "mlp", "params": {"in_features": 64, "hidden": [32]}}
    raw["data"].update(
        limit_train=256, batch_size=64, augment={"name": "crop_flip", "params": {"padding": 1}}
    )
    raw["train"].update(epochs=2, progress=False, device="cpu")
    for dotted, value in changes.items():
        node = raw
        *head, last = dotted.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def crossdistill(*args: str, cwd: Path, launcher: list[str] | None = None) -> str:
    command = [*(launcher or [sys.executable]), "-m", "crossdistill", *args]
    result = subprocess.run(
        command, cwd=cwd, env=CLI_ENV, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def student(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "student.safetensors"))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= tol, f"max |difference| {worst:.3g} > {tol}"


def test_ranks_split_every_global_batch() -> None:
    one = list(EpochSampler(10, seed=3))
    ranks = [list(EpochSampler(10, seed=3, rank=r, world=2)) for r in range(2)]
    for i in range(0, 10, 4):  # per-rank batch 2 = global batch 4
        assert sorted(ranks[0][i // 2 : i // 2 + 2] + ranks[1][i // 2 : i // 2 + 2]) == sorted(
            one[i : i + 4]
        )
    odd = [list(EpochSampler(5, shuffle=False, rank=r, world=2)) for r in range(2)]
    assert odd == [[0, 2, 4], [1, 3, 0]]  # padded by wrapping round, as DistributedSampler


LOSSES = {
    "kd": None,
    "crd": [
        {"name": "ce"},
        {"name": "crd", "weight": 0.5,
         "params": {"student": "logits", "teacher": "logits", "dim": 16, "queue_size": 128}},
    ],
}  # fmt: skip


@pytest.mark.parametrize("losses", list(LOSSES))
def test_two_processes_equal_one(tmp_path: Path, teacher_weights: Path, losses: str) -> None:
    changes = {"losses": LOSSES[losses]} if LOSSES[losses] else {}
    one = recipe_file(tmp_path, teacher_weights, "one", **changes)
    two = recipe_file(tmp_path, teacher_weights, "two", **changes)
    crossdistill("run", str(one), cwd=tmp_path)
    crossdistill("run", str(two), "--nproc", "2", cwd=tmp_path)
    assert_close(student(tmp_path / "runs" / "one"), student(tmp_path / "runs" / "two"), 1e-6)
    state = (tmp_path / "runs" / "two" / "checkpoints" / "epoch-0002" / "state.json").read_text()
    assert '"world_size": 2' in state


def test_ddp_resume_mid_epoch_is_exact(tmp_path: Path, teacher_weights: Path) -> None:
    """A 2-process run stopped after epoch 1 with mid-epoch checkpoints, resumed: the same
    student as the uninterrupted 2-process run (every rank's RNG and data position restored)."""
    changes = {
        "train.checkpoint_every_steps": 3,
        "train.keep_checkpoints": 0,
        "train.prequential": True,
    }
    full = recipe_file(tmp_path, teacher_weights, "full", **changes)
    crossdistill("run", str(full), "--nproc", "2", cwd=tmp_path)
    part = recipe_file(tmp_path, teacher_weights, "part", **changes)
    crossdistill("run", str(part), "--nproc", "2", cwd=tmp_path)
    runs = tmp_path / "runs"
    names = sorted(p.name for p in (runs / "part" / "checkpoints").iterdir())
    assert "epoch-0001-step-00000006" in names  # 4 steps per epoch: step 3 mid-epoch 1, 6 in 2
    # go back to the mid-epoch checkpoint of epoch 2 (as if killed after it) and resume
    shutil.rmtree(runs / "part" / "checkpoints" / "epoch-0002")
    (runs / "part" / "student.safetensors").unlink()
    crossdistill("run", str(part), "--nproc", "2", "--resume", cwd=tmp_path)
    assert_close(student(runs / "full"), student(runs / "part"), 0.0)
    # the epoch's sums carried over the cut are every rank's, not rank 0's alone
    full_epoch, part_epoch = (_epochs(runs / name)[-1] for name in ("full", "part"))
    assert part_epoch["prequential_accuracy"] == full_epoch["prequential_accuracy"]
    assert part_epoch["train_loss"] == pytest.approx(full_epoch["train_loss"], rel=1e-9)


def _epochs(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


def test_two_node_ranks_on_localhost(tmp_path: Path, teacher_weights: Path) -> None:
    """``--nnodes 2``: two launches (node ranks 0 and 1, one process each) rendezvous on
    127.0.0.1 and train the same student as one process."""
    one = recipe_file(tmp_path, teacher_weights, "one")
    crossdistill("run", str(one), cwd=tmp_path)
    nodes = recipe_file(tmp_path, teacher_weights, "nodes")
    port = str(free_port())
    launches = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "crossdistill",
                "run",
                str(nodes),
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
            ],
            cwd=tmp_path,
            env=CLI_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for proc in launches:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
    assert_close(student(tmp_path / "runs" / "one"), student(tmp_path / "runs" / "nodes"), 1e-6)
