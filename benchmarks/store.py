"""The knowledge store: what caching the teacher buys (time, bytes) and what top-k costs (accuracy).

    python benchmarks/store.py          # full: 156k sentences, 200 rounds, 3 seeds x 15 epochs
    python benchmarks/store.py --quick  # minutes: 3,000 sentences, 20 rounds, 1 seed x 2 epochs

Writes benchmarks/results/store[.quick].json and .md. Stores and runs go to runs/bench[-quick]/
(git-ignored); a store or run already there for the same recipe is reused (a store's write time
comes from the record written next to it when it was written). Everything runs on the CPU with
``--threads`` torch threads (default 1; also ``OMP_NUM_THREADS`` and ``RAYON_NUM_THREADS``, the
tokenizers' pool), recorded in the results. One thread because the machine is shared: with
other processes busy, two OpenMP threads on two cores ran MiniLM at 63 sentences/s against 102
with one (and the ResNet teacher up to 10x slower), as threads wait for each other.

1. **Text epoch, online vs from the store** (``online_epoch_s``, ``cached_epoch_s``,
   ``cached_epoch_speedup``; target ≥ 20x). Recipe recipes/text/minilm_static_store.yaml: teacher
   all-MiniLM-L6-v2 (``minilm``, ``outputs: [embedding]``), student ``static_embedding``, loss
   ``fitnet`` on the embeddings, batch 128, data ``sentences`` train split (all of it in full mode:
   ``epoch_examples``; ``data.limit_train`` of 3,000 with --quick). The store is written with
   ``cache_recipe`` (what ``crossdistill cache`` runs), timed as ``store_write_s``;
   ``store_bytes`` is the size of its shard files. An epoch is timed as ``Trainer.fit`` of a
   Trainer with ``epochs: 1``, no evaluation loader and no run directory, i.e. exactly
   ``_train_epoch``: the DataLoader (sampler, dataset ``__getitem__``, collate) and every
   ``train_step`` (forward, loss, backward, AdamW step, scheduler step), with ``perf_counter``
   around the call. Online, the dataset is the recipe's TextDataset and each step runs MiniLM
   (tokenizer included) on the batch; cached, it is the StoreDataset over the same TextDataset
   and each step reads the embeddings from the store (the first read of each shard verifies its
   SHA-256: that is counted). Before each timed epoch everything is rebuilt from the recipe
   (``build_distiller``, ``build_loaders``, ``Distiller.check``; not timed) after
   ``seed_everything``, so both variants start from the same student weights and run the same
   steps on the same batches (the same ``EpochSampler`` seed and epoch); their mean training
   losses are recorded as a check. Epochs run in the order cached, online, cached (twice that
   with --quick); ``cached_epoch_s``/``online_epoch_s`` are medians. ``epochs: 1`` makes the
   cosine schedule one epoch long: it changes learning-rate values, not the work of a step.

2. **A KD step from the store vs a plain step** (``cached_kd_vs_plain_step_ratio``, target
   ≤ 1.05). Recipe recipes/fashion_mnist/kd_store.yaml (kd.yaml: CE + KD at T = 4, batch 128,
   SmallCNN(width=8) student, crop/flip augmentation, plus ``augment_slots: 8`` and a float16
   dense store of the teacher's logits). ``cached_kd_step`` = ``next()`` on the recipe's training
   DataLoader (StoreDataset: slot lookup, recorded augmentation parameters read from the store
   and applied, logits decoded, collate) + ``Trainer.train_step`` (with the LambdaLR scheduler
   ``fit`` installs). ``plain_student_step`` = ``next()`` on an ``example_loader`` over a plain
   ``DistillDataset`` of the same images, augmentation, seed and 8 slots with only a student view
   + a hand-written step (normalize, forward, ``F.cross_entropy``, ``zero_grad``, backward, SGD
   with the recipe's momentum, Nesterov and weight decay). Both loaders use the same sampler seed,
   so every round both variants get the same images with the same augmentation. A third variant,
   ``cached_kd_topk_step``, is the same as ``cached_kd_step`` reading a top-3 store (for
   information; it decodes top-k rows per example). Rounds are interleaved like
   benchmarks/overhead.py: one step of each variant per round, the order rotated each round,
   5 untimed warmup rounds, ``gc.collect()`` once, then 200 (20 with --quick) timed rounds;
   medians, quartiles, and the load (``next()``) and step parts are reported, plus the median of
   per-round ratios (``paired_ratios``), which cancels load that drifts on a shared machine. The
   target ratio is the ratio of medians of the whole step (load + step).

3. **Bytes per example** (``bytes_per_example_dense``, ``bytes_per_example_topk``): stores of
   1,000-class logits from a randomly initialised MLP (``mlp``, ``num_classes: 1000``; the bytes
   do not depend on the weights) over the first 10,000 Fashion-MNIST training images, no
   augmentation (one slot), dense float16 vs top-k with k = 10 (float16 values, int16 indices,
   the float32 mass of the rest): the shard files' size on disk divided by the examples, so the
   safetensors headers are included.

4. **Accuracy, dense vs top-k logits** (``acc_full_logits``, ``acc_topk_logits``, target: within
   0.2 pt). kd_store.yaml trained from a dense float16 store and from a top-3 store (k = 3 of the
   10 classes, float16), one store per seed because the recorded augmentations depend on the
   seed; the teacher is the ResNet that benchmarks/fashion_mnist.py trains (runs/bench, reused;
   with --quick runs/bench-quick's 3-epoch teacher and 10,000 training images). Test accuracy
   after the last epoch; mean ± std over seeds 0 1 2 (one seed, 2 epochs with --quick).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    EpochBatches,
    command_line,
    format_mean_std,
    machine,
    markdown_table,
    mean_std,
    results_markdown,
    summarize,
    write_results,
)
from crossdistill import load_recipe  # noqa: E402
from crossdistill._util.device import to_device  # noqa: E402
from crossdistill.build import (  # noqa: E402
    Head,
    build_dataset,
    build_distiller,
    build_loaders,
    store_codecs,
    store_fingerprint,
)
from crossdistill.config import Recipe, validate_recipe  # noqa: E402
from crossdistill.data import build_augmentation, example_loader, load_source  # noqa: E402
from crossdistill.data.dataset import DistillDataset, preview_batch  # noqa: E402
from crossdistill.errors import CrossDistillError  # noqa: E402
from crossdistill.pipeline import cache_recipe, run_or_reuse  # noqa: E402
from crossdistill.runs import Run  # noqa: E402
from crossdistill.store import KnowledgeStore  # noqa: E402
from crossdistill.train.runtime import seed_everything  # noqa: E402
from crossdistill.train.trainer import Trainer, lr_factor  # noqa: E402

RECIPES = HERE.parent / "recipes"
TEXT_RECIPE = RECIPES / "text" / "minilm_static_store.yaml"
KD_RECIPE = RECIPES / "fashion_mnist" / "kd_store.yaml"
TEACHER_RECIPE = RECIPES / "fashion_mnist" / "teacher.yaml"
QUICK_SENTENCES = 3000
QUICK_IMAGES = 10_000
BYTES_EXAMPLES = 10_000
BYTES_CLASSES = 1000
BYTES_TOPK = 10
ACC_TOPK = 3
TARGETS = {
    "cached_epoch_speedup>=": 20.0,
    "cached_kd_vs_plain_step_ratio<=": 1.05,
    "acc_topk_within_pt": 0.2,
}
NOISY_SPREAD = 1.25  # p75/p25 of a variant's step times above which the notes warn
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- stores


def _store_matches(recipe: Recipe) -> bool:
    """Whether ``recipe.store.path`` holds a complete store of this recipe (teacher, data,
    augmentation, keys and formats)."""
    assert recipe.store is not None
    try:
        store = KnowledgeStore(recipe.store.path, verify=False)
        seed_everything(recipe.seed, recipe.train.deterministic)
        distiller = build_distiller(recipe)
        assert distiller.teacher is not None
        dataset = build_dataset(recipe, recipe.data.train_split, True)
        store.check(store_fingerprint(recipe, distiller.teacher, dataset))
    except CrossDistillError:
        return False
    want = store_codecs(recipe, distiller)
    have = store.manifest.keys
    return set(want) == set(have) and all(
        (want[k].format, want[k].k, want[k].dtype) == (have[k].format, have[k].k, have[k].dtype)
        for k in want
    )


def ensure_store(recipe: Recipe) -> dict[str, Any]:
    """Write the recipe's store with ``cache_recipe`` and time it, or reuse a complete one of the
    same recipe whose write was timed; returns the write record (seconds, bytes, examples)."""
    assert recipe.store is not None
    path = recipe.store.path
    record_path = path.with_name(path.name + ".write.json")
    if record_path.is_file() and _store_matches(recipe):
        return {**json.loads(record_path.read_text()), "reused": True}
    if path.exists():  # incomplete, stale or untimed: rewrite it from scratch to time it
        shutil.rmtree(path)
    record_path.unlink(missing_ok=True)
    print(f"writing store {path} ...", flush=True)
    start = time.perf_counter()
    cache_recipe(recipe, progress=False)
    seconds = time.perf_counter() - start
    store = KnowledgeStore(path, verify=False)
    on_disk = sum((path / info.file).stat().st_size for info in store.manifest.shards)
    record = {
        "seconds": round(seconds, 3),
        "bytes": on_disk,
        "examples": store.num_examples,
        "slots": store.slots,
        "torch_threads": torch.get_num_threads(),
    }
    record_path.write_text(json.dumps(record, indent=1))
    print(f"  {seconds:.1f} s, {on_disk:,} bytes", flush=True)
    return {**record, "reused": False}


# ----------------------------------------------------------------------------- 1. text epochs


def time_text_epoch(recipe: Recipe, cached: bool) -> dict[str, float]:
    """One training epoch through ``Trainer.fit``: online teacher, or the store when ``cached``."""
    r = recipe if cached else recipe.model_copy(update={"store": None})
    seed_everything(r.seed, r.train.deterministic)
    distiller = build_distiller(r)
    train_loader, _ = build_loaders(r, CPU, distiller.teacher)
    distiller.to(CPU).check(to_device(preview_batch(train_loader.dataset), CPU))
    spec = r.train.model_copy(update={"epochs": 1, "progress": False, "device": "cpu"})
    trainer = Trainer(distiller, spec)
    gc.collect()
    start, start_cpu = time.perf_counter(), time.process_time()
    history = trainer.fit(train_loader)
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "train_loss": history.train_loss[-1],
        "steps": trainer.step,
    }


def text_part(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    overrides = [
        f"output.dir={out}",
        "train.progress=false",
        f"store.path={out}/stores/minilm_sentences",
    ]
    if args.quick:
        # published numbers used the first N (limit_mode's old behaviour)
        overrides += [f"data.limit_train={QUICK_SENTENCES}", "data.limit_mode=first"]
    recipe = load_recipe(TEXT_RECIPE, overrides)
    write = ensure_store(recipe)
    order = ["cached", "online", "cached"] + (["online", "cached"] if args.quick else [])
    epochs: dict[str, list[dict[str, float]]] = {"online": [], "cached": []}
    for kind in order:
        epoch = time_text_epoch(recipe, cached=kind == "cached")
        epochs[kind].append(epoch)
        print(f"text epoch {kind}: {epoch['seconds']:.2f} s", flush=True)
    online = statistics.median(e["seconds"] for e in epochs["online"])
    cached = statistics.median(e["seconds"] for e in epochs["cached"])
    n = write["examples"]
    return {
        "online_epoch_s": round(online, 3),
        "cached_epoch_s": round(cached, 3),
        "cached_epoch_speedup": round(online / cached, 2),
        "epoch_examples": n,
        "store_write_s": write["seconds"],
        "store_bytes": write["bytes"],
        "text": {
            "recipe": str(TEXT_RECIPE.relative_to(HERE.parent)),
            "overrides": overrides,
            "store": str(recipe.store.path) if recipe.store else None,
            "store_dtype": recipe.store.dtype if recipe.store else None,
            "store_reused": write["reused"],
            "store_write_examples_per_s": round(n / write["seconds"], 1),
            "batch_size": recipe.data.batch_size,
            "steps_per_epoch": epochs["cached"][0]["steps"],
            "order": order,
            "epochs": {
                kind: [
                    {k: v if k == "train_loss" else round(v, 4) for k, v in e.items()} for e in runs
                ]
                for kind, runs in epochs.items()
            },
            "online_examples_per_s": round(n / online, 1),
            "cached_examples_per_s": round(n / cached, 1),
        },
    }


# ----------------------------------------------------------------------------- 2. step ratio


Step = Callable[[], tuple[float, float]]


def _kd_trainer(recipe: Recipe) -> tuple[Trainer, Any]:
    """The recipe's Distiller and store-backed training loader, and a Trainer with the
    LambdaLR scheduler ``fit`` would install."""
    seed_everything(recipe.seed, recipe.train.deterministic)
    distiller = build_distiller(recipe)
    loader, _ = build_loaders(recipe, CPU, distiller.teacher)
    distiller.to(CPU).check(to_device(preview_batch(loader.dataset), CPU))
    spec = recipe.train.model_copy(update={"progress": False, "device": "cpu"})
    trainer = Trainer(distiller, spec)
    steps_per_epoch = len(loader)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer,
        lambda s: lr_factor(s, spec.schedule, steps_per_epoch, spec.epochs),
    )
    trainer.distiller.train()
    return trainer, loader


def build_step_variants(dense: Recipe, topk: Recipe) -> dict[str, Step]:
    """The three step functions; each loads its batch and trains its own copy of the student.

    Each returns (seconds loading the batch, seconds of the step)."""
    trainer_b, loader_b = _kd_trainer(dense)
    trainer_c, loader_c = _kd_trainer(topk)
    student = copy.deepcopy(trainer_b.distiller.student.model).train()  # same initial weights
    data = dense.data
    plain = DistillDataset(
        load_source(data.source, data.train_split, **data.params),
        augmentation=build_augmentation(data.augment),
        seed=dense.seed,
        views=("student",),
        slots=data.augment_slots,
    )
    if data.limit_train:
        plain = Head(plain, data.limit_train)
    loader_a = example_loader(plain, data.batch_size, True, dense.seed, data.num_workers)
    opt = dense.train.optimizer
    sgd = torch.optim.SGD(
        student.parameters(),
        lr=opt.lr,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
        weight_decay=opt.weight_decay,
    )
    norm = dense.student.pipeline[0]
    mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(norm["std"]).view(1, -1, 1, 1)
    batches = {
        "plain_student_step": EpochBatches(loader_a),
        "cached_kd_step": EpochBatches(loader_b),
        "cached_kd_topk_step": EpochBatches(loader_c),
    }

    def plain_student_step() -> tuple[float, float]:
        t0 = time.perf_counter()
        batch = batches["plain_student_step"].next()
        t1 = time.perf_counter()
        x, y = batch["views"]["student"], batch["target"]
        loss = F.cross_entropy(student((x - mean) / std), y)
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()
        return t1 - t0, time.perf_counter() - t1

    def trainer_step(name: str, trainer: Trainer) -> Step:
        def step() -> tuple[float, float]:
            t0 = time.perf_counter()
            batch = batches[name].next()
            t1 = time.perf_counter()
            trainer.train_step(batch)
            return t1 - t0, time.perf_counter() - t1

        return step

    return {
        "plain_student_step": plain_student_step,
        "cached_kd_step": trainer_step("cached_kd_step", trainer_b),
        "cached_kd_topk_step": trainer_step("cached_kd_topk_step", trainer_c),
    }


def run_interleaved(
    steps: dict[str, Step], rounds: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """``warmup`` untimed then ``rounds`` timed rounds, one step of each variant per round in an
    order rotated by one each round; per variant the load, step and total seconds per round."""
    names = list(steps)
    times = {name: {"load": [], "step": [], "total": []} for name in names}
    for r in range(warmup + rounds):
        if r == warmup:
            gc.collect()
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            load, step = steps[name]()
            if r >= warmup:
                times[name]["load"].append(load)
                times[name]["step"].append(step)
                times[name]["total"].append(load + step)
    return times


def step_part(args: argparse.Namespace, dense: Recipe, topk: Recipe) -> dict[str, Any]:
    rounds = args.steps if args.steps is not None else (20 if args.quick else 200)
    variants = build_step_variants(dense, topk)
    times = run_interleaved(variants, rounds=rounds, warmup=5)
    med = statistics.median
    stats: dict[str, Any] = {}
    for name, t in times.items():
        stats[name] = summarize(t["total"])
        stats[name]["load_median_ms"] = round(1000 * med(t["load"]), 4)
        stats[name]["step_median_ms"] = round(1000 * med(t["step"]), 4)
    a = times["plain_student_step"]["total"]
    ratios = {}
    paired = {}
    for name in ("cached_kd_step", "cached_kd_topk_step"):
        b = times[name]["total"]
        ratios[name] = med(b) / med(a)
        paired[name] = med([bi / ai for ai, bi in zip(a, b, strict=True)])
    spread = max(s["p75_ms"] / s["p25_ms"] for s in stats.values())
    return {
        "cached_kd_vs_plain_step_ratio": round(ratios["cached_kd_step"], 4),
        "step": {
            "variants": stats,
            "ratios_of_medians": {k: round(v, 4) for k, v in ratios.items()},
            "paired_ratios": {k: round(v, 4) for k, v in paired.items()},
            "rounds": rounds,
            "warmup_rounds": 5,
            "batch_size": dense.data.batch_size,
            "augment_slots": dense.data.augment_slots,
            "order": "interleaved, rotated each round",
            "max_p75_over_p25": round(spread, 3),
        },
    }


# ----------------------------------------------------------------------------- 3. bytes


def bytes_part(out: Path) -> dict[str, Any]:
    def recipe(fmt: str) -> Recipe:
        keys = {"logits": {"format": "topk", "k": BYTES_TOPK}} if fmt == "topk" else {}
        model = {"model": "mlp", "params": {"num_classes": BYTES_CLASSES}}
        return validate_recipe(
            {
                "name": f"store_bytes_{fmt}",
                # published numbers used the first N (limit_mode's old behaviour)
                "data": {
                    "source": "fashion_mnist",
                    "limit_train": BYTES_EXAMPLES,
                    "limit_mode": "first",
                },
                "teacher": model,
                "student": model,
                "losses": [{"name": "kd"}],
                "train": {"progress": False, "device": "cpu"},
                "store": {
                    "path": f"{out}/stores/bytes_{BYTES_CLASSES}_{fmt}",
                    "dtype": "float16",
                    "keys": keys,
                },
            }
        )

    dense, topk = ensure_store(recipe("dense")), ensure_store(recipe("topk"))
    per_dense = dense["bytes"] / dense["examples"]
    per_topk = topk["bytes"] / topk["examples"]
    return {
        "bytes_per_example_dense": round(per_dense, 2),
        "bytes_per_example_topk": round(per_topk, 2),
        "bytes_dense_over_topk": round(per_dense / per_topk, 2),
        "bytes": {
            "classes": BYTES_CLASSES,
            "k": BYTES_TOPK,
            "examples": dense["examples"],
            "slots": dense["slots"],
            "dtype": "float16",
            "dense_store_bytes": dense["bytes"],
            "topk_store_bytes": topk["bytes"],
            "teacher": "mlp (784-128-1000), random initialisation (bytes do not depend on it)",
            "data": f"Fashion-MNIST train, first {BYTES_EXAMPLES} images, no augmentation",
        },
    }


# ----------------------------------------------------------------------------- 4. accuracy


def kd_recipes(args: argparse.Namespace, out: Path, seed: int) -> dict[str, Recipe]:
    """kd_store.yaml with the benchmark teacher: a dense and a top-k store for ``seed``."""
    common = [f"output.dir={out}", "train.progress=false"]
    if args.quick:
        common.append("train.epochs=3")
    teacher_run = Run(run_or_reuse(load_recipe(TEACHER_RECIPE, common)))
    extra = [
        f"output.dir={out}",
        "train.progress=false",
        "eval.every_epochs=0",  # only the last epoch is reported
        f"teacher.weights={teacher_run.student_file}",
        f"seed={seed}",
    ]
    if args.quick:
        # published numbers used the first N (limit_mode's old behaviour)
        extra += ["train.epochs=2", f"data.limit_train={QUICK_IMAGES}", "data.limit_mode=first"]
    recipes = {}
    for fmt in ("dense", "topk"):
        store = f"{out}/stores/fashion_mnist_kd_{fmt}_seed{seed}"
        keys = f", keys: {{logits: {{format: topk, k: {ACC_TOPK}}}}}" if fmt == "topk" else ""
        recipes[fmt] = load_recipe(
            KD_RECIPE,
            [
                *extra,
                f"name=fashion_mnist_kd_store_{fmt}_seed{seed}",
                f"store={{path: {store}, dtype: float16{keys}}}",
            ],
        )
    return recipes


def _aug_bytes(recipe: Recipe) -> int:
    """Bytes per example of a store's recorded augmentation parameters (float64 per slot)."""
    assert recipe.store is not None
    manifest = KnowledgeStore(recipe.store.path, verify=False).manifest
    return manifest.slots * manifest.aug_params * 8


