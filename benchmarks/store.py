"""The knowledge store: what caching the teacher buys (time, bytes) and what top-k costs (accuracy).

    python benchmarks/store.py          # full: 156k sentences, 200 rounds, 3 seeds x 15 epochs
    python benchmarks/store.py --quick  # minutes: 3,000 sentences, 20 rounds, 1 seed x 2 epochs

Writes benchmarks/results/store[.quick].json and .md (merged, see below). Stores and runs go to
runs/bench[-quick]/ (git-ignored); a store or run already there for the same recipe is reused (a
store's write time comes from the record written next to it when it was written). Everything
runs on the CPU with ``--threads`` torch threads (default 1; also ``OMP_NUM_THREADS`` and
``RAYON_NUM_THREADS``, the tokenizers' pool), recorded in the results. One thread because the
machine is shared: with other processes busy, two OpenMP threads on two cores ran MiniLM at 63
sentences/s against 102 with one (and the ResNet teacher up to 10x slower), as threads wait for
each other.

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

3. **Bytes per example** (``bytes_per_example_dense``, ``bytes_per_example_topk``,
   ``bytes_per_example_topk_tail``): stores of 1,000-class logits from a randomly initialised
   MLP (``mlp``, ``num_classes: 1000``; the bytes do not depend on the weights) over the first
   10,000 Fashion-MNIST training images, no augmentation (one slot), dense float16 vs top-k with
   k = 10 (float16 values, int16 indices, the float32 mass of the rest) vs the same top-k plus
   ``TAIL_BITS``-bit codes of the other 990 logits (``tail_bits``, packed): the shard files' size
   on disk divided by the examples, so the safetensors headers are included.

4. **Accuracy, dense vs top-k logits** (``acc_full_logits``, ``acc_topk_logits``,
   ``acc_topk_tail_logits``, ``acc_<arm>_minus_full_pt``; target: within 0.2 pt). kd_store.yaml
   trained from one store per arm (``--arms``, default all): ``dense`` float16, ``topk`` (k = 3
   of the 10 classes, float16) and ``topk_tail`` (the same top-3 plus ``TAIL_BITS``-bit codes of
   the other 7 logits), one store per seed because the recorded augmentations depend on the
   seed; the teacher is the ResNet of recipes/fashion_mnist/teacher.yaml (runs/bench, reused,
   e.g. from benchmarks/fashion_mnist.py; with --quick runs/bench-quick's 3-epoch teacher and
   10,000 training images; ``--teacher-epochs N`` trains it for N epochs instead). Test accuracy
   after the last epoch; mean ± std over seeds 0 1 2 (one seed, 2 epochs with --quick).

Every invocation writes benchmarks/results/store[.quick].json and .md, merged: the parts it did
not run keep their recorded values, and ``parts`` says when and by which command each part was
measured. Only the accuracy part, only some arms::

    python benchmarks/store.py --parts acc --arms dense,topk,topk_tail
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    RESULTS,
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
# top-k plus the tail's order and shape: each other logit as a TAIL_BITS-bit code of its distance
# below the k-th largest over KeyCodec's default range (16 logits); chosen by KL to the dense
# target at T = 4 on the teacher's logits (docs/store.md)
TAIL_BITS = 4
# the accuracy part's arms: how each stores the teacher's logits (its recipe's store.keys.logits)
ARMS: dict[str, dict[str, Any]] = {
    "dense": {},
    "topk": {"format": "topk", "k": ACC_TOPK},
    "topk_tail": {"format": "topk", "k": ACC_TOPK, "tail_bits": TAIL_BITS},
}
# what each arm's result keys are called (acc_<name>_logits, ...): "full" is the dense arm
ARM_KEYS = {"dense": "full", "topk": "topk", "topk_tail": "topk_tail"}
PARTS = ["text", "step", "bytes", "acc"]
# the result keys each part writes: a run of some parts keeps the other parts' recorded values
PART_KEYS = {
    "text": (
        "online_epoch_s",
        "cached_epoch_s",
        "cached_epoch_speedup",
        "epoch_examples",
        "store_write_s",
        "store_bytes",
        "text",
    ),
    "step": ("cached_kd_vs_plain_step_ratio", "step"),
    "bytes": ("bytes_", "bytes"),
    "acc": ("acc_", "accuracy"),
}
TARGETS = {
    "cached_epoch_speedup>=": 20.0,
    "cached_kd_vs_plain_step_ratio<=": 1.05,
    "acc_topk_within_pt": 0.2,
    "acc_topk_tail_within_pt": 0.2,
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
        want[k].model_dump(exclude={"shape"}) == have[k].model_dump(exclude={"shape"}) for k in want
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


BYTES_KEYS: dict[str, dict[str, Any]] = {
    "dense": {},
    "topk": {"format": "topk", "k": BYTES_TOPK},
    "topk_tail": {"format": "topk", "k": BYTES_TOPK, "tail_bits": TAIL_BITS},
}


def bytes_part(out: Path) -> dict[str, Any]:
    def recipe(fmt: str) -> Recipe:
        keys = {"logits": BYTES_KEYS[fmt]} if BYTES_KEYS[fmt] else {}
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

    writes = {fmt: ensure_store(recipe(fmt)) for fmt in BYTES_KEYS}
    per = {fmt: w["bytes"] / w["examples"] for fmt, w in writes.items()}
    dense = writes["dense"]
    return {
        "bytes_per_example_dense": round(per["dense"], 2),
        "bytes_per_example_topk": round(per["topk"], 2),
        "bytes_dense_over_topk": round(per["dense"] / per["topk"], 2),
        "bytes_per_example_topk_tail": round(per["topk_tail"], 2),
        "bytes_dense_over_topk_tail": round(per["dense"] / per["topk_tail"], 2),
        "bytes": {
            "classes": BYTES_CLASSES,
            "k": BYTES_TOPK,
            "tail_bits": TAIL_BITS,
            "examples": dense["examples"],
            "slots": dense["slots"],
            "dtype": "float16",
            "dense_store_bytes": dense["bytes"],
            "topk_store_bytes": writes["topk"]["bytes"],
            "topk_tail_store_bytes": writes["topk_tail"]["bytes"],
            "stores": {fmt: {"logits": BYTES_KEYS[fmt] or "dense"} for fmt in BYTES_KEYS},
            "teacher": "mlp (784-128-1000), random initialisation (bytes do not depend on it)",
            "data": f"Fashion-MNIST train, first {BYTES_EXAMPLES} images, no augmentation",
        },
    }


# ----------------------------------------------------------------------------- 4. accuracy


def kd_recipes(
    args: argparse.Namespace, out: Path, seed: int, arms: list[str] | None = None
) -> dict[str, Recipe]:
    """kd_store.yaml with the benchmark teacher: one store per arm (:data:`ARMS`; default
    dense and top-k) for ``seed``."""
    common = [f"output.dir={out}", "train.progress=false"]
    teacher_epochs = getattr(args, "teacher_epochs", None) or (3 if args.quick else None)
    if teacher_epochs:
        common.append(f"train.epochs={teacher_epochs}")
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
    for fmt in arms or ["dense", "topk"]:
        store = f"{out}/stores/fashion_mnist_kd_{fmt}_seed{seed}"
        spec = ", ".join(f"{k}: {v}" for k, v in ARMS[fmt].items())
        keys = f", keys: {{logits: {{{spec}}}}}" if spec else ""
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


def acc_part(
    args: argparse.Namespace, out: Path, seeds: list[int], arms: list[str]
) -> dict[str, Any]:
    acc: dict[str, list[float]] = {arm: [] for arm in arms}
    writes: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    reused: dict[str, list[bool]] = {arm: [] for arm in arms}
    recipes: dict[str, Recipe] = {}
    for seed in seeds:
        recipes = kd_recipes(args, out, seed, arms)
        for arm, recipe in recipes.items():
            writes[arm].append(ensure_store(recipe))
            run = Run(recipe.run_dir)
            reused[arm].append(run.exists and run.finished)
            run_dir = run_or_reuse(recipe)
            acc[arm].append(float(Run(run_dir).final_metrics()["accuracy"]))
            print(f"seed {seed} {arm}: test accuracy {acc[arm][-1]:.4f}", flush=True)
    recipe = recipes["dense"]

    result: dict[str, Any] = {}
    full = mean_std(acc["dense"])[0]
    for arm in arms:
        name = ARM_KEYS[arm]
        mean, spread = mean_std(acc[arm])
        result[f"acc_{name}_logits"] = round(mean, 4)
        result[f"acc_{name}_logits_std"] = round(spread, 4)
        if arm != "dense":
            result[f"acc_{name}_minus_full_pt"] = round(100 * (mean - full), 3)
    n = writes["dense"][0]["examples"]
    return {
        **result,
        "accuracy": {
            "recipe": str(KD_RECIPE.relative_to(HERE.parent)),
            "arms": {arm: {"logits": ARMS[arm] or "dense"} for arm in arms},
            "per_seed": acc,
            "seeds": seeds,
            "epochs": recipe.train.epochs,
            "augment_slots": recipe.data.augment_slots,
            "topk_k": ACC_TOPK,
            "tail_bits": TAIL_BITS,
            "classes": 10,
            "dtype": "float16",
            "limit_train": recipe.data.limit_train,
            "epoch_selection": "last",
            "split": recipe.data.eval_split,
            "teacher": str(recipe.teacher.weights) if recipe.teacher else None,
            "teacher_epochs": args.teacher_epochs or (3 if args.quick else 15),
            "teacher_accuracy": _teacher_accuracy(recipe),
            "train_examples": n,
            "aug_bytes_per_example": _aug_bytes(recipe),
            "logit_bytes_per_example": {arm: _logit_bytes(r) for arm, r in recipes.items()},
            "store_bytes_per_seed": {f: [w["bytes"] for w in ws] for f, ws in writes.items()},
            "store_write_s_per_seed": {f: [w["seconds"] for w in ws] for f, ws in writes.items()},
            "store_reused_per_seed": {f: [w["reused"] for w in ws] for f, ws in writes.items()},
            # a run finished before this invocation (same recipe fingerprint) is read, not rerun
            "run_reused_per_seed": reused,
        },
    }


def _teacher_accuracy(recipe: Recipe) -> float | None:
    """The test accuracy of the run whose weights are the recipe's teacher (None: not a run)."""
    assert recipe.teacher is not None and recipe.teacher.weights is not None
    run = Run(Path(recipe.teacher.weights).parent)
    return float(run.final_metrics()["accuracy"]) if run.exists and run.finished else None


