"""crossdistill export / bench: the student alone, parity-checked, atomic, runnable without
crossdistill; bad inputs through the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdistill.build import build_eval_loader
from crossdistill.config import load_recipe
from crossdistill.errors import CheckpointError
from crossdistill.export import export_run
from crossdistill.export.bench import bench
from crossdistill.pipeline import run_recipe
from crossdistill.runs import load_student

ROOT = Path(__file__).resolve().parent.parent
Cli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cli(forked_cli: Cli) -> Cli:
    """``python -m crossdistill`` forked from conftest's warm server: the process boundary
    (exit code, output) without importing torch again for each command."""
    return forked_cli


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory: pytest.TempPathFactory, digits_teacher_run: Path) -> Path:
    """A finished digits KD run (the ``kd_recipe`` fixture's recipe, built once per module)."""
    recipe = load_recipe(
        ROOT / "recipes" / "digits" / "kd.yaml",
        overrides=[
            f"teacher.weights={digits_teacher_run / 'student.safetensors'}",
            f"output.dir={tmp_path_factory.mktemp('export_runs')}",
            "train.progress=false",
        ],
    )
    return run_recipe(recipe).run_dir


def _eval_set(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """All validation inputs of the run's recipe and the trained student's logits on them."""
    recipe = load_recipe(run_dir / "config.yaml")
    x = torch.cat([b["views"]["student"] for b in build_eval_loader(recipe, torch.device("cpu"))])
    student = load_student(run_dir).eval()
    with torch.no_grad():
        return x.numpy(), student(x)["logits"].numpy()


@pytest.fixture(scope="module")
def onnx_export(kd_run: Path) -> Path:
    return export_run(kd_run, "onnx")


def _no_leftovers(run_dir: Path) -> None:
    root = run_dir / "export"
    assert not root.exists() or all(not p.name.startswith(".") for p in root.iterdir())


def test_onnx_matches_student_on_validation_set(kd_run: Path, onnx_export: Path) -> None:
    import onnxruntime as ort

    assert onnx_export == kd_run / "export" / "onnx"
    assert sorted(p.name for p in onnx_export.iterdir()) == [
        "README.md",
        "model.onnx",
        "parity.json",
        "preprocessing.json",
    ]
    x, ref = _eval_set(kd_run)
    session = ort.InferenceSession(str(onnx_export / "model.onnx"))
    out = session.run(None, {"input": x})[0]
    assert np.abs(out - ref).max() <= 1e-4
    assert (out.argmax(1) == ref.argmax(1)).mean() == 1.0
    one = session.run(None, {"input": x[:1]})[0]  # the batch axis is dynamic
    np.testing.assert_allclose(one, ref[:1], atol=1e-4)
    parity = json.loads((onnx_export / "parity.json").read_text())
    assert parity["examples"] == len(x) and parity["top1_agreement"] == 1.0
    assert parity["max_abs_diff_all"] <= 1e-4
    assert parity["student_weights"] == "SHA-256 verified against student.json"
    pre = json.loads((onnx_export / "preprocessing.json").read_text())
    assert pre["input"]["shape"] == [None, 1, 8, 8] and pre["input"]["value_range"] == [0.0, 1.0]
    assert pre["pipeline"] == [{"name": "normalize", "params": {"mean": [0.3053], "std": [0.3759]}}]
    assert pre["pipeline_in_graph"] and pre["num_classes"] == 10
    assert pre["outputs"] == [{"name": "logits", "shape": [None, 10]}]
    _no_leftovers(kd_run)


def test_onnx_export_records_the_exporter_that_ran(onnx_export: Path) -> None:
    """The digits student goes through the TorchScript-based exporter (exact on it), and the
    export says so, with the seconds it took, where the CLI and the model card read it."""
    parity = json.loads((onnx_export / "parity.json").read_text())
    pre = json.loads((onnx_export / "preprocessing.json").read_text())
    chosen = pre["onnx_exporter"]
    assert chosen["exporter"] == "torchscript" and len(chosen["attempts"]) == 1
    assert parity["exporter"] == pre["exporter"] and "dynamo=False" in parity["exporter"]
    assert 0 < chosen["attempts"][0]["seconds"] <= parity["export_seconds"]
    assert "TorchScript-based exporter" in (onnx_export / "README.md").read_text()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_int8_keeps_top1_agreement(kd_run: Path, fmt: str) -> None:
    folder = export_run(kd_run, fmt, int8=True)
    assert folder.name == f"{fmt}-int8"
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["top1_agreement"] >= 0.99, parity
    assert json.loads((folder / "preprocessing.json").read_text())["quantization"]
    if fmt == "onnx":  # independently of the parity code: onnxruntime on the whole eval split
        import onnx
        import onnxruntime as ort

        ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        x, ref = _eval_set(kd_run)
        out = ort.InferenceSession(str(folder / "model.onnx")).run(None, {"input": x})[0]
        assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_safetensors_export_holds_the_student_alone(kd_run: Path) -> None:
    from safetensors.torch import load_file

    folder = export_run(kd_run, "safetensors")
    state = load_file(str(folder / "model.safetensors"))
    assert set(state) == set(load_student(kd_run).model.state_dict())  # no teacher/adapters
    assert json.loads((folder / "parity.json").read_text())["max_abs_diff_all"] == 0.0


ISOLATED = """
import sys
sys.modules["crossdistill"] = None  # `import crossdistill` now raises ImportError
{block}
import numpy as np
x = np.load(sys.argv[1]); ref = np.load(sys.argv[2])
{run}
assert np.abs(out - ref).max() <= 1e-4, np.abs(out - ref).max()
assert "crossdistill" not in [m for m, v in sys.modules.items() if v is not None]
print("ok", out.shape)
"""

RUNTIMES = {
    "onnx": (
        "sys.modules['torch'] = None",
        "import onnxruntime as ort\n"
        "out = ort.InferenceSession(sys.argv[3]).run(None, {'input': x})[0]",
    ),
    "torchscript": (
        "sys.modules['onnxruntime'] = None",
        "import torch\nout = torch.jit.load(sys.argv[3])(torch.from_numpy(x)).detach().numpy()",
    ),
}


@pytest.mark.parametrize("fmt", sorted(RUNTIMES))
def test_export_runs_without_crossdistill(
    kd_run: Path, onnx_export: Path, fmt: str, tmp_path: Path
) -> None:
    folder = onnx_export if fmt == "onnx" else export_run(kd_run, fmt)
    x, ref = _eval_set(kd_run)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", ref)
    block, run = RUNTIMES[fmt]
    script = ISOLATED.format(block=block, run=run)
    model = folder / ("model.onnx" if fmt == "onnx" else "model.pt")
    # -I: isolated mode (no PYTHONPATH, no user site, the script's folder not on sys.path)
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            script,
            str(tmp_path / "x.npy"),
            str(tmp_path / "ref.npy"),
            str(model),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


# ----------------------------------------------------------------------------- bad inputs


def _copy_run(kd_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(kd_run, run, ignore=shutil.ignore_patterns("export", "bench.json"))
    return run


BAD_OP = '''
import torch
from torch import nn


class Unexportable(nn.Module):
    """A digits classifier whose forward uses torch.kthvalue, which torch.onnx cannot convert."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc(x - torch.kthvalue(x, 2, dim=1).values[:, None])
'''


def _unfinished(run: Path) -> str:
    (run / "student.safetensors").unlink()
    (run / "student.json").unlink()
    return "the run has not finished"


def _flipped_byte(run: Path) -> str:
    path = run / "student.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # inside the last tensor: safetensors still reads the file
    path.write_bytes(bytes(data))
    return "student.safetensors is corrupted"


def _unsupported_op(run: Path) -> str:
    from safetensors.torch import save_file

    (run.parent / "bad_op_model.py").write_text(textwrap.dedent(BAD_OP))
    sys.path.insert(0, str(run.parent))
    try:
        from bad_op_model import Unexportable  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(run.parent))
        sys.modules.pop("bad_op_model", None)
    save_file(Unexportable().state_dict(), str(run / "student.safetensors"))
    meta = json.loads((run / "student.json").read_text())
    meta.update(
        model="bad_op_model:Unexportable",
        params={},
        sha256=hashlib.sha256((run / "student.safetensors").read_bytes()).hexdigest(),
    )
    (run / "student.json").write_text(json.dumps(meta))
    return "ONNX export of the student failed: operator aten.kthvalue"


@pytest.mark.parametrize("damage", [_unfinished, _flipped_byte, _unsupported_op])
def test_cli_export_bad_inputs(
    kd_run: Path, tmp_path: Path, cli: Cli, flat: Callable[[str], str], damage
) -> None:
    run = _copy_run(kd_run, tmp_path)
    expected = damage(run)
    # the student named by import path is the user's own module: they allow it
    allow = ["--allow-import", "bad_op_model"] if damage is _unsupported_op else []
    result = cli([*allow, "export", str(run), "--format", "onnx"], cwd=tmp_path)
    message = flat(result.stderr)
    assert result.returncode == 2, result.stderr
    assert message.count("error:") == 1 and expected in message, message
    assert "hint:" in message and "Traceback" not in message
    assert not (run / "export").exists() or not any((run / "export").iterdir())


def test_no_checkpoint_no_student_and_bad_header(kd_run: Path, tmp_path: Path) -> None:
    run = _copy_run(kd_run, tmp_path)
    header = run / "student.safetensors"
    header.write_bytes(b"\xff" + header.read_bytes()[1:])  # the header length is now absurd
    with pytest.raises(CheckpointError, match=r"student\.safetensors is corrupted: its SHA-256"):
        export_run(run, "torchscript")
    header.unlink()
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(CheckpointError, match=r"neither student\.safetensors nor a checkpoint"):
        export_run(run, "torchscript")
    assert not (run / "export").exists() or not any((run / "export").iterdir())


def test_failed_export_keeps_the_previous_one(
    kd_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossdistill.export import EXPORTERS

    run = _copy_run(kd_run, tmp_path)
    good = export_run(run, "torchscript")
    before = (good / "model.pt").read_bytes()

    def broken(self, inputs, folder):
        (folder / "model.pt").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(EXPORTERS.get("torchscript"), "export", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(run, "torchscript")
    assert (good / "model.pt").read_bytes() == before
    assert sorted(p.name for p in (run / "export").iterdir()) == ["torchscript"]


def test_bench_run_side_by_side(kd_run: Path, onnx_export: Path) -> None:
    report = bench(kd_run, repeats=3, batches=1, progress=False)
    results = report["results"]
    assert {"teacher", "student", "onnx"} <= set(results)
    for row in results.values():
        assert row["p50_ms_b1"] > 0 and row["throughput_b64"] > 0 and row["size_mb"] > 0
        assert row["params"] > 0
    assert results["onnx"]["top1_agreement"] == 1.0
    assert results["teacher"]["params"] > results["student"]["params"]
    assert json.loads((kd_run / "bench.json").read_text())["results"].keys() == results.keys()
