"""Store reads at batch level, and loading that keeps up with the step (issue 24, item 2).

Setup (benchmarks/store.py's step part): recipes/fashion_mnist/kd_store.yaml (CE + KD at T = 4,
batch 128, SmallCNN(width=8) student, crop/flip augmentation, ``augment_slots: 8``, float16
stores), over all 60,000 Fashion-MNIST training images (the first 2,048 with ``quick``).
Two stores: dense logits and top-3 logits. The teacher that writes them is a randomly
initialised MLP (``mlp``): what a batch costs to load and to train on does not depend on the
teacher that wrote the logits, and the MLP writes the stores in a minute instead of the
ResNet's many. Stores go to ``runs/bench/throughput/store/`` and are reused when complete.
One torch thread (``torch.set_num_threads(1)``) in the main process and in each worker.

1. ``topk_over_dense_batch_load``: ``next()`` on the recipe's training loader
   (``build_loaders``, no workers) over the top-k store / over the dense store, batch-level
   reads (``StoreDataset.__getitems__``: one gather per array per shard, one decode per batch,
   the examples built together). The same two with the per-example path (``_batched = False``:
   today's ``dataset[i]`` one by one, then the default collate) are measured in the same
   rounds: four variants, one ``next()`` of each per round in an order rotated each round,
   warmup rounds untimed; medians.
2. ``loading_over_step_workers``: store-fed KD (dense store) at batch 128: per step the time
   the training loop waits in ``next()`` on the loader (``load``) and ``Trainer.train_step``
   (``step``), with ``data.num_workers`` 1 (the main process and one worker share the two
   cores); the ratio of their medians. Also measured, in blocks alternating with it (a
   worker's prefetching would run into the other variants' rounds if they were interleaved
   step by step): no workers, and both per example. Each block starts with untimed steps.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from _common import EpochBatches, machine, summarize
from crossdistill import load_recipe
from crossdistill.build import build_distiller, build_loaders
from crossdistill.config import Recipe
from crossdistill.errors import CrossDistillError
from crossdistill.pipeline import cache_recipe
from crossdistill.store import KnowledgeStore
from crossdistill.train.runtime import seed_everything
from crossdistill.train.trainer import Trainer, lr_factor

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "fashion_mnist" / "kd_store.yaml"
OUT = ROOT / "runs" / "bench" / "throughput" / "store"
THREADS = 1
QUICK_EXAMPLES = 2048
TOPK = 3
WORKERS = 1
TARGETS = {"topk_over_dense_batch_load": 1.2, "loading_over_step_workers": 0.1}
CPU = torch.device("cpu")
TEACHER = (
    "teacher={model: mlp, params: {num_classes: 10}, "
    "pipeline: [{name: normalize, params: {mean: [0.2860], std: [0.3530]}}]}"
)


def recipe(fmt: str, quick: bool, workers: int = 0) -> Recipe:
    """kd_store.yaml with the MLP teacher and a dense or top-k float16 store."""
    n = QUICK_EXAMPLES if quick else None
    keys = f", keys: {{logits: {{format: topk, k: {TOPK}}}}}" if fmt == "topk" else ""
    size = n or "all"
    overrides = [
        TEACHER,
        "train.progress=false",
        "train.device=cpu",
        f"data.num_workers={workers}",
        f"name=throughput_store_{fmt}",
        f"store={{path: {OUT}/stores/fashion_mnist_{fmt}_{size}, dtype: float16{keys}}}",
    ]
    if n:
        overrides += [f"data.limit_train={n}", "data.limit_mode=first"]
    return load_recipe(RECIPE, overrides)


def ensure_store(r: Recipe) -> float:
    """Write the recipe's store unless a complete one of this recipe is there; seconds spent."""
    assert r.store is not None
    try:
        trainer_and_loader(r)
        return 0.0
    except CrossDistillError:
        pass
    start = time.perf_counter()
    cache_recipe(r, progress=False)
    return time.perf_counter() - start


def trainer_and_loader(r: Recipe) -> tuple[Trainer, Any]:
    """The recipe's store-fed training loader and a Trainer with the schedule ``fit`` uses."""
    seed_everything(r.seed, r.train.deterministic)
    distiller = build_distiller(r)
    loader, _ = build_loaders(r, CPU, distiller.teacher)
    spec = r.train.model_copy(update={"progress": False, "device": "cpu"})
    trainer = Trainer(distiller, spec)
    steps = len(loader)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer, lambda s: lr_factor(s, spec.schedule, steps, spec.epochs)
    )
    trainer.distiller.to(CPU).train()
    return trainer, loader


class Batches(EpochBatches):
    """Batches of an EpochLoader, epoch after epoch; ``batched`` selects the store's path."""

    def __init__(self, loader: Any, batched: bool) -> None:
        loader.dataset._batched = batched
        super().__init__(loader)


def timed(f: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def load_part(quick: bool) -> dict[str, Any]:
    """Part 1: four loaders, one ``next()`` each per round, rotated."""
    rounds, warmup = (20, 3) if quick else (200, 5)
    variants = {}
    for fmt in ("topk", "dense"):
        for batched in (True, False):
            _, loader = trainer_and_loader(recipe(fmt, quick))
            variants[f"{fmt}_{'batched' if batched else 'per_example'}"] = Batches(loader, batched)
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        if r == warmup:
            gc.collect()
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds = timed(variants[name].next)
            if r >= warmup:
                times[name].append(seconds)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "topk_over_dense_batch_load": round(med["topk_batched"] / med["dense_batched"], 4),
        "topk_over_dense_batch_load_per_example": round(
            med["topk_per_example"] / med["dense_per_example"], 4
        ),
        "load": {name: summarize(t) for name, t in times.items()},
        "batched_speedup": {
            fmt: round(med[f"{fmt}_per_example"] / med[f"{fmt}_batched"], 3)
            for fmt in ("topk", "dense")
        },
        "rounds": rounds,
        "warmup_rounds": warmup,
        "num_workers": 0,
        "topk_k": TOPK,
    }


