"""``Registry.describe`` and ``crossdistill list KIND [-v]``: what each plug-in takes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from crossdistill.core.adapters import ADAPTERS
from crossdistill.data.sources import DATA_SOURCES
from crossdistill.data.steps import PIPELINE_STEPS
from crossdistill.losses import LOSSES

Cli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cli(forked_cli: Cli) -> Cli:
    """``python -m crossdistill`` forked from conftest's warm server: the process boundary
    (exit code, output) without importing torch again for each command."""
    return forked_cli


def _blocks(stdout: str) -> dict[str, list[str]]:
    """``list -v`` output: plug-in name → the indented lines of its block."""
    blocks: dict[str, list[str]] = {}
    for block in stdout.strip().split("\n\n"):
        head, *lines = block.splitlines()
        blocks[head.split()[0]] = [line.strip() for line in lines]
    return blocks


def test_describe_a_loss() -> None:
    info = LOSSES.describe("kd")
    assert info["name"] == "kd"
    assert info["path"] == "crossdistill.losses.logit.kd:KDLoss"
    assert info["summary"].startswith("Knowledge distillation (Hinton")
    params = {p["name"]: p for p in info["params"]}
    assert params["temperature"] == {"name": "temperature", "type": "float", "default": 4.0}
    # an import path names the same plug-in
    assert LOSSES.describe("crossdistill.losses.logit.kd:KDLoss") == info


def test_describe_excludes_what_crossdistill_supplies() -> None:
    shapes = ("student_shape", "teacher_shape")
    given = [p["name"] for p in ADAPTERS.describe("linear", exclude=shapes)["params"]]
    assert given == ["hidden"]
    every = {p["name"]: p for p in ADAPTERS.describe("linear")["params"]}
    assert every["student_shape"]["default"] == "required"
    source = DATA_SOURCES.describe("digits", exclude=["split"])
    assert [p["name"] for p in source["params"]] == ["test_fraction", "seed"]
    assert source["params"][0]["default"] == 0.2


def test_describe_reads_types_as_written() -> None:
    params = {p["name"]: p for p in PIPELINE_STEPS.describe("pad")["params"]}
    assert params["size"] == {
        "name": "size",
        "type": "int | Sequence[int] | None",
        "default": None,
    }
    assert params["value"]["default"] == 0.0
    assert PIPELINE_STEPS.describe("to_rgb")["params"] == []
    mean = PIPELINE_STEPS.describe("normalize")["params"][0]
    assert mean == {"name": "mean", "type": "Sequence[float]", "default": "required"}


def test_list_pipeline_verbose_shows_every_parameter(cli: Cli, tmp_path: Path) -> None:
    result = cli(["list", "pipeline", "-v"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    blocks = _blocks(result.stdout)
    assert sorted(blocks) == PIPELINE_STEPS.names()
    assert "size: int | Sequence[int]  (required)" in blocks["center_crop"]
    assert blocks["frame"][-2:] == ["size: int  (required)", "hop: int | None = None"]
    assert "value: float = 0.0" in blocks["pad"]
    assert "channels: Sequence[int]  (required)" in blocks["select"]
    assert blocks["to_rgb"][-1] == "(no parameters)"
    for name in PIPELINE_STEPS.names():  # the summary, then one line per parameter
        info = PIPELINE_STEPS.describe(name)
        assert blocks[name][0].startswith(info["summary"].replace("``", "`")[:40])
        for p in info["params"]:
            assert any(line.startswith(f"{p['name']}: {p['type']}") for line in blocks[name])
    # without -v: one name a line, as before
    plain = cli(["list", "pipeline"], cwd=tmp_path)
    assert plain.stdout.splitlines() == PIPELINE_STEPS.names()


def test_list_verbose_leaves_out_supplied_parameters_and_keeps_suite_options(
    cli: Cli, tmp_path: Path
) -> None:
    adapters = cli(["list", "adapters", "--verbose"], cwd=tmp_path)
    assert adapters.returncode == 0, adapters.stderr
    assert "student_shape" not in adapters.stdout
    assert "hidden: int = 0" in _blocks(adapters.stdout)["linear"]
    suites = cli(["list", "suites", "-v"], cwd=tmp_path)
    assert suites.returncode == 0, suites.stderr
    assert "options: --split" in _blocks(suites.stdout)["task"]
