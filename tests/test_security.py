"""Run and export folders are data, never code (issue 20).

A folder someone else wrote may name a model, a teacher or a data source by import path; opening
it with ``crossdistill eval/export/bench/report`` or ``Run.open(...)`` must never import and call
it unless the user allows the package (``--allow-import PKG``, ``allow_import=``,
``CROSSDISTILL_ALLOW_IMPORT``). Each payload here would create a marker file if it ran. Its
files are checked against schemas and checksums: a malformed ``student.json`` / ``model.json``,
or a missing or wrong ``sha256``, is a clean error.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from torch import nn

from conftest import CLI_ENV, DIGITS
from crossdistill import Run, load_student
from crossdistill.config import load_recipe
from crossdistill.errors import CheckpointError, ConfigError, UntrustedCodeError
from crossdistill.export import export_run
from crossdistill.export.format_safetensors import rebuild
from crossdistill.pipeline import run_recipe
from crossdistill.registry import ALLOW_IMPORT_ENV, check_import, untrusted

TESTS = Path(__file__).resolve().parent
HERE = "test_security"  # this module, as a run names it by import path


def tiny_net(width: int = 3, num_classes: int = 10) -> nn.Module:
    """A legitimate student of the user's own, named by import path (``test_security:tiny_net``)."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes)
    )


