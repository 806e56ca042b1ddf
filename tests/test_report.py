"""``crossdistill report``: the HTML page of finished digits runs, bad inputs, and a headless
Chromium check that every figure of the page decodes and that the page renders to a real image."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from crossdistill.config import load_recipe
from crossdistill.pipeline import run_recipe
from crossdistill.report import ReportError, load_run, write_report
from crossdistill.report import report as report_module
from crossdistill.report.data import read_metrics
from crossdistill.report.report import pareto_front, write_tensorboard

DIGITS = Path(__file__).resolve().parent.parent / "recipes" / "digits"
CHROMIUM = Path("/usr/bin/chromium")
# A loss label is free text that reaches the config, the captions and the legends: it must be
# escaped everywhere it lands in the page.
EVIL = "<script>alert(1)</script>"
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
Cli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cli(forked_cli: Cli) -> Cli:
    """``python -m crossdistill`` forked from conftest's warm server: the process boundary
    (exit code, output) without importing torch again for each command."""
    return forked_cli


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory: pytest.TempPathFactory, digits_teacher_run: Path) -> Path:
    """``recipes/digits/kd.yaml`` (as the ``kd_recipe`` fixture builds it) with the KD term
    labelled ``EVIL``, trained once for this module."""
    out = tmp_path_factory.mktemp("report_runs")
    recipe = load_recipe(
        DIGITS / "kd.yaml",
        overrides=[
            f"teacher.weights={digits_teacher_run / 'student.safetensors'}",
            f"output.dir={out}",
            "train.progress=false",
            "train.log_every=2",
            f"losses.1.label={EVIL}",
        ],
    )
    return run_recipe(recipe).run_dir


@pytest.fixture(scope="module")
def page(kd_run: Path) -> str:
    path = write_report([kd_run], max_examples=200)
    assert path == kd_run / "report.html"
    return path.read_text()


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("report*", "checkpoints"))
    return dest


# ------------------------------------------------------------------------------ the page


def test_single_run_page_has_every_section_and_figure(page: str) -> None:
    for anchor in ("summary", "training", "validation", "confusion", "config"):
        assert f'<section id="{anchor}">' in page, anchor
    for title in (
        "Loss terms per step",
        "Validation accuracy per epoch",
        "Calibration per epoch",
        "Teacher–student agreement per epoch",
        "KL(teacher ‖ student) per epoch",
        "Confusion matrix",
    ):
        assert f"<b>{title}</b>" in page, title
    images = IMG.findall(page)
    assert len(images) == 7 == page.count("<img ")
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    # bounded evaluation, said on the page
    assert re.search(r"The student on the first 200 of 3\d\d examples", page)
    assert "(at most 200, to keep the report fast)" in page
    # one run: no Pareto plot, but latency and size in the summary
    assert 'id="pareto"' not in page
    assert " ms</td>" in page and " KiB</td>" in page


def test_page_is_self_contained_and_escaped(page: str, kd_run: Path) -> None:
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # config, caption
    assert page.count("<script>") == 1  # the page's own image check
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<link" not in page and "@import" not in page
    # nothing half-written left beside the page
    assert sorted(p.name for p in kd_run.glob("*report*")) == ["report.html"]


def test_two_runs_get_a_pareto_plot(kd_run: Path, digits_teacher_run: Path, tmp_path: Path) -> None:
    out = write_report(
        [digits_teacher_run, kd_run],
        tmp_path / "both" / "r.html",
        max_examples=50,
        tensorboard=False,
    )
    html = out.read_text()
    assert '<section id="pareto">' in html
    assert "<b>Accuracy against latency</b>" in html and "<b>Accuracy against size</b>" in html
    # the wider teacher is the more accurate and the larger: both runs lie on the size front
    assert html.count("<span class=tag>size</span>") == 2
    assert len(IMG.findall(html)) == 2 + 3 + 4 + 2  # pareto, losses + lr, per-epoch, confusions
    assert "digits_teacher" in html and "digits_kd" in html


def test_pareto_front() -> None:
    # (cost, accuracy): the second is dominated by the first; ties on both are not dominated
    points = [(1.0, 0.9), (2.0, 0.8), (3.0, 0.95), (3.0, 0.95), (0.5, 0.5)]
    assert pareto_front(points) == [True, False, True, True, True]


def test_truncated_metrics_line_is_skipped_with_a_note(kd_run: Path, tmp_path: Path) -> None:
    run = _copy(kd_run, tmp_path / "crashed")
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"time": 1.0, "kind": "st')  # a run killed while writing
    html = write_report([run], max_examples=20).read_text()
    assert "is truncated" in html and "it was skipped" in html
    assert '<section id="training">' in html


def test_steps_redone_after_a_resume_are_shown_once(tmp_path: Path) -> None:
    lines = [
        {"kind": "step", "step": 1, "loss": 3.0},
        {"kind": "step", "step": 2, "loss": 2.0},
        {"kind": "step", "step": 3, "loss": 1.9},  # after the checkpoint of step 2: redone
        {"kind": "resume", "step": 2},
        {"kind": "step", "step": 3, "loss": 1.8},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    records, notes = read_metrics(path)
    steps = [(r["step"], r.get("loss")) for r in records if r["kind"] == "step"]
    assert steps == [(1, 3.0), (2, 2.0), (3, 1.8)]
    assert "redone after a resume" in notes[0]


def test_unfinished_run_still_gets_curves(kd_run: Path, tmp_path: Path) -> None:
    run = _copy(kd_run, tmp_path / "unfinished")
    (run / "student.safetensors").unlink()
    html = write_report([run]).read_text()
    assert "the run has not finished" in html
    assert '<section id="confusion">' not in html and '<section id="training">' in html


def test_failure_while_rendering_leaves_no_file(
    kd_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr(report_module, "render_report", boom)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError):
        write_report([kd_run], out / "r.html", tensorboard=False)
    assert list(out.iterdir()) == []


def test_empty_metrics_is_an_error(kd_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "empty"
    run.mkdir()
    shutil.copy(kd_run / "config.yaml", run)
    (run / "metrics.jsonl").write_text('{"time": 1.0, "ki')
    with pytest.raises(ReportError, match="holds no complete record"):
        load_run(run)
    assert not (run / "report.html").exists()


def test_tensorboard_events_from_metrics(kd_run: Path, tmp_path: Path) -> None:
    """Every metrics.jsonl record becomes TensorBoard scalars, read back with its own reader."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = load_run(_copy(kd_run, tmp_path / "tb"))
    note = write_tensorboard(run)
    assert "written" in note
    events = accumulator.EventAccumulator(str(run.run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/ce", f"train/{EVIL}", "train/lr", "eval/accuracy"} <= tags
    assert {"eval/agreement", "epoch/train_loss"} <= tags
    steps = [r for r in run.records if r.get("kind") == "step"]
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [r["step"] for r in steps]
    assert logged[-1].value == pytest.approx(steps[-1]["loss"], rel=1e-6)


# ------------------------------------------------------------------------------ the CLI


def test_cli_bad_inputs_exit_2_without_a_page(
    cli: Cli, flat: Callable[[str], str], kd_run: Path, tmp_path: Path
) -> None:
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    no_metrics = tmp_path / "no_metrics"
    no_metrics.mkdir()
    shutil.copy(kd_run / "config.yaml", no_metrics)
    result = cli(["report", str(not_a_run)], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "is not a run directory (no config.yaml)" in flat(result.stderr)
    assert "Traceback" not in result.stderr
    result = cli(["report", str(no_metrics), "--out", "r.html"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "has no metrics.jsonl" in flat(result.stderr)
    assert not (tmp_path / "r.html").exists() and not list(tmp_path.glob(".r.html*"))


# ------------------------------------------------------------------------------ Chromium


def _chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: Chromium refuses to start as root without it (CI runs as root)
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(profile)},
    )


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is not installed (scripts/system_deps.sh installs it as root: "
    "sudo apt-get install -y chromium)",
)
def test_chromium_renders_every_figure(page: str, kd_run: Path, tmp_path: Path) -> None:
    url = (kd_run / "report.html").resolve().as_uri()
    # the page's script writes <html data-images="decoded/total"> once everything has loaded
    dom = _chromium(url, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom")
    found = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert found, f"no image count in the DOM; chromium said: {dom.stderr[-2000:]}"
    assert found.group(1) == found.group(2) == str(page.count("<img "))

    shot = kd_run / "report.png"
    result = _chromium(url, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2400")
    assert shot.is_file(), result.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # a blank 1280x2400 PNG is a few kilobytes
    pil = pytest.importorskip("PIL.Image")
    with pil.open(shot) as im:
        assert im.size == (1280, 2400)
        gray = im.convert("L")
        hist = gray.histogram()
    n = sum(hist)
    mean = sum(i * c for i, c in enumerate(hist)) / n
    std = (sum(c * (i - mean) ** 2 for i, c in enumerate(hist)) / n) ** 0.5
    assert std > 10, f"the screenshot is nearly uniform (gray std {std:.1f})"


def test_the_report_shows_every_class_of_the_last_evaluation(page: str, kd_run: Path) -> None:
    per_class = json.loads((kd_run / "eval.json").read_text())["per_class"]
    assert list(per_class) == [str(d) for d in range(10)]  # digits' class names
    assert "Per class" in page and "macro-F1" in page
    for row in per_class.values():
        assert f"{row['f1']:.4f}" in page
