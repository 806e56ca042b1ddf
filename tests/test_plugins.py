"""One plug-in rule: every registry takes ``package.module:Attribute`` from a recipe (or the
command line) as well as a registered name, validates parameters from the signature, and a
recipe's ``imports:`` / ``--import`` registers a user's plug-ins by name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import CLI_ENV
from crossdistill import Run
from crossdistill.config import Recipe, validate_recipe
from crossdistill.errors import ConfigError, UnknownNameError, UntrustedCodeError
from crossdistill.export import export_run
from crossdistill.losses import LOSSES
from crossdistill.pipeline import run_recipe
from crossdistill.suites import evaluate

PLUGINS = '''
"""Plug-ins of every kind, none registered: a recipe names them by import path."""

import numpy as np
import torch
from torch import nn

from crossdistill.core.adapters import Adapter
from crossdistill.data import load_source
from crossdistill.export.format_torchscript import TorchScriptExporter
from crossdistill.losses import Loss
from crossdistill.runs import Run
from crossdistill.suites import Suite

CALLS = {"source": 0}


class HalfCE(Loss):
    """Half the cross-entropy: tells itself apart from ``ce`` in the logs."""

    needs_student = ("logits",)
    needs_target = True

    def __init__(self, factor: float = 0.5) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, student, teacher, target):
        return self.factor * nn.functional.cross_entropy(student["logits"], target)


def tiny_net(width: int = 3, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes)
    )


class Scale(Adapter):
    """A learned scale between vectors of one width."""

    @classmethod
    def bridges(cls, student, teacher):
        return student == teacher and len(student) == 1

    def __init__(self, student_shape, teacher_shape, start: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(start)))

    def forward(self, x):
        return self.scale * x


def digits_half(split: str, keep: int = 200):
    """The first ``keep`` examples of the digits source."""
    CALLS["source"] += 1
    data = load_source("digits", split)
    return type(data)(data.inputs[:keep], data.targets[:keep], data.class_names, f"half/{split}")


class Shift(nn.Module):
    def __init__(self, by: float) -> None:
        super().__init__()
        self.by = by

    def forward(self, x):
        return x - self.by


class Jitter:
    """Adds one recorded constant to the whole image."""

    num_params = 1

    def __init__(self, amount: float = 0.01) -> None:
        self.amount = amount

    def sample(self, rng, shape):
        return np.array([rng.uniform(-self.amount, self.amount)])

    def apply(self, x, params):
        return x + float(np.asarray(params).reshape(-1)[0])


class Traced(TorchScriptExporter):
    """The TorchScript exporter under another name."""


class Count(Suite):
    """How many examples the run's evaluation split has."""

    def run(self, target, options):
        return {"examples": len(Run.open(target).split())}
'''

REGISTERING = '''
from crossdistill.losses import LOSSES
from plugins_by_path import HalfCE


@LOSSES.register("half_ce")
class RegisteredHalfCE(HalfCE):
    """HalfCE, registered by name when a recipe imports this module."""