def _train(out: Path, name: str, *overrides: str) -> Path:
    recipe = load_recipe(
        DIGITS / "teacher.yaml",
        [f"output.dir={out}", f"name={name}", "train.epochs=1", "train.progress=false",
         "student.params={in_channels: 1, num_classes: 10, width: 2}", *overrides],
    )  # fmt: skip
    result = run_recipe(recipe)
    assert result.run_dir is not None
    return result.run_dir


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny finished run of a registered student (and its safetensors export), one of a
    student named by import path; trained once for the module, copied before any change."""
    out = tmp_path_factory.mktemp("security")
    plain = _train(out, "plain")
    by_path = _train(out, "by_path", f"student.model={HERE}:tiny_net", "student.params={}")
    export = export_run(plain, "safetensors", out=out / "export", parity_examples=16)
    return {"plain": plain, "by_path": by_path, "export": export}


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _payloads(marker: Path) -> dict[str, dict[str, Any]]:
    return {
        "os:system": {"command": f"touch {marker}"},
        "subprocess:run": {"args": f"touch {marker}", "shell": True},
    }


def _name_student(run: Path, model: str, params: dict[str, Any]) -> None:
    """student.json names ``model`` with ``params``; its checksum stays right."""
    meta = json.loads((run / "student.json").read_text())
    meta.update(model=model, params=params)
    (run / "student.json").write_text(json.dumps(meta))


# The commands below run forked from conftest's warm server (``forked_cli``: a process of its
# own, without importing torch again); one with PYTHONPATH set runs in a fresh interpreter.
Cli = Callable[..., subprocess.CompletedProcess]


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crossdistill", *args],
        cwd=cwd, env={**CLI_ENV, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _refused(result: subprocess.CompletedProcess, *phrases: str) -> str:
    message = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert message.count("error:") == 1 and "hint:" in message, message
    assert "Traceback" not in message, message
    for phrase in phrases:
        assert phrase in message, message
    return message


# ------------------------------------------------------------------------- code never runs


@pytest.mark.parametrize("model", ["os:system", "subprocess:run"])
def test_a_student_json_naming_code_is_refused_in_python(
    made: dict[str, Path], tmp_path: Path, model: str
) -> None:
    marker = tmp_path / "MARKER"
    run = _copy(made["plain"], tmp_path)
    _name_student(run, model, _payloads(marker)[model])
    with pytest.raises(UntrustedCodeError) as info:
        Run.open(run).student()
    assert f"student.json names the model '{model}' by import path" in info.value.message
    assert f"--allow-import {model.split(':')[0]}" in (info.value.hint or "")
    with pytest.raises(UntrustedCodeError):
        load_student(run)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["eval", "export", "bench", "report"])
def test_the_commands_never_run_what_a_student_json_names(
    made: dict[str, Path], tmp_path: Path, command: str, forked_cli: Cli
) -> None:
    marker = tmp_path / "MARKER"
    run = _copy(made["plain"], tmp_path)
    _name_student(run, "os:system", _payloads(marker)["os:system"])
    extra = {"export": ["--format", "safetensors"], "bench": ["--repeats", "1", "--batches", "1"]}
    result = forked_cli([command, str(run), *extra.get(command, [])], cwd=tmp_path)
    assert not marker.exists()
    if command == "report":  # a page of what the run logged; the student is only a note
        assert result.returncode == 0, result.stderr
        assert "by import path" in (run / "report.html").read_text()
    else:
        _refused(result, "student.json names the model 'os:system' by import path",
                 "--allow-import os")  # fmt: skip


def test_a_config_yaml_naming_code_is_refused(
    made: dict[str, Path], tmp_path: Path, forked_cli: Cli
) -> None:
    marker = tmp_path / "MARKER"
    run = _copy(made["plain"], tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    payload = _payloads(marker)["subprocess:run"]
    config["teacher"] = {"model": "subprocess:run", "params": payload}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UntrustedCodeError, match=r"config\.yaml names the model 'subprocess:run'"):
        Run.open(run).teacher()
    _refused(
        forked_cli(["eval", str(run)], cwd=tmp_path),
        "config.yaml names the model 'subprocess:run'",
    )
    config["data"]["source"] = "subprocess:run"
    config["data"]["params"] = dict(payload)  # a copy: safe_dump would write an alias
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UntrustedCodeError, match=r"config\.yaml names the data source"):
        Run.open(run).split()
    with pytest.raises(UntrustedCodeError, match=r"config\.yaml names the data source"):
        Run.open(run).eval_data()
    assert not marker.exists()


def test_a_model_json_naming_code_is_refused(
    made: dict[str, Path], tmp_path: Path, forked_cli: Cli
) -> None:
    marker = tmp_path / "MARKER"
    folder = _copy(made["export"], tmp_path)
    meta = json.loads((folder / "model.json").read_text())
    meta.update(model="os:system", params=_payloads(marker)["os:system"])
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UntrustedCodeError, match=r"model\.json names the model 'os:system'"):
        rebuild(folder)
    args = ["bench", str(folder), "--repeats", "1", "--batches", "1"]
    result = forked_cli(args, cwd=tmp_path)
    _refused(result, "model.json names the model 'os:system' by import path")
    assert not marker.exists()


def test_an_export_format_named_by_import_path_is_refused(
    made: dict[str, Path], tmp_path: Path
) -> None:
    from crossdistill.export.bench import bench

    folder = _copy(made["export"], tmp_path)
    pre = json.loads((folder / "preprocessing.json").read_text())
    (folder / "preprocessing.json").write_text(json.dumps({**pre, "format": f"{HERE}:Nope"}))
    with pytest.raises(UntrustedCodeError, match=r"preprocessing\.json names the export format"):
        bench(folder, repeats=1, batches=1, progress=False)


def test_a_registered_builder_takes_only_its_own_params(
    made: dict[str, Path], tmp_path: Path
) -> None:
    run = _copy(made["plain"], tmp_path)
    meta = json.loads((run / "student.json").read_text())
    _name_student(run, "cnn", {**meta["params"], "shell": True})
    with pytest.raises(ConfigError, match=r"student\.params\.shell: unknown key"):
        Run.open(run).student()


# ------------------------------------------------------------------------- what the user allows


def test_allow_import_lets_a_trusted_import_path_student_load(
    made: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = made["by_path"]
    with pytest.raises(UntrustedCodeError) as info:
        Run.open(run).student()
    assert f"--allow-import {HERE}" in (info.value.hint or "")
    with pytest.raises(UntrustedCodeError):  # a prefix allows packages, not name prefixes
        Run.open(run, allow_import=["test_sec"]).student()
    student = Run.open(run, allow_import=[HERE]).student()
    assert student.model[1].out_features == 3
    assert isinstance(load_student(run, allow_import=HERE).model, nn.Sequential)
    monkeypatch.setenv(ALLOW_IMPORT_ENV, f"numpy, {HERE}")
    assert Run.open(run).student().model[1].out_features == 3


def test_allow_import_on_the_command_line(made: dict[str, Path], tmp_path: Path) -> None:
    # refused without it: test_allow_import_lets_a_trusted_import_path_student_load
    args = ["--allow-import", HERE, "eval", str(made["by_path"]), "--out", str(tmp_path / "e.json")]
    allowed = _cli(args, tmp_path, PYTHONPATH=str(TESTS))
    assert allowed.returncode == 0, allowed.stderr
    assert "accuracy" in json.loads((tmp_path / "e.json").read_text())


def test_the_command_line_trusts_what_it_imports_and_allows(
    made: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossdistill import registry
    from crossdistill.cli import _app

    # the process-wide lists the command line fills, fresh for this test and restored after it
    monkeypatch.setattr(registry, "_ALLOWED", [])
    monkeypatch.setattr(_app, "state", {"debug": False, "imports": []})
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(UntrustedCodeError):
        Run.open(made["by_path"]).student()
    _app._main(debug=False, import_=[HERE], allow_import=["numpy"])  # `--import test_security`
    assert registry.allowed_imports() == ("numpy", HERE)
    assert Run.open(made["by_path"]).student().model[1].out_features == 3
    with pytest.raises(ConfigError, match="--allow-import: 'a b' is not a package name"):
        _app._main(debug=False, import_=None, allow_import=["a b"])


def test_an_export_is_trusted_as_far_as_its_run(made: dict[str, Path], tmp_path: Path) -> None:
    folder = export_run(
        Run(made["by_path"], allow_import=[HERE]), "safetensors", out=tmp_path / "x",
        parity_examples=8,
    )  # fmt: skip
    with pytest.raises(UntrustedCodeError, match=rf"model\.json names the model '{HERE}:tiny_net'"):
        rebuild(folder)
    assert isinstance(rebuild(folder, allow_import=[HERE]), nn.Module)


def test_a_package_allows_its_subpackages_only() -> None:
    check_import("my_pkg.nets:make_net", "m")  # outside a run or export folder: a recipe's
    with untrusted("runs/x/student.json", ["my_pkg"]):
        check_import("my_pkg:make_net", "m")
        check_import("my_pkg.nets:make_net", "m")
        for other in ("my_pkgx:make_net", "my:make_net", "nets.my_pkg:make_net"):
            with pytest.raises(UntrustedCodeError, match=r"runs/x/student\.json names m"):
                check_import(other, "m")
        with untrusted("runs/x/export/model.json"):  # read on behalf of the run: same trust
            check_import("my_pkg.nets:make_net", "m")


def test_an_allow_list_holds_package_names_only() -> None:
    for bad in ("", "my pkg", "pkg.", "*"):
        with pytest.raises(ConfigError, match="is not a package name"), untrusted("x", [bad]):
            pass


# ------------------------------------------------------------------------- schemas, checksums


def _without(key: str) -> Callable[[dict], str]:
    return lambda meta: json.dumps({k: v for k, v in meta.items() if k != key})


def _with(**changes: Any) -> Callable[[dict], str]:
    return lambda meta: json.dumps({**meta, **changes})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (lambda meta: "{not json", "Invalid JSON"),
        (lambda meta: "[]", "(top level): Input should be an object"),
        (_without("sha256"), "sha256: required but missing"),
        (_with(sha256="0" * 64), "student.safetensors is corrupted: its SHA-256 differs"),
        (_with(sha256="not hex"), "sha256: String should match pattern"),
        (_without("model"), "model: required but missing"),
        (_with(params="width=2"), "params: Input should be an object"),
        (_with(outputs=[1]), "outputs"),
        (_with(shell=True), "shell: unknown key"),
    ],
    ids=["not-json", "a-list", "sha-removed", "sha-wrong", "sha-not-hex", "no-model",
         "params-a-string", "outputs-numbers", "unknown-key"],
)  # fmt: skip
def test_a_malformed_student_json_is_a_clean_error(
    made: dict[str, Path], tmp_path: Path, body: Callable[[dict], str], expected: str
) -> None:
    run = _copy(made["plain"], tmp_path)
    (run / "student.json").write_text(body(json.loads((run / "student.json").read_text())))
    with pytest.raises(CheckpointError) as info:
        Run.open(run).student()
    assert "student.json" in info.value.message and expected in info.value.message, info.value
    assert "--resume" in (info.value.hint or "")


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40  # inside the last tensor: safetensors still reads the file
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f, m: (f / "model.json").write_text("{"), "Invalid JSON"),
        (lambda f, m: (f / "model.json").write_text("7"), "(top level): Input should be an object"),
        (lambda f, m: m.pop("sha256"), "sha256: required but missing"),
        (lambda f, m: m.pop("outputs"), "outputs: required but missing"),
        (lambda f, m: m.update(int8="no"), "int8: Input should be a valid boolean"),
        (lambda f, m: m.update(extra=1), "extra: unknown key"),
        (lambda f, m: _flip_last_byte(f / "model.safetensors"), "model.safetensors is corrupted"),
        (lambda f, m: m["params"].update(width=3), "does not fit the model"),
    ],
    ids=["not-json", "a-number", "sha-removed", "no-outputs", "wrong-type", "unknown-key",
         "weights-changed", "params-changed"],
)  # fmt: skip
def test_a_malformed_model_json_is_a_clean_error(
    made: dict[str, Path], tmp_path: Path, change: Callable, expected: str
) -> None:
    folder = _copy(made["export"], tmp_path)
    meta = json.loads((folder / "model.json").read_text())
    before = (folder / "model.json").read_text()
    change(folder, meta)
    if (folder / "model.json").read_text() == before:  # the change was to the parsed dict
        (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="export the run again") as info:
        rebuild(folder)
    assert expected in str(info.value), info.value
