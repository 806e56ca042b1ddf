"""The store part of the throughput benchmark runs (quick) and returns its measures."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
def test_store_part_measures_both_ratios(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from throughput_parts import store

    monkeypatch.setattr(store, "OUT", tmp_path)  # stores written here, not under runs/
    measured = store.measure(quick=True)
    results = measured["results"]
    for key in ("topk_over_dense_batch_load", "loading_over_step_workers"):
        assert isinstance(results[key], float) and results[key] > 0
    assert set(results["load"]["load"]) == {
        "topk_batched",
        "topk_per_example",
        "dense_batched",
        "dense_per_example",
    }
    assert set(results["step"]["variants"]) == {
        "workers1_batched",
        "workers1_per_example",
        "workers0_batched",
        "workers0_per_example",
    }
    assert results["torch_threads"] == 1 and results["examples"] == store.QUICK_EXAMPLES
    assert len(measured["rows"]) == 2
    for name, value, target, met in measured["rows"]:
        assert isinstance(name, str) and isinstance(value, str) and target.startswith("<=")
        assert met in ("yes", "no")
    assert all(isinstance(note, str) for note in measured["notes"])
