"""The export part of the throughput benchmark runs (quick) and returns its measures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("model2vec") is None or importlib.util.find_spec("onnx") is None,
    reason="needs model2vec and onnx: pip install 'crossdistill[text,onnx]'",
)
def test_export_part_measures_both_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from throughput_parts import export

    monkeypatch.setattr(export, "OUT", tmp_path)  # scratch files here, not under runs/
    measured = export.measure(quick=True)
    results = measured["results"]
    assert isinstance(results["onnx_export_s"], float) and results["onnx_export_s"] > 0
    assert results["onnx_export_dynamo_s"] > 0
    onnx = results["onnx"]
    assert 6000 <= onnx["student_parameters"] <= 7000  # the 6k-parameter student
    assert onnx["chosen"]["onnx_exporter"]["exporter"] in ("torchscript", "dynamo")
    for which in ("chosen", "dynamo"):
        assert 0 <= onnx[which]["max_abs_diff"] < 1e-3 and onnx[which]["top1_agreement"] > 0.99
    ratios = results["m2v_export_over_model2vec"]
    assert set(ratios) == {"1", "2"} and all(r > 0 for r in ratios.values())
    sizes = results["model2vec"]["sizes_bytes"]
    assert sizes["m2v_export"] > 30522 * 240 * 2  # float16 table plus the safetensors header
    assert len(measured["rows"]) == 2
    for name, value, target, met in measured["rows"]:
        assert isinstance(name, str) and isinstance(value, str) and isinstance(target, str)
        assert met in ("yes", "no")
    assert all(isinstance(note, str) for note in measured["notes"])
    assert (tmp_path / "student.safetensors").is_file()
    sys.modules.pop("throughput_parts.export", None)