def step_part(quick: bool) -> dict[str, Any]:
    """Part 2: blocks of ``steps`` training steps per variant, the variants alternating."""
    blocks, steps, warmup = (2, 8, 3) if quick else (4, 50, 5)
    variants: dict[str, tuple[Trainer, Batches]] = {}
    for workers in (WORKERS, 0):
        for batched in (True, False):
            trainer, loader = trainer_and_loader(recipe("dense", quick, workers))
            name = f"workers{workers}_{'batched' if batched else 'per_example'}"
            variants[name] = (trainer, Batches(loader, batched))
    times = {name: {"load": [], "step": []} for name in variants}
    for block in range(blocks):
        order = list(variants)
        order = order[block % len(order) :] + order[: block % len(order)]
        for name in order:
            trainer, batches = variants[name]
            gc.collect()
            for s in range(warmup + steps):
                t0 = time.perf_counter()
                batch = batches.next()
                t1 = time.perf_counter()
                trainer.train_step(batch)
                t2 = time.perf_counter()
                if s >= warmup:
                    times[name]["load"].append(t1 - t0)
                    times[name]["step"].append(t2 - t1)
    stats: dict[str, Any] = {}
    for name, t in times.items():
        load, step = statistics.median(t["load"]), statistics.median(t["step"])
        total = [a + b for a, b in zip(t["load"], t["step"], strict=True)]
        stats[name] = {
            "load_over_step": round(load / step, 4),
            "load_plus_step_median_ms": round(1000 * statistics.median(total), 4),
            "load": summarize(t["load"]),
            "step": summarize(t["step"]),
        }
    best = f"workers{WORKERS}_batched"
    return {
        "loading_over_step_workers": stats[best]["load_over_step"],
        "variants": stats,
        "blocks": blocks,
        "steps_per_block": steps,
        "warmup_steps_per_block": warmup,
        "num_workers": WORKERS,
        "batch_size": 128,
        "store": "dense float16 logits",
    }


def measure(quick: bool) -> dict[str, Any]:
    """Both measures, side by side in one run (see the module docstring)."""
    torch.set_num_threads(THREADS)
    OUT.mkdir(parents=True, exist_ok=True)
    writes = {fmt: round(ensure_store(recipe(fmt, quick)), 1) for fmt in ("dense", "topk")}
    store = KnowledgeStore(recipe("dense", quick).store.path, verify=False)  # type: ignore[union-attr]
    load = load_part(quick)
    step = step_part(quick)
    ratio_load = load["topk_over_dense_batch_load"]
    ratio_step = step["loading_over_step_workers"]
    v = step["variants"]
    results = {
        "topk_over_dense_batch_load": ratio_load,
        "loading_over_step_workers": ratio_step,
        "load": load,
        "step": step,
        "examples": store.num_examples,
        "slots": store.slots,
        "shard_size": store.manifest.shard_size,
        "store_write_s": writes,
        "torch_threads": THREADS,
        "torch_threads_per_worker": 1,  # DataLoader sets one thread in each worker
        "cores": os.cpu_count(),
        "machine": machine(),
    }

    def met(value: float, key: str) -> str:
        return "yes" if value <= TARGETS[key] else "no"

    rows = [
        [
            "loading a top-k store batch / loading a dense store batch",
            f"{ratio_load:.3f} (per example: {load['topk_over_dense_batch_load_per_example']:.3f})",
            f"<= {TARGETS['topk_over_dense_batch_load']}",
            met(ratio_load, "topk_over_dense_batch_load"),
        ],
        [
            f"data loading / training step, store-fed KD, batch 128, {WORKERS} worker",
            f"{ratio_step:.3f} (no workers: {v['workers0_batched']['load_over_step']:.3f}; "
            f"per example: {v[f'workers{WORKERS}_per_example']['load_over_step']:.3f} / "
            f"{v['workers0_per_example']['load_over_step']:.3f})",
            f"<= {TARGETS['loading_over_step_workers']}",
            met(ratio_step, "loading_over_step_workers"),
        ],
    ]
    ms = {name: s["median_ms"] for name, s in load["load"].items()}
    notes = [
        f"store part: loading a batch of 128 (no workers, medians of {load['rounds']} rounds): "
        f"top-k {ms['topk_batched']:.2f} ms, dense {ms['dense_batched']:.2f} ms at batch level; "
        f"{ms['topk_per_example']:.2f} ms and {ms['dense_per_example']:.2f} ms example by "
        f"example. {store.num_examples} examples x {store.slots} slots; MLP-written stores; "
        f"{THREADS} torch thread.",
        "store part: per step (load + step medians, ms): "
        + ", ".join(f"{name} {s['load_plus_step_median_ms']:.2f}" for name, s in v.items())
        + f"; {WORKERS} worker process(es) with 1 thread each on {os.cpu_count()} cores.",
    ]
    if ratio_load > TARGETS["topk_over_dense_batch_load"]:
        notes.append("store part: top-k loading missed its target (see the load medians).")
    if ratio_step > TARGETS["loading_over_step_workers"]:
        notes.append(
            "store part: loading with workers missed its target: the worker shares two cores "
            "with the step (and with anything else running); see the per-variant medians."
        )
    return {"results": results, "rows": rows, "notes": notes}