'''


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "plugin_src"
    folder.mkdir()
    (folder / "plugins_by_path.py").write_text(textwrap.dedent(PLUGINS))
    (folder / "plugins_registering.py").write_text(textwrap.dedent(REGISTERING))
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in ("plugins_by_path", "plugins_registering"):
        sys.modules.pop(name, None)
    LOSSES._items.pop("half_ce", None)


def _recipe(kd_recipe: Recipe, **changes) -> Recipe:
    raw = kd_recipe.model_dump(mode="json")
    for path, value in changes.items():
        node = raw
        *parents, last = path.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
    return validate_recipe(raw)


def test_every_kind_of_plug_in_by_import_path(
    plugins: Path, kd_recipe: Recipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _recipe(
        kd_recipe,
        data__source="plugins_by_path:digits_half",
        data__params={"keep": 256},
        data__augment={"name": "plugins_by_path:Jitter", "params": {"amount": 0.02}},
        student__model="plugins_by_path:tiny_net",
        student__params={"width": 5},
        student__pipeline=[{"name": "plugins_by_path:Shift", "params": {"by": 0.3}}],
        losses=[
            {"name": "plugins_by_path:HalfCE", "params": {"factor": 0.25}},
            {"name": "kd", "adapter": {"name": "plugins_by_path:Scale", "params": {"start": 2}}},
        ],
        train__epochs=1,
    )
    result = run_recipe(recipe)
    import plugins_by_path

    assert plugins_by_path.CALLS["source"] >= 2  # train and eval splits
    # the run folder is data: it reopens its import paths only where the user allows them
    with pytest.raises(UntrustedCodeError, match="--allow-import plugins_by_path"):
        Run.open(result.run_dir).student()
    run = Run.open(result.run_dir, allow_import=["plugins_by_path"])
    student = run.student()
    assert isinstance(student.pipeline[0], plugins_by_path.Shift) and student.pipeline[0].by == 0.3
    assert student.model[1].out_features == 5
    steps = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert any("plugins_by_path:HalfCE" in r for r in steps if r["kind"] == "step")
    folder = export_run(run, "plugins_by_path:Traced")
    assert (folder / "model.pt").is_file()
    # a suite opens the run itself: the user's standing allow-list reaches it
    monkeypatch.setenv("CROSSDISTILL_ALLOW_IMPORT", "plugins_by_path")
    assert evaluate("plugins_by_path:Count", run.path) == {"examples": 256}
    assert json.loads(run.eval_file("count").read_text()) == {"examples": 256}


def test_a_loss_and_adapter_of_a_package_by_import_path_train_and_resume(
    plugins: Path, kd_recipe: Recipe
) -> None:
    """``my_pkg.losses:HalfCE``: the dots of a package path are no module name torch accepts;
    the terms still train, log under their import path, checkpoint and resume."""
    package = plugins / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "losses.py").write_text("from plugins_by_path import HalfCE, Scale\n")
    recipe = _recipe(
        kd_recipe,
        losses=[
            {"name": "my_pkg.losses:HalfCE", "params": {"factor": 0.25}},
            {"name": "kd", "adapter": {"name": "my_pkg.losses:Scale", "params": {"start": 2}}},
        ],
        train__epochs=2,
    )
    try:
        first = run_recipe(recipe)
        steps = [json.loads(line) for line in first.run_dir.joinpath("metrics.jsonl").open()]
        assert any("my_pkg.losses:HalfCE" in r for r in steps if r["kind"] == "step")
        # resume from the first epoch's checkpoint: the loss and adapter states load back
        shutil.rmtree(first.run_dir / "checkpoints" / "epoch-0002")
        (first.run_dir / "student.safetensors").unlink()
        (first.run_dir / "student.json").unlink()
        again = run_recipe(recipe, resume=True)
        assert again.run_dir == first.run_dir and Run(first.run_dir).finished
    finally:
        for name in ("my_pkg", "my_pkg.losses"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"losses__0__name": "nowhere_module:Loss"}, ConfigError, r"losses\[0\].*cannot import"),
        ({"losses__0__name": "plugins_by_path:Nope"}, UnknownNameError, "no attribute 'Nope'"),
        ({"losses__0__name": "plugins_by_path:Shift"}, ConfigError, "is not a loss"),
        (
            {"losses__0__name": "plugins_by_path:HalfCE", "losses__0__params": {"factr": 1}},
            ConfigError,
            r"losses\[0\]\.params\.factr: unknown key",
        ),
        (
            {"student__model": "plugins_by_path:Jitter", "student__params": {}},
            ConfigError,
            "returned a Jitter, not a torch Module",
        ),
        ({"data__source": "plugins_by_path:tiny_net"}, ConfigError, r"data\.params"),
        (
            {"student__pipeline": [{"name": "plugins_by_path:Shift"}]},
            ConfigError,
            r"pipeline\[0\]\.params\.by: required",
        ),
    ],
)
def test_a_bad_plug_in_path_names_the_recipe_path(
    plugins: Path, kd_recipe: Recipe, change: dict, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        run_recipe(_recipe(kd_recipe, train__epochs=1, **change))
    assert not Run(kd_recipe.run_dir).exists


def test_imports_register_a_users_plug_ins_by_name(plugins: Path, kd_recipe: Recipe) -> None:
    recipe = _recipe(
        kd_recipe,
        imports=["plugins_registering"],
        losses=[{"name": "half_ce"}, {"name": "kd"}],
        train__epochs=1,
    )
    assert "half_ce" not in LOSSES._items
    result = run_recipe(recipe)
    assert "half_ce" in result.metrics or "half_ce" in Run(result.run_dir).metrics_file.read_text()
    with pytest.raises(ConfigError, match=r"imports\[0\]: cannot import module 'nope'"):
        run_recipe(_recipe(kd_recipe, imports=["nope"]))


def test_the_command_line_imports_plug_ins(plugins: Path, tmp_path: Path) -> None:
    env = {**CLI_ENV, "PYTHONPATH": str(plugins)}
    listed = subprocess.run(
        [sys.executable, "-m", "crossdistill", "--import", "plugins_registering", "list", "losses"],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "half_ce" in listed.stdout.split()
    missing = subprocess.run(
        [sys.executable, "-m", "crossdistill", "--import", "nope", "list", "losses"],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2 and "--import[0]: cannot import module 'nope'" in missing.stderr


def test_the_console_script_imports_modules_of_the_current_folder(plugins: Path) -> None:
    # The installed `crossdistill` script (not `python -m`, which does this itself) finds a
    # module in the folder it runs in, with no PYTHONPATH.
    script = Path(sys.executable).with_name("crossdistill")
    if not script.is_file():
        pytest.skip("the crossdistill console script is not installed next to this Python")
    env = {k: v for k, v in CLI_ENV.items() if k != "PYTHONPATH"}
    listed = subprocess.run(
        [str(script), "--import", "plugins_registering", "list", "losses"],
        env=env, capture_output=True, text=True, cwd=plugins, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "half_ce" in listed.stdout.split()


def test_the_built_in_domains_are_entry_point_plug_ins() -> None:
    import importlib.metadata

    found = {e.value for e in importlib.metadata.entry_points(group="crossdistill.plugins")}
    assert {f"crossdistill.domains.{d}" for d in ("text", "ranking", "speech", "vision")} <= found
    from crossdistill.data.sources import DATA_SOURCES
    from crossdistill.suites import SUITES

    assert {"sentences", "triples", "speech_text", "fashion_text"} <= set(DATA_SOURCES.names())
    assert {"task", "text", "retrieval", "speech-text", "image-text"} <= set(SUITES.names())
