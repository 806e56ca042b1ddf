"""Issue 22: one measured latency (``report`` shows ``bench.json``'s numbers, or measures them
once and writes it; every latency table states its sample size) and one renderer for every
``eval`` suite (tables, not JSON; the JSON file complete)."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from crossdistill.cli._app import number
from crossdistill.cli.eval import render_result
from crossdistill.config import Recipe
from crossdistill.errors import CheckpointError
from crossdistill.export import bench as bench_module
from crossdistill.export.bench import bench, sample_size
from crossdistill.pipeline import run_recipe
from crossdistill.report import write_report
from crossdistill.runs import Run

Cli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cli(forked_cli: Cli) -> Cli:
    """``python -m crossdistill`` forked from conftest's warm server: the process boundary
    (exit code, output) without importing torch again for each command."""
    return forked_cli


@pytest.fixture
def kd_run(kd_recipe: Recipe) -> Path:
    run_dir = run_recipe(kd_recipe).run_dir
    assert run_dir is not None
    return run_dir


def _page(run_dir: Path) -> str:
    return write_report([run_dir], max_examples=20, tensorboard=False).read_text()


def _squash(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------ one latency


def test_report_after_bench_shows_bench_json_numbers(kd_run: Path) -> None:
    measured = bench(kd_run, repeats=3, batches=1, examples=50, progress=False)
    saved = Run(kd_run).bench_file
    assert json.loads(saved.read_text()) == measured
    # A distinctive number: the report must show bench.json's, not time the student again.
    measured["results"]["student"]["p50_ms_b1"] = 12.3456
    saved.write_text(json.dumps(measured))
    before = saved.read_text()
    page = _squash(_page(kd_run))
    assert "12.346 ms" in page
    assert f"read from <code>{kd_run / 'bench.json'}</code>" in page
    # the sample size, the date and the machine bench.json records, on the page
    assert "median/p95 of 3 calls at batch 1" in page and "1 batches of 64" in page
    assert "1 thread" in page and "on 50 eval examples" in page
    assert measured["measured_at"] in page and _squash(measured["machine"]) in page
    assert saved.read_text() == before  # read, not measured again


def test_report_without_bench_json_measures_once_and_writes_it(kd_run: Path) -> None:
    saved = Run(kd_run).bench_file
    assert not saved.exists()
    page = _squash(_page(kd_run))
    written = json.loads(saved.read_text())
    p50 = written["results"]["student"]["p50_ms_b1"]
    assert f"{p50:.3f} ms" in page
    assert f"measured for this report, written to <code>{kd_run / 'bench.json'}</code>" in page
    assert _squash(sample_size(written)) in page
    # A bench.json older than the student (the run trained again) is measured again.
    written["results"]["student"]["p50_ms_b1"] = 12.3456
    saved.write_text(json.dumps(written))
    old = Run(kd_run).student_file.stat().st_mtime - 60
    os.utime(saved, (old, old))
    page = _squash(_page(kd_run))
    assert "12.346 ms" not in page and "measured for this report" in page
    assert json.loads(saved.read_text())["results"]["student"]["p50_ms_b1"] != 12.3456


def test_report_says_not_measured_when_bench_fails(
    kd_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise CheckpointError("no teacher weights", hint="train it again")

    monkeypatch.setattr(bench_module, "bench", broken)
    page = _squash(_page(kd_run))
    assert "latency not measured (no teacher weights): run `crossdistill bench" in page
    assert "latency not measured — run <code>crossdistill bench RUN</code>" in page
    assert not Run(kd_run).bench_file.exists()


def test_sample_size_names_every_count() -> None:
    text = sample_size(
        {
            "threads": 2,
            "repeats_b1": 7,
            "warmup_b1": 5,
            "batches_b64": 3,
            "batch_size_throughput": 64,
            "examples": 11,
            "measured_at": "2026-01-02T03:04:05+00:00",
            "machine": "Some CPU, Linux 6",
        }
    )
    for part in ("7 calls at batch 1", "5 warm-up", "3 batches of 64", "2 threads", "11 eval"):
        assert part in text, part
    assert "2026-01-02T03:04:05+00:00, Some CPU, Linux 6" in text


# ------------------------------------------------------------------------ one renderer

NESTED = {
    "model": "m",
    "quick": True,
    "avg": 0.5,
    "tiny": 4.8e-6,
    "scores": {"lee50": 0.25, "pang_lee": 0.75},
    "details": {"lee50": {"spearman": 0.25, "seconds": 1.5}, "pang_lee": {"acc": 0.75}},
    "ids": [1, 2, 3],
}


def test_render_result_flattens_sections_and_formats_numbers() -> None:
    console = Console(record=True, width=200)
    render_result(NESTED, "text m", console)
    out = console.export_text()
    assert not out.lstrip().startswith("{")
    for row in ("text m", "scores/lee50", "scores/pang_lee", "avg", "details", "spearman"):
        assert row in out, row
    assert number(4.8e-6) == "4.8e-06" and "4.8e-06" in out  # not 0.0000
    assert "0.7500" in out and "3 items (in the JSON)" in out


SUITE = '''
from crossdistill.suites.base import Suite


class Nested(Suite):
    """A suite with the text suite's nested result, rendering itself as raw JSON."""

    def run(self, target, options):
        return RESULT

    def render(self, result, console):
        import json
        print(json.dumps(result))


RESULT = {result}
'''


def _no_json(stdout: str) -> None:
    for line in stdout.splitlines():
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_every_suite_prints_tables_and_writes_the_whole_json(
    cli: Cli, kd_run: Path, tmp_path: Path
) -> None:
    done = cli(["eval", str(kd_run)], cwd=tmp_path)  # the default suite, "task"
    assert done.returncode == 0, done.stderr
    _no_json(done.stdout)
    written = json.loads(Run(kd_run).eval_file("test").read_text())
    assert {"accuracy", "agreement", "per_class"} <= set(written)
    out = _squash(done.stdout)
    assert f"│ accuracy │ {number(written['accuracy'])} │" in out
    assert "per_class" in out and "precision" in out  # the per-class records as a table
    assert "wrote" in done.stderr
    # --json: the same result as one line, for scripts
    as_json = cli(["eval", str(kd_run), "--json"], cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout.strip().splitlines()[-1]) == json.loads(
        Run(kd_run).eval_file("test").read_text()
    )

    # Another suite, with a nested result and a render() of its own: the same tables.
    (tmp_path / "nested_suite.py").write_text(
        textwrap.dedent(SUITE).replace("{result}", repr(NESTED))
    )
    target = tmp_path / "target"
    target.mkdir()
    done = cli(["eval", "--suite", "nested_suite:Nested", str(target)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    _no_json(done.stdout)
    assert "scores/pang_lee" in done.stdout and "spearman" in done.stdout
    assert json.loads((target / "eval-nested.json").read_text()) == NESTED


def test_bench_table_states_its_sample_size(cli: Cli, kd_run: Path, tmp_path: Path) -> None:
    done = cli(["bench", str(kd_run), "--repeats", "2", "--batches", "1"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = _squash(done.stdout)
    assert "median/p95 of 2 calls at batch 1" in out and "1 batches of 64" in out
    assert "1 thread;" in out and "eval examples" in out
    assert json.loads(Run(kd_run).bench_file.read_text())["repeats_b1"] == 2
