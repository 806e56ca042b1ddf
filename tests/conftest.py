"""Shared fixtures: offline hub, one intra-op thread, and the digits teacher trained once.

The digits recipes (``recipes/digits/``) train in about a second each on one CPU thread. The
teacher is trained once per session (:func:`digits_teacher_run`); tests that need a KD run build
it from :func:`kd_recipe`, whose teacher weights point at that session run.
"""

from __future__ import annotations

import os

# Set before anything imports a hub client: the test suite never touches the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from crossdistill.config import Recipe, load_recipe
from crossdistill.pipeline import run_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
DIGITS = RECIPES / "digits"

# Child processes: one intra-op thread (the models are tiny; more threads only contend on a busy
# machine), wide lines so rich does not wrap messages, offline hub.
CLI_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "COLUMNS": "400",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """Tiny models: a second intra-op thread only adds contention (and timing noise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- digits runs


@pytest.fixture(scope="session")
def digits_teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``recipes/digits/teacher.yaml`` trained once per session; returns its run directory.

    Treat it as read-only: several tests read its ``student.safetensors``.
    """
    out = tmp_path_factory.mktemp("teacher_runs")
    recipe = load_recipe(
        DIGITS / "teacher.yaml", overrides=[f"output.dir={out}", "train.progress=false"]
    )
    result = run_recipe(recipe)
    assert result.run_dir is not None
    assert (result.run_dir / "student.safetensors").is_file()
    return result.run_dir


@pytest.fixture
def teacher_weights(digits_teacher_run: Path) -> Path:
    return digits_teacher_run / "student.safetensors"


@pytest.fixture
def kd_recipe(tmp_path: Path, digits_teacher_run: Path) -> Recipe:
    """``recipes/digits/kd.yaml`` with the session teacher and its output under ``tmp_path``."""
    return load_recipe(
        DIGITS / "kd.yaml",
        overrides=[
            f"teacher.weights={digits_teacher_run / 'student.safetensors'}",
            f"output.dir={tmp_path / 'runs'}",
            "train.progress=false",
        ],
    )


# ------------------------------------------------------------------------------- helpers


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m crossdistill ARGS`` in ``cwd``; text stdout/stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "crossdistill", *args],
        cwd=cwd,
        env=CLI_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess]:
    return run_cli


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path → SHA-256 (``"dir"`` for folders)."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def snapshot() -> Callable[[Path], dict[str, str]]:
    return tree_hashes


def squash(text: str) -> str:
    """Whitespace collapsed, so phrases match however a console wrapped them."""
    return " ".join(text.split())


@pytest.fixture(scope="session")
def flat() -> Callable[[str], str]:
    return squash
