"""A student's training step with ``train.compile`` against the eager step, on the CPU (issue 24,
item 3).

Setup: the two Fashion-MNIST students of the recipes, built from them as a run builds them
(model, normalize pipeline, taps): the ViT student of ``recipes/fashion_mnist/cnn_to_vit.yaml``
(patch 4, dim 32, depth 2, 2 heads, its token tap) and the small CNN of
``recipes/fashion_mnist/kd.yaml`` (``cnn``, width 8), each with its recipe's optimizer. The
step is ``Trainer.train_step`` with one cross-entropy term (no teacher: the student's own step)
on batches of 128 Fashion-MNIST training images (random images if the data set is not
installed), amp off, ``torch.set_num_threads(THREADS)``.

Per model, two Trainers from the same initial weights: eager, and ``train.compile`` with the
default backend (inductor; ``quick`` uses ``aot_eager``, which needs no C++ compiler, to check
the plumbing in seconds: its ratio says nothing about inductor). The compiled Trainer's first
steps compile (forward, then the backward lazily): they are timed apart as the warm-up and
reported, never mixed into the step times. Then rounds of one eager and one compiled step each,
in alternating order, on the same batch; ``compile_over_eager_step`` is the median compiled step
time over the median eager step time (the median of per-round ratios is reported beside it).
Where compiling fails the Trainer falls back to eager: the note says so and the target is
reported as missed.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from _common import machine, summarize
from crossdistill import load_recipe
from crossdistill.build import build_wrapper
from crossdistill.config import TrainSpec
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.wrappers import Student
from crossdistill.losses import build_loss
from crossdistill.train.compile import CompileFallbackWarning
from crossdistill.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    "vit": ROOT / "recipes" / "fashion_mnist" / "cnn_to_vit.yaml",
    "cnn": ROOT / "recipes" / "fashion_mnist" / "kd.yaml",
}
THREADS = 1  # the machines are shared: one thread times steadier than two
BATCH = 128
BATCHES = 8  # distinct batches, cycled
WARMUP_STEPS = 3  # compiled steps timed apart (the first compiles); eager gets as many untimed
QUICK_WARMUP_STEPS = 2
TARGET = "report; ≤ 1.0 expected for the ViT student"
Batch = dict[str, Any]


def _batches() -> tuple[list[Batch], str]:
    n = BATCH * BATCHES
    try:
        from crossdistill.data import load_source  # the data set may not be installed

        split = load_source("fashion_mnist", "train")
        x = split.inputs[:n].to(torch.float32) / 255.0
        y = split.targets[:n].to(torch.int64)
        data = f"Fashion-MNIST train, first {n} images / 255"
    except Exception as exc:  # not installed, unreadable: random images of the same shape
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
        data = f"random uniform images (Fashion-MNIST not available: {exc})"
    batches = [
        {"views": {"student": xb.contiguous()}, "target": yb.contiguous()}
        for xb, yb in zip(x.split(BATCH), y.split(BATCH), strict=True)
    ]
    return batches, data


def _trainers(model: str, batch: Batch, backend: str) -> tuple[Trainer, Trainer]:
    """Eager and compiled Trainers of ``model``'s student, from the same initial weights."""
    recipe = load_recipe(RECIPES[model])
    torch.manual_seed(0)
    student = build_wrapper(Student, recipe.student, "student")
    distiller = Distiller(student, [Term("ce", build_loss("ce"))])
    distiller.check(batch)
    twin = copy.deepcopy(distiller)
    base = {"device": "cpu", "amp": "off", "progress": False, "optimizer": recipe.train.optimizer}
    eager = Trainer(distiller, TrainSpec(**base))
    compiled = Trainer(twin, TrainSpec(**base, compile={"backend": backend}))
    for trainer in (eager, compiled):
        trainer.distiller.train()
    return eager, compiled


def _timed(step: Callable[[Batch], object], batch: Batch) -> float:
    start = time.perf_counter()
    step(batch)
    return time.perf_counter() - start


