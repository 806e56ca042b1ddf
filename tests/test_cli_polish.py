"""The command line's rough edges (issue 22, "Discoverability" and "CLI"): start-up without
torch, ``show``, the ``--set`` hint, ``--overwrite``, help text, file modes, small numbers,
quiet third-party progress bars, the YAML file name in parse errors."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from conftest import CLI_ENV
from crossdistill._util.files import atomic_path, replace_dir
from crossdistill.cli import _app, app
from crossdistill.config import load_recipe
from crossdistill.errors import ConfigError, UnknownNameError

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "recipes" / "digits" / "teacher.yaml"
Cli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the app's callback sets with ``setdefault`` is restored after each test."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, os.environ.get(name, "1"))
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def invoke(*args: str) -> object:
    """The app in this process: a user error comes back as ``result.exception``."""
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


# ------------------------------------------------------------------------ start-up


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_import_torch(flag: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "crossdistill", flag],
        cwd=tmp_path,
        env=CLI_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "crossdistill.cli" in modules  # the measurement saw the command line start
    heavy = {"torch", "transformers", "sentence_transformers", "matplotlib", "safetensors"}
    assert not modules & heavy


def test_cli_benchmark_records_the_ratio_to_import_torch() -> None:
    spec = importlib.util.spec_from_file_location("bench_cli", ROOT / "benchmarks" / "cli.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.TARGET_S == 1.5
    assert {"--help", "--version", "list losses", "show kd", "doctor"} <= set(bench.COMMANDS)
    result = json.loads((ROOT / "benchmarks" / "results" / "cli.json").read_text())
    assert result["target_s"] == 1.5
    assert set(bench.COMMANDS) <= set(result["commands"])
    for name, row in result["commands"].items():
        assert row["ratio_to_import_torch"] > 0, name
        assert row["n"] >= 3
    assert result["commands"]["import torch"]["ratio_to_import_torch"] == 1.0
    for fast in ("--help", "--version"):
        assert "torch" not in result["commands"][fast]["imports"]


# ------------------------------------------------------------------------ show / list -v


def test_show_a_loss_gives_paper_needs_and_parameters() -> None:
    result = invoke("show", "kd")
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[0] == "kd  (crossdistill.losses.logit.kd:KDLoss)"
    assert "kind: losses" in lines
    assert lines[2].startswith("Knowledge distillation (Hinton")
    assert "paper: Hinton, Vinyals & Dean 2015, arXiv:1503.02531" in lines
    assert "needs: student logits; teacher logits; target no" in lines
    assert "temperature: float = 4.0" in lines
    # the target is a need too
    assert any(line.endswith("target yes") for line in invoke("show", "ce").stdout.splitlines())
    # a loss whose keys are its required parameters says so
    fitnet = invoke("show", "losses", "fitnet").stdout
    assert "needs: student (set by its parameters); teacher (set by its parameters)" in fitnet
    assert "student: str  (required)" in fitnet


def test_show_any_registry_and_unknown_names() -> None:
    adapter = invoke("show", "adapters", "linear")
    assert adapter.exit_code == 0, adapter.output
    assert "hidden: int = 0" in adapter.stdout
    assert "student_shape" not in adapter.stdout  # supplied by crossdistill, not a recipe
    assert "options: --split" in invoke("show", "task").stdout
    wrong = invoke("show", "kdd")
    assert isinstance(wrong.exception, UnknownNameError)
    assert "'kdd'" in wrong.exception.message and "'kd'" in wrong.exception.hint
    kind = invoke("show", "losses", "linear")
    assert isinstance(kind.exception, UnknownNameError)
    assert kind.exception.message == "no loss is registered as 'linear'"
    assert isinstance(invoke("show", "lossez", "kd").exception, UnknownNameError)


def test_show_asks_for_the_kind_of_an_ambiguous_name(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "my_aug.py").write_text(
        "from crossdistill.data.augment import AUGMENTATIONS\n\n\n"
        '@AUGMENTATIONS.register("kd")\n'
        "def kd_shift(amount: int = 2):\n"
        '    """Shift by ``amount`` pixels."""\n'
    )
    both = cli(["--import", "my_aug", "show", "kd"], cwd=tmp_path)
    assert both.returncode == 2, both.stderr
    assert "several kinds: losses, augmentations" in " ".join(both.stderr.split())
    assert "crossdistill show losses kd" in both.stderr
    one = cli(["--import", "my_aug", "show", "augmentations", "kd"], cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert "amount: int = 2" in one.stdout and "Shift by `amount` pixels." in one.stdout


def test_list_verbose_shows_paper_and_needs() -> None:
    result = invoke("list", "losses", "-v")
    assert result.exit_code == 0, result.output
    block = result.stdout.split("\n\n")[[b.split()[0] for b in result.stdout.split("\n\n") if b]
                                        .index("kd")]  # fmt: skip
    assert "paper: Hinton, Vinyals & Dean 2015" in block
    assert "needs: student logits; teacher logits; target no" in block


# ------------------------------------------------------------------------ --set, --overwrite


@pytest.mark.parametrize("command", ["run", "cache"])
def test_malformed_set_says_key_value(command: str) -> None:
    split = invoke(command, str(TEACHER), "--set", "train.epochs", "1")
    assert isinstance(split.exception, ConfigError)
    assert split.exception.message == (
        "--set 'train.epochs' is not KEY=VALUE (and '1' came as a separate argument)"
    )
    assert "--set train.epochs=1" in split.exception.hint
    alone = invoke(command, str(TEACHER), "--set", "train.epochs")
    assert isinstance(alone.exception, ConfigError)
    assert "is not KEY=VALUE" in alone.exception.message
    stray = invoke(command, str(TEACHER), "stray")
    assert isinstance(stray.exception, ConfigError)
    assert "KEY=VALUE" in stray.exception.hint


def test_overwrite_replaces_a_run_only_after_its_checks(tmp_path: Path, umask_022: None) -> None:
    args = ["run", str(TEACHER), "--set", f"output.dir={tmp_path}", "--set", "train.epochs=1"]
    args += ["--set", "train.progress=false"]
    run_dir = tmp_path / "digits_teacher"
    run_dir.mkdir()
    (run_dir / "stale.txt").write_text("an unfinished run's leftovers")
    refused = invoke(*args)
    assert isinstance(refused.exception, ConfigError)
    assert "already exists" in refused.exception.message
    assert "--overwrite" in refused.exception.hint
    both = invoke(*args, "--overwrite", "--resume")
    assert isinstance(both.exception, ConfigError)
    assert (run_dir / "stale.txt").exists()
    # a recipe that fails its checks leaves the old folder as it was
    bad = invoke(*args, "--set", "losses.0.name=nope", "--overwrite")
    assert isinstance(bad.exception, UnknownNameError), bad.output
    assert (run_dir / "stale.txt").exists()
    done = invoke(*args, "--overwrite")
    assert done.exit_code == 0, done.output
    assert not (run_dir / "stale.txt").exists()
    assert (run_dir / "student.json").is_file()
    # a finished run is replaced too
    (run_dir / "marker").write_text("x")
    again = invoke(*args, "--overwrite")
    assert again.exit_code == 0, again.output
    assert not (run_dir / "marker").exists() and (run_dir / "student.json").is_file()
    # every file the run wrote is readable by others (0644 under umask 022)
    modes = {str(p.relative_to(run_dir)): p.stat().st_mode & 0o777 for p in run_dir.rglob("*")}
    files = {p: m for p, m in modes.items() if (run_dir / p).is_file()}
    assert any(p.endswith(".safetensors") and "checkpoints" in p for p in files)
    assert set(files.values()) == {0o644}, files


# ------------------------------------------------------------------------ help text


def test_help_has_no_double_backticks_or_hard_line_breaks() -> None:
    runner = CliRunner()
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"run", "convert-weights", "show", "list"} <= set(names)
    for args in [[], *([name] for name in names)]:
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "300"})
        assert result.exit_code == 0, (args, result.output)
        assert "``" not in result.output, args
    text = runner.invoke(app, ["convert-weights", "--help"], env={"COLUMNS": "300"}).output
    # one paragraph of the docstring, two source lines, is one line of help
    assert "never a pickled object. Keys are mapped" in text
    assert "`torch.load(weights_only=True)`" in text


def test_help_text_reflows_paragraphs() -> None:
    def command() -> None:
        """First ``line``
        continues.

        Second
        paragraph."""

    assert _app.help_text(command) == "First `line` continues.\n\nSecond paragraph."
    assert _app.help_text(None) is None


# ------------------------------------------------------------------------ files, numbers


def _make_0600(tmp: Path) -> None:
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600))  # as safetensors' writer does


def test_atomic_files_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    with atomic_path(tmp_path / "a.bin") as tmp:
        _make_0600(tmp)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    folder = tmp_path / ".new"
    folder.mkdir()
    _make_0600(folder / "w.safetensors")
    replace_dir(folder, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "w.safetensors").stat().st_mode & 0o777 == 0o644
    os.umask(0o077)  # a user who keeps their files private keeps them so
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o600


def test_small_numbers_print_in_scientific_notation(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(_app, "console", Console(file=out, width=200))
    _app.print_metrics({"max_abs_diff": 4.8e-6, "tiny": 1e-7, "acc": 0.98765, "n": 3}, "t")
    text = out.getvalue()
    assert "4.8e-06" in text and "1e-07" in text and "0.9877" in text
    assert "0.0000" not in text
    assert _app.number(0.0) == "0.0000" and _app.number(2.5e7) == "2.5e+07"


# ------------------------------------------------------------------------ third parties, YAML


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="no transformers")
def test_third_party_progress_bars_are_quiet(cli: Cli, tmp_path: Path) -> None:
    # the bar transformers draws while loading weights, through its own tqdm wrapper;
    # `list nokind` runs the app's options (--import) and stops before torch loads
    (tmp_path / "bar.py").write_text(
        "from transformers.utils.logging import tqdm\n\n"
        'for _ in tqdm(range(3), desc="Loading weights"):\n'
        "    pass\n"
        'print("loaded")\n'
    )
    quiet = cli(["--import", "bar", "list", "nokind"], cwd=tmp_path)
    assert quiet.stdout.startswith("loaded"), quiet.stderr
    assert "Loading weights" not in quiet.stderr
    loud = cli(["--debug", "--import", "bar", "list", "nokind"], cwd=tmp_path)
    assert "Loading weights" in loud.stderr  # --debug shows them: the check above can fail


def test_yaml_parse_errors_name_the_file(tmp_path: Path) -> None:
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("name: x\nlosses: [kd\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(recipe)
    message = caught.value.message
    assert f'in "{recipe}", line 2' in message
    assert "<unicode string>" not in message
    assert caught.value.hint