def acc_part(args: argparse.Namespace, out: Path, seeds: list[int]) -> dict[str, Any]:
    acc: dict[str, list[float]] = {"dense": [], "topk": []}
    writes: dict[str, list[dict[str, Any]]] = {"dense": [], "topk": []}
    recipe = None
    for seed in seeds:
        for fmt, recipe in kd_recipes(args, out, seed).items():
            writes[fmt].append(ensure_store(recipe))
            run_dir = run_or_reuse(recipe)
            acc[fmt].append(float(Run(run_dir).final_metrics()["accuracy"]))
            print(f"seed {seed} {fmt}: test accuracy {acc[fmt][-1]:.4f}", flush=True)
    assert recipe is not None

    (full, full_std), (top, top_std) = mean_std(acc["dense"]), mean_std(acc["topk"])
    return {
        "acc_full_logits": round(full, 4),
        "acc_topk_logits": round(top, 4),
        "acc_full_logits_std": round(full_std, 4),
        "acc_topk_logits_std": round(top_std, 4),
        "acc_topk_minus_full_pt": round(100 * (top - full), 3),
        "accuracy": {
            "recipe": str(KD_RECIPE.relative_to(HERE.parent)),
            "per_seed": acc,
            "seeds": seeds,
            "epochs": recipe.train.epochs,
            "augment_slots": recipe.data.augment_slots,
            "topk_k": ACC_TOPK,
            "classes": 10,
            "dtype": "float16",
            "limit_train": recipe.data.limit_train,
            "epoch_selection": "last",
            "split": recipe.data.eval_split,
            "teacher": str(recipe.teacher.weights) if recipe.teacher else None,
            "train_examples": writes["dense"][0]["examples"],
            "aug_bytes_per_example": _aug_bytes(recipe),
            "store_bytes_per_seed": {f: [w["bytes"] for w in ws] for f, ws in writes.items()},
            "store_write_s_per_seed": {f: [w["seconds"] for w in ws] for f, ws in writes.items()},
        },
    }