def _logit_bytes(recipe: Recipe) -> int:
    """Bytes per example of a store's logits (every slot), from its manifest's codec."""
    assert recipe.store is not None
    manifest = KnowledgeStore(recipe.store.path, verify=False).manifest
    return manifest.slots * manifest.keys["logits"].row_bytes()


# ----------------------------------------------------------------------------- results


def _arm_label(arm: str, a: dict[str, Any]) -> str:
    """How the accuracy table names an arm's logits."""
    if arm == "topk":
        return f"top-{a['topk_k']} logits"
    if arm == "topk_tail":
        return f"top-{a['topk_k']} logits + {a.get('tail_bits', TAIL_BITS)}-bit tail codes"
    return f"{arm} logits"


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
        if "bytes_per_example_topk_tail" in result:
            rows.append(
                (
                    f"bytes/example, top-{b['k']} + {b['tail_bits']}-bit tail codes",
                    f"{result['bytes_per_example_topk_tail']:,.1f} "
                    f"({result['bytes_dense_over_topk_tail']:.1f}x smaller)",
                    "",
                )
            )
    if "acc_full_logits" in result:
        a = result["accuracy"]
        rows.append(
            (
                f"Fashion-MNIST KD from dense logits ({len(a['seeds'])} "
                f"seed{'s' if len(a['seeds']) > 1 else ''})",
                format_mean_std(result["acc_full_logits"], result["acc_full_logits_std"]),
                "",
            )
        )
        for arm in a["per_seed"]:
            name = ARM_KEYS[arm]
            if arm == "dense":
                continue
            rows.append(
                (
                    f"Fashion-MNIST KD from {_arm_label(arm, a)}",
                    format_mean_std(result[f"acc_{name}_logits"], result[f"acc_{name}_logits_std"])
                    + f" ({result[f'acc_{name}_minus_full_pt']:+.2f} pt)",
                    f"within 0.2 pt: {mark(f'acc_{name}_within_pt')}",
                )
            )
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
        "acc_topk_tail_within_pt": "top-k + tail codes accuracy within 0.2 pt of dense",
    }
    for key, ok in met.items():
        if not ok:
            notes.append(f"MISSED target: {labels[key]} (see the table)")
    if "acc_full_logits" in result:
        a = result["accuracy"]
        dense = a["per_seed"]["dense"]
        for arm, accs in a["per_seed"].items():
            if arm == "dense":
                continue
            diffs = ", ".join(f"{100 * (t - d):+.2f}" for d, t in zip(dense, accs, strict=True))
            notes.append(f"{_arm_label(arm, a)} minus dense, per seed {a['seeds']}: {diffs} pt")
        if "topk" in a["per_seed"]:
            notes.append(
                f"top-{a['topk_k']} keeps {a['topk_k']} of {a['classes']} logits exactly and gives "
                "the other classes equal shares of the rest of the probability mass; KD at T = 4 "
                "softens the target so that much of it lies in those classes, whose order top-k "
                "loses. The tail codes keep that order and shape (to the codes' resolution)"
            )
        if a.get("teacher_epochs", 15) != 15:
            notes.append(
                f"the teacher is teacher.yaml trained {a['teacher_epochs']} epochs (cosine "
                f"schedule over them; test accuracy {a.get('teacher_accuracy')}), not 15: the "
                "accuracies are not comparable with runs taught by the 15-epoch teacher"
            )
        n = a["train_examples"]
        per_arm = ", ".join(
            f"{statistics.mean(b) / n:.0f} {arm}" for arm, b in a["store_bytes_per_seed"].items()
        )
        logits = a.get("logit_bytes_per_example")
        notes.append(
            f"Fashion-MNIST stores ({a['augment_slots']} slots), bytes/example: {per_arm}; "
            f"{a['aug_bytes_per_example']} of them are the recorded augmentation parameters "
            "(float64), more than the 10 float16 logits of each slot"
            + (
                "; the logits alone: " + ", ".join(f"{v} {arm}" for arm, v in logits.items())
                if logits
                else ""
            )
        )
        reused = a.get("run_reused_per_seed", {})
        if any(any(r) for r in reused.values()):
            notes.append(
                "runs finished before this invocation were read, not retrained (training is "
                "deterministic): " + ", ".join(f"{arm} {r}" for arm, r in reused.items())
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


def _part_of(key: str) -> str | None:
    """Which part a top-level result key belongs to (None: shared provenance)."""
    for part, keys in PART_KEYS.items():
        if any(key == k or (k.endswith("_") and key.startswith(k)) for k in keys):
            return part
    return None


def _legacy_provenance(old: dict[str, Any], path: Path) -> dict[str, Any]:
    """When and how parts recorded before per-part provenance existed were measured: the
    file's command, and the date of the commit that last changed it (git, read only)."""
    try:
        when = subprocess.run(
            ["git", "log", "-1", "--format=%cI", "--", str(path)],
            capture_output=True,
            text=True,
            check=True,
            cwd=HERE,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        when = ""
    return {
        "measured": when or None,
        "measured_note": "not recorded; the date of the commit that last changed the results",
        "command": old.get("command"),
        "seeds": old.get("seeds"),
        "wall_s": old.get("wall_s"),
        "load_avg_1m_before": old.get("load_avg_1m_before"),
        "machine": old.get("machine"),
    }


def merge_results(name: str, fresh: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """``fresh`` (the parts just run) over the recorded results of the other parts, each with
    its own provenance under ``parts``: rerunning one part never discards another's numbers.
    The values a rerun part replaces are kept under ``previous`` (the last ones only)."""
    path = RESULTS / f"{name}.json"
    old: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    recorded = old.get("parts") or {}
    legacy = None
    merged: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
    previous: dict[str, Any] = dict(old.get("previous") or {})
    replaced: set[str] = set()
    for key, value in old.items():
        part = _part_of(key)
        if part is None:
            continue
        if part in parts:
            if part not in replaced:  # the first of its keys: these values replace older ones
                replaced.add(part)
                if part not in recorded:
                    legacy = legacy or _legacy_provenance(old, path)
                previous[part] = {
                    "values": {},
                    "measured": recorded.get(part) or legacy,
                    "replaced_by": fresh["parts"][part],
                }
            previous[part]["values"][key] = value
            continue
        merged[key] = value
        if part not in provenance:
            if part not in recorded:
                legacy = legacy or _legacy_provenance(old, path)
            provenance[part] = recorded.get(part) or legacy
    merged.update({k: v for k, v in fresh.items() if _part_of(k) is not None})
    for part in parts:
        provenance[part] = fresh["parts"][part]
    merged["parts"] = {part: provenance[part] for part in PARTS if part in provenance}
    if previous:
        merged["previous"] = previous
    return merged


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
        choices=PARTS,
        default=PARTS,
        help="run only some parts: the other parts' recorded results are kept, with when and "
        "how they were measured",
    )
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        help=f"the accuracy part's arms, comma-separated, dense among them ({', '.join(ARMS)})",
    )
    parser.add_argument(
        "--teacher-epochs",
        type=int,
        default=None,
        help="train the accuracy part's teacher for this many epochs (cosine schedule over "
        "them) instead of teacher.yaml's 15 (3 with --quick); recorded in the results",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the results, leave benchmarks/results"
    )
    args = parser.parse_args()
    arms = [arm.strip() for arm in args.arms.split(",") if arm.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or "dense" not in arms:
        parser.error(f"--arms: {unknown or 'dense is missing'}; arms are {', '.join(ARMS)}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # RAYON: the tokenizers' pool, created on first use
    torch.set_num_threads(args.threads)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    out = Path(args.out or ("runs/bench-quick" if args.quick else "runs/bench"))

    result: dict[str, Any] = {"parts": {}}

    def measured(part: str, run: Callable[[], dict[str, Any]]) -> None:
        load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        began = time.perf_counter()
        result.update(run())
        result["parts"][part] = {
            "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(),
            "seeds": seeds if part in ("acc", "step") else None,
            "arms": arms if part == "acc" else None,
            "wall_s": round(time.perf_counter() - began, 1),
            "load_avg_1m_before": load,
            "torch_threads": torch.get_num_threads(),
        }

    started = time.perf_counter()
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    # the accuracy part writes the Fashion-MNIST stores the step part reads: it runs first
    if "acc" in args.parts:
        measured("acc", lambda: acc_part(args, out, seeds, arms))
    if "step" in args.parts:
        recipes = kd_recipes(args, out, seeds[0])
        for recipe in recipes.values():
            ensure_store(recipe)
        measured("step", lambda: step_part(args, recipes["dense"], recipes["topk"]))
    if "bytes" in args.parts:
        measured("bytes", lambda: bytes_part(out))
    if "text" in args.parts:
        measured("text", lambda: text_part(args, out))

    name = "store" + (".quick" if args.quick else "")
    if not args.no_write:
        result = merge_results(name, result, args.parts)
    met: dict[str, bool] = {}
    if "cached_epoch_speedup" in result:
        met["cached_epoch_speedup"] = result["cached_epoch_speedup"] >= 20.0
    if "cached_kd_vs_plain_step_ratio" in result:
        met["cached_kd_vs_plain_step_ratio"] = result["cached_kd_vs_plain_step_ratio"] <= 1.05
    for arm in ("topk", "topk_tail"):
        if f"acc_{arm}_minus_full_pt" in result:
            met[f"acc_{arm}_within_pt"] = abs(result[f"acc_{arm}_minus_full_pt"]) <= 0.2
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
    before = result.get("previous", {}).get("acc")
    if "acc" in args.parts and before and "acc_full_logits" in before["values"]:
        v, a = before["values"], before["values"].get("accuracy", {})
        arms = ", ".join(
            f"{arm} {v[f'acc_{ARM_KEYS[arm]}_logits']:.4f}"
            for arm in a.get("per_seed", {})
            if f"acc_{ARM_KEYS[arm]}_logits" in v
        )
        notes.append(
            f"the accuracy part recorded before this run (under `previous.acc`; seeds "
            f"{a.get('seeds')}, teacher of {a.get('teacher_epochs', 15)} epochs): {arms}; "
            f"measured {before['measured'].get('measured')} by "
            f"`{before['measured'].get('command')}`"
        )
    for part, where in result["parts"].items():
        if part not in args.parts:
            notes.append(
                f"the {part} part was not rerun: measured {where.get('measured') or 'earlier'} "
                f"by `{where.get('command')}`"
            )
    result["notes"] = notes
    notes_md = "\n".join(f"- {n}" for n in notes)
    if args.no_write:
        print(json.dumps(result, indent=2))
        markdown = results_markdown(name, result, table, notes_md)
    else:
        markdown = write_results(name, result, table, notes_md)
    print(markdown)


if __name__ == "__main__":
    main()
