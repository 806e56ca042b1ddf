"""Every loss against its NumPy re-derivation and torchdistill 1.1.5: values and speed.

For each bench case (tests/losses/ref_*.py: the NumPy references the loss tests use, at the
shapes of a real training step — CIFAR-100 logits, ResNet maps, BERT/ViT attention, MiniLM
sentence embeddings ...):

- ``max_abs_diff_vs_reference``: |ours (float32) − NumPy float64 reference|, and the same
  relative to the value;
- ``max_abs_diff_vs_torchdistill``: |ours − torchdistill| on the same float32 tensors, after
  the documented convention conversion (``td_note``), where torchdistill has the loss;
- ``time_ratio``: median forward+backward time of ours / torchdistill's, over ``--repeats``
  interleaved runs (ours, theirs, ours, ...) on the same inputs, one thread.

    python benchmarks/losses.py            # 25 interleaved repeats (after 3 warm-ups)
    python benchmarks/losses.py --quick    # 5 repeats

Writes benchmarks/results/losses[.quick].json and .md. Targets: diff ≤ 1e-5 (float32) for
every loss; time ratio ≤ 1.0 for the median loss that torchdistill also has.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "losses"))  # the NumPy references and cases

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_case import BenchCase  # noqa: E402
from ref_attention import BENCH_CASES as ATTENTION  # noqa: E402
from ref_contrastive import BENCH_CASES as CONTRASTIVE  # noqa: E402
from ref_embedding import BENCH_CASES as EMBEDDING  # noqa: E402
from ref_feature import BENCH_CASES as FEATURE  # noqa: E402
from ref_logit import BENCH_CASES as LOGIT  # noqa: E402

from _common import command_line, machine, markdown_table, summarize, write_results  # noqa: E402
from crossdistill.core.knowledge import Knowledge  # noqa: E402
from crossdistill.losses import LOSSES, build_loss  # noqa: E402

CASES: list[BenchCase] = [*LOGIT, *FEATURE, *CONTRASTIVE, *ATTENTION, *EMBEDDING]


def _tensors(arrays: dict[str, np.ndarray], grad: bool) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float32, requires_grad=grad) for k, v in arrays.items()}


def _fwd_bwd(fn: Callable[[], torch.Tensor], inputs: list[torch.Tensor]) -> float:
    for x in inputs:
        x.grad = None
    start = time.perf_counter()
    fn().backward()
    return time.perf_counter() - start


def run_case(case: BenchCase, repeats: int, warmup: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    s_np, t_np, y_np = case.make(rng, True)
    loss = build_loss(case.loss, case.params)
    if case.prime is not None:
        case.prime(loss, np.random.default_rng(1))
    s, t = _tensors(s_np, grad=True), _tensors(t_np, grad=False)
    y = torch.as_tensor(y_np) if y_np is not None else None

    def ours() -> torch.Tensor:
        return loss(Knowledge(s, source="student"), Knowledge(t, source="teacher"), y)

    value = ours().item()  # also materialises lazy heads before the reference reads them
    reference = case.reference(s_np, t_np, y_np, loss)
    row: dict[str, Any] = {
        "loss": case.loss,
        "case": case.id,
        "params": case.params,
        "shapes": {
            "student": {k: list(v.shape) for k, v in s_np.items()},
            "teacher": {k: list(v.shape) for k, v in t_np.items()},
        },
        "value": float(value),
        "reference": float(reference),
        "max_abs_diff_vs_reference": abs(float(value) - float(reference)),
        "rel_diff_vs_reference": abs(float(value) - float(reference)) / max(abs(reference), 1e-12),
        "torchdistill": case.torchdistill is not None,
        "td_note": case.td_note,
    }
    student_inputs = list(s.values())
    ours_s: list[float] = []
    theirs_s: list[float] = []
    if case.torchdistill is not None:
        td_fn = case.torchdistill

        def theirs() -> torch.Tensor:
            return td_fn(s, t, y)

        td_value = theirs().item()
        row["max_abs_diff_vs_torchdistill"] = abs(float(value) - td_value)
        for i in range(warmup + repeats):  # interleaved: both see the same machine state
            a = _fwd_bwd(ours, student_inputs)
            b = _fwd_bwd(theirs, student_inputs)
            if i >= warmup:
                ours_s.append(a)
                theirs_s.append(b)
        row["ours"], row["torchdistill_time"] = summarize(ours_s), summarize(theirs_s)
        row["time_ratio"] = statistics.median(ours_s) / statistics.median(theirs_s)
    else:
        for i in range(warmup + repeats):
            a = _fwd_bwd(ours, student_inputs)
            if i >= warmup:
                ours_s.append(a)
        row["ours"] = summarize(ours_s)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 25")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--cases", nargs="+", help="only these case ids (printed, not written)")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 25)
    torch.set_num_threads(1)  # one thread for both: the comparison, not the machine, is measured
    torch.manual_seed(0)

    rows = []
    for case in CASES:
        if args.cases and case.id not in args.cases:
            continue
        row = run_case(case, repeats)
        rows.append(row)
        ratio = f"{row['time_ratio']:.2f}" if "time_ratio" in row else "—"
        print(
            f"{case.id:22s} diff {row['max_abs_diff_vs_reference']:.2e}  ratio {ratio}",
            flush=True,
        )
    if args.cases:
        return
    covered = {r["loss"] for r in rows}
    ratios = [r["time_ratio"] for r in rows if "time_ratio" in r]
    worst = max(r["max_abs_diff_vs_reference"] for r in rows)
    worst_td = max((r.get("max_abs_diff_vs_torchdistill", 0.0) for r in rows), default=0.0)
    result = {
        "cases": rows,
        "losses_without_case": sorted(set(LOSSES.names()) - covered),
        "max_abs_diff_vs_reference": worst,
        "max_abs_diff_vs_torchdistill": worst_td,
        "median_time_ratio": statistics.median(ratios) if ratios else None,
        "repeats": repeats,
        "threads": 1,
        "quick": args.quick,
        "command": command_line(),
        "machine": machine(),
    }
    result["targets"] = {
        "max_abs_diff_vs_reference<=1e-5": worst <= 1e-5,
        "max_abs_diff_vs_torchdistill<=1e-5": worst_td <= 1e-5,
        "median_time_ratio<=1.0": result["median_time_ratio"] is not None
        and result["median_time_ratio"] <= 1.0,
    }
    table = markdown_table(
        ["case", "value", "|Δ| vs NumPy", "|Δ| vs torchdistill", "ours ms", "ours / torchdistill"],
        [
            (
                r["case"],
                f"{r['value']:.6g}",
                f"{r['max_abs_diff_vs_reference']:.1e}",
                f"{r['max_abs_diff_vs_torchdistill']:.1e}" if r["torchdistill"] else "—",
                f"{r['ours']['median_ms']:.3f}",
                f"{r['time_ratio']:.2f}" if "time_ratio" in r else "—",
            )
            for r in rows
        ],
    )
    notes = (
        f"float32, realistic shapes, forward+backward medians of {repeats} interleaved runs on "
        f"1 thread; median ratio over the {len(ratios)} losses torchdistill has: "
        f"{result['median_time_ratio']:.2f}."
    )
    write_results("losses" + (".quick" if args.quick else ""), result, table, notes)


if __name__ == "__main__":
    main()