# ----------------------------------------------------------------------------- results


def render(result: dict[str, Any]) -> tuple[str, list[str]]:
    """The markdown tables and the notes (every missed target is a note)."""
    notes: list[str] = []
    rows: list[tuple[str, ...]] = []
    met = result["targets_met"]

    def mark(key: str) -> str:
        if key not in met:
            return ""
        return "met" if met[key] else "**MISSED**"

    if "online_epoch_s" in result:
        t = result["text"]
        n = result["epoch_examples"]
        rows += [
            (
                f"text epoch, MiniLM online ({n:,} sentences)",
                f"{result['online_epoch_s']:.1f} s",
                "",
            ),
            ("text epoch, embeddings from the store", f"{result['cached_epoch_s']:.1f} s", ""),
            (
                "speedup of the epoch",
                f"{result['cached_epoch_speedup']:.1f}x",
                f"≥ 20x: {mark('cached_epoch_speedup')}",
            ),
            (
                f"writing the store (once; {t['store_dtype']})",
                f"{result['store_write_s']:.1f} s, {result['store_bytes'] / 1e6:.1f} MB",
                "",
            ),
        ]
    if "cached_kd_vs_plain_step_ratio" in result:
        s = result["step"]
        rows.append(
            (
                "KD step from the store / plain student step",
                f"{result['cached_kd_vs_plain_step_ratio']:.3f} (paired "
                f"{s['paired_ratios']['cached_kd_step']:.3f})",
                f"≤ 1.05: {mark('cached_kd_vs_plain_step_ratio')}",
            )
        )
    if "bytes_per_example_dense" in result:
        b = result["bytes"]
        rows += [
            (
                f"bytes/example, {b['classes']} logits dense float16",
                f"{result['bytes_per_example_dense']:,.1f}",
                "",
            ),
            (
                f"bytes/example, top-{b['k']} of {b['classes']}",
                f"{result['bytes_per_example_topk']:,.1f} "
                f"({result['bytes_dense_over_topk']:.1f}x smaller)",
                "",
            ),
        ]
    if "acc_full_logits" in result:
        a = result["accuracy"]
        rows += [
            (
                f"Fashion-MNIST KD from dense logits ({len(a['seeds'])} seeds)",
                format_mean_std(result["acc_full_logits"], result["acc_full_logits_std"]),
                "",
            ),
            (
                f"Fashion-MNIST KD from top-{a['topk_k']} logits",
                format_mean_std(result["acc_topk_logits"], result["acc_topk_logits_std"])
                + f" ({result['acc_topk_minus_full_pt']:+.2f} pt)",
                f"within 0.2 pt: {mark('acc_topk_within_pt')}",
            ),
        ]
    table = markdown_table(["measure", "value", "target"], rows)
    if "step" in result:
        stats = result["step"]["variants"]
        table += "\n\n" + markdown_table(
            ["step variant", "median ms", "p25", "p75", "load ms", "step ms", "n"],
            [
                (
                    name,
                    f"{s['median_ms']:.3f}",
                    f"{s['p25_ms']:.3f}",
                    f"{s['p75_ms']:.3f}",
                    f"{s['load_median_ms']:.3f}",
                    f"{s['step_median_ms']:.3f}",
                    s["n"],
                )
                for name, s in stats.items()
            ],
        )
    labels = {
        "cached_epoch_speedup": "text epoch speedup from the store",
        "cached_kd_vs_plain_step_ratio": "KD step from the store vs plain step",
        "acc_topk_within_pt": "top-k accuracy within 0.2 pt of dense",
    }
    for key, ok in met.items():
        if not ok:
            notes.append(f"MISSED target: {labels[key]} (see the table)")
    if "acc_full_logits" in result:
        a = result["accuracy"]
        diffs = [
            f"{100 * (t - d):+.2f}"
            for d, t in zip(a["per_seed"]["dense"], a["per_seed"]["topk"], strict=True)
        ]
        notes.append(
            f"top-{a['topk_k']} minus dense, per seed {a['seeds']}: {', '.join(diffs)} pt. "
            f"Top-k keeps {a['topk_k']} of {a['classes']} logits exactly and gives the other "
            "classes equal shares of the rest of the probability mass; KD at T = 4 softens the "
            "target so that much of it lies in those classes, whose order top-k loses"
        )
        n = a["train_examples"]
        notes.append(
            f"Fashion-MNIST stores ({a['augment_slots']} slots): "
            f"{statistics.mean(a['store_bytes_per_seed']['dense']) / n:.0f} bytes/example dense, "
            f"{statistics.mean(a['store_bytes_per_seed']['topk']) / n:.0f} top-{a['topk_k']}; "
            f"{a['aug_bytes_per_example']} of them are the recorded augmentation parameters "
            "(float64), more than the 10 float16 logits of each slot"
        )
    if "step" in result:
        v = result["step"]["variants"]
        notes.append(
            "where a step's time goes (medians): loading a batch "
            f"{v['plain_student_step']['load_median_ms']:.1f} ms plain (augmentation parameters "
            "drawn per example), "
            f"{v['cached_kd_step']['load_median_ms']:.1f} ms from the dense store (read), "
            f"{v['cached_kd_topk_step']['load_median_ms']:.1f} ms from the top-k store (rows "
            "decoded one example at a time); the training step itself "
            f"{v['plain_student_step']['step_median_ms']:.1f} ms plain vs "
            f"{v['cached_kd_step']['step_median_ms']:.1f} ms KD through the Trainer"
        )
    if "step" in result and result["step"]["max_p75_over_p25"] > NOISY_SPREAD:
        notes.append(
            f"noisy machine: step times vary up to p75/p25 = "
            f"{result['step']['max_p75_over_p25']:.2f}x; the paired (per-round) ratios are "
            "steadier than the ratio of medians"
        )
    return table, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minutes instead of an hour")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP / tokenizer threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed rounds of the step part")
    parser.add_argument("--out", default=None, help="stores and runs (runs/bench[-quick])")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["text", "step", "bytes", "acc"],
        default=["text", "step", "bytes", "acc"],
        help="run only some parts (then nothing is written to benchmarks/results)",
    )
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # RAYON: the tokenizers' pool, created on first use
    torch.set_num_threads(args.threads)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    out = Path(args.out or ("runs/bench-quick" if args.quick else "runs/bench"))
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

    result: dict[str, Any] = {}
    started = time.perf_counter()
    # the accuracy part writes the Fashion-MNIST stores the step part reads: it runs first
    if "acc" in args.parts:
        result.update(acc_part(args, out, seeds))
    if "step" in args.parts:
        recipes = kd_recipes(args, out, seeds[0])
        for recipe in recipes.values():
            ensure_store(recipe)
        result.update(step_part(args, recipes["dense"], recipes["topk"]))
    if "bytes" in args.parts:
        result.update(bytes_part(out))
    if "text" in args.parts:
        result.update(text_part(args, out))

    met: dict[str, bool] = {}
    if "cached_epoch_speedup" in result:
        met["cached_epoch_speedup"] = result["cached_epoch_speedup"] >= 20.0
    if "cached_kd_vs_plain_step_ratio" in result:
        met["cached_kd_vs_plain_step_ratio"] = result["cached_kd_vs_plain_step_ratio"] <= 1.05
    if "acc_full_logits" in result:
        met["acc_topk_within_pt"] = abs(result["acc_topk_minus_full_pt"]) <= 0.2
    result["targets"] = TARGETS
    result["targets_met"] = met
    result.update(
        {
            "seeds": seeds,
            "torch_threads": torch.get_num_threads(),
            "thread_env": {v: os.environ[v] for v in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS")},
            "device": "cpu",
            "quick": args.quick,
            "wall_s": round(time.perf_counter() - started, 1),
            "load_avg_1m_before": load_before,
            "command": command_line(),
            "machine": machine(),
        }
    )
    table, notes = render(result)
    result["notes"] = notes
    name = "store" + (".quick" if args.quick else "")
    notes_md = "\n".join(f"- {n}" for n in notes)
    if set(args.parts) == {"text", "step", "bytes", "acc"}:
        markdown = write_results(name, result, table, notes_md)
    else:
        print(json.dumps(result, indent=2))
        markdown = results_markdown(name, result, table, notes_md)
    print(markdown)


if __name__ == "__main__":
    main()