def _measure_model(
    model: str, batches: list[Batch], backend: str, rounds: int, warmups: int
) -> dict[str, Any]:
    eager, compiled = _trainers(model, batches[0], backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompileFallbackWarning)
        warmup = [_timed(compiled.train_step, batches[i % BATCHES]) for i in range(warmups)]
        for i in range(warmups):
            eager.train_step(batches[i % BATCHES])
        gc.collect()
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        steps = {"eager": eager.train_step, "compiled": compiled.train_step}
        for r in range(rounds):
            batch = batches[r % BATCHES]
            order = ["eager", "compiled"] if r % 2 == 0 else ["compiled", "eager"]
            for name in order:
                times[name].append(_timed(steps[name], batch))
    fell_back = [str(w.message) for w in caught if issubclass(w.category, CompileFallbackWarning)]
    med = statistics.median
    eager_ms = med(times["eager"])
    return {
        "compile_over_eager_step": round(med(times["compiled"]) / eager_ms, 4),
        "paired_ratio_median": round(
            med([c / e for e, c in zip(times["eager"], times["compiled"], strict=True)]), 4
        ),
        "eager": summarize(times["eager"]),
        "compiled": summarize(times["compiled"]),
        # the first compiled step holds the compilation; the ones after it settle
        "warmup_s": [round(s, 3) for s in warmup],
        "warmup_over_eager_s": round(sum(warmup) - warmups * eager_ms, 3),
        "parameters": sum(p.numel() for p in eager.distiller.student.parameters()),
        "fell_back_to_eager": fell_back[0] if fell_back else None,
    }


def measure(quick: bool) -> dict[str, Any]:
    """Returns {"results": {...}, "rows": [[measure, value, target, met]], "notes": [...]}."""
    torch.set_num_threads(THREADS)
    backend = "aot_eager" if quick else "inductor"
    rounds, warmups = (6, QUICK_WARMUP_STEPS) if quick else (60, WARMUP_STEPS)
    batches, data = _batches()
    per_model = {m: _measure_model(m, batches, backend, rounds, warmups) for m in RECIPES}
    ratios = {model: r["compile_over_eager_step"] for model, r in per_model.items()}
    results = {
        "compile_over_eager_step": ratios,
        "per_model": per_model,
        "backend": backend,
        "batch_size": BATCH,
        "rounds": rounds,
        "warmup_steps": warmups,
        "threads": THREADS,
        "data": data,
        "quick": quick,
        "machine": machine(),
    }
    fallback = [m for m, r in per_model.items() if r["fell_back_to_eager"]]
    vit = ratios["vit"]
    met = "-" if quick else ("yes" if vit <= 1.0 and "vit" not in fallback else "no")
    value = "; ".join(
        f"{m} {ratio:.3f} (warm-up {per_model[m]['warmup_over_eager_s']:.1f} s)"
        for m, ratio in ratios.items()
    )
    rows = [["student step with `train.compile` / eager (CPU)", value, TARGET, met]]
    notes = [
        f"train.compile backend {backend}, batch {BATCH}, {THREADS} threads, {rounds} "
        f"interleaved rounds after {warmups} warm-up steps (timed apart: "
        + ", ".join(f"{m} {per_model[m]['warmup_s']} s" for m in per_model)
        + f"); {data}."
    ]
    if quick:
        notes.append("quick: aot_eager (no C++ compiler), which checks the plumbing only")
    for m in fallback:
        notes.append(f"{m}: compiling failed and the step ran eagerly: "
                     f"{per_model[m]['fell_back_to_eager']}")  # fmt: skip
    if not quick and vit > 1.0 and "vit" not in fallback:
        spread = per_model["vit"]["compiled"]["p75_ms"] / per_model["vit"]["compiled"]["p25_ms"]
        notes.append(
            f"ViT: the compiled step took {vit:.3f}x the eager one (missed); compiled steps' "
            f"p75/p25 {spread:.2f} (load on the machine: {results['machine'].get('load_avg_1m')})"
        )
    return {"results": results, "rows": rows, "notes": notes}
