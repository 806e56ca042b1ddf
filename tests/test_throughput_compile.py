"""The ``compile`` part of benchmarks/throughput.py runs (quick: aot_eager, a few steps) and
returns the keys and rows the issue's table names."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow  # TorchDynamo's first compile alone takes seconds, and two models are timed
def test_compile_part_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from throughput_parts import compile as part

    out = part.measure(quick=True)
    results = out["results"]
    ratios = results["compile_over_eager_step"]
    assert set(ratios) == {"vit", "cnn"}
    assert all(isinstance(v, float) and v > 0 for v in ratios.values())
    for model in ("vit", "cnn"):
        detail = results["per_model"][model]
        assert detail["fell_back_to_eager"] is None  # aot_eager needs no compiler
        assert len(detail["warmup_s"]) == results["warmup_steps"]
        assert detail["eager"]["n"] == detail["compiled"]["n"] == results["rounds"]
    assert results["backend"] == "aot_eager" and results["threads"] >= 1
    [row] = out["rows"]
    assert row[0].startswith("student step with `train.compile`") and row[3] == "-"
    assert "≤ 1.0 expected for the ViT student" in row[2]
    assert all(isinstance(n, str) for n in out["notes"])
