"""crossdistill's per-step overhead over hand-written PyTorch, measured side by side.

    python benchmarks/overhead.py            # 200 timed steps per variant (±5% needs many samples)
    python benchmarks/overhead.py --quick    # 20 timed steps per variant

Four variants run on the CPU in float32 at batch 128 on Fashion-MNIST-shaped inputs
(``1×28×28``: the first ``128·k`` training images / 255, or random ones when the data set is not
installed), with torch's default thread count:

- ``plain_student_step`` (A): a hand-written training step of the student (``SmallCNN(width=8)``):
  normalize → forward → ``F.cross_entropy`` → ``zero_grad`` → ``backward`` → SGD step (momentum
  0.9, Nesterov, weight decay 5e-4, as in recipes/fashion_mnist/kd.yaml).
- ``crossdistill_ce_step`` (B): the same student, optimizer and loss through crossdistill:
  ``Student`` with a ``normalize`` pipeline, ``Distiller`` with the ``ce`` loss, and
  ``Trainer.train_step`` with the LambdaLR scheduler that ``Trainer.fit`` would install (so the
  timed step includes ``scheduler.step()``, as in real training; A has no scheduler).
- ``teacher_forward`` (C): the teacher (``ResNet(widths=(16, 32, 64))``, eval, ``no_grad``)
  forward on the normalized batch, hand-written.
- ``online_kd_step`` (D): the kd.yaml setup through crossdistill: ``Trainer.train_step`` of a
  Distiller with an online teacher and the losses ``0.5·ce + 0.5·kd(T=4)``.

B/A is what crossdistill adds to a plain step (target ≤ 1.05). D/(C + A) is what an online
distillation step costs beyond the two forward passes it cannot avoid plus a plain student step
(target ≤ 1.05); the KD loss itself (a few ops on 128×10 logits) is counted as overhead.

Honest measurement:

- A, B and D each train their own deep copy of one student (and C, D their own copy of one
  teacher), so they start from identical weights and do the same arithmetic on the same batches.
  The teacher's weights are its random initialisation: timing does not depend on their values.
- The variants are INTERLEAVED: each round runs one step of every variant on the same batch, and
  the order rotates from round to round (ABCD, BCDA, ...). On a shared machine the load changes
  over seconds; running all of A and then all of B would charge a burst of load to whichever
  variant happened to run during it. Interleaved, every variant samples the same conditions, and
  rotating removes any systematic benefit of running after a particular neighbour (warm caches).
- Every variant gets the same interleaved warmup rounds (allocator, oneDNN kernel selection,
  optimizer state), which are not timed; then ``gc.collect()`` once, and each step is timed
  alone with ``time.perf_counter()``. CPU ops are synchronous, so a step's time is its work.
- Reported per variant: median, quartiles and min of the wall time in ms over ``n`` steps, and
  the median CPU time of the process (all threads; it includes OpenMP spin-waiting). The two
  target ratios are ratios of wall-time medians. Next to them the JSON gives ``paired_ratios``,
  the median over rounds of the per-round ratio (B_r/A_r, D_r/(C_r + A_r)): a round's steps ran
  within a second of each other, so it cancels load that drifts, and it compares D with the sum
  of two steps of the same round. Under heavy, right-skewed load noise the ratio of medians is
  biased upwards for D/(C + A) (the median of one long step exceeds the sum of the medians of two
  short ones), so on a busy machine read the paired ratios; the notes warn when the spread
  p75/p25 of some variant exceeds 1.25.
- B and D follow the recipe's warmup + cosine learning rate while A keeps lr 0.1: that changes
  the values of the weights, not the operations a step runs.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import command_line, machine, markdown_table, summarize, write_results
from crossdistill.config import TrainSpec
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.wrappers import Student, Teacher
from crossdistill.data.steps import build_pipeline
from crossdistill.losses import build_loss
from crossdistill.models.zoo.cnn import SmallCNN
from crossdistill.models.zoo.resnet import ResNet
from crossdistill.train.trainer import Trainer, lr_factor

BATCH_SIZE = 128
TRAIN_IMAGES = 60_000  # Fashion-MNIST train: the scheduler's steps per epoch, as fit would set
MEAN, STD = 0.2860, 0.3530  # the recipes' normalize step
NORMALIZE = [{"name": "normalize", "params": {"mean": [MEAN], "std": [STD]}}]
TRAIN = {  # recipes/fashion_mnist/kd.yaml's train: section, quiet and on the CPU
    "epochs": 15,
    "optimizer": {
        "name": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
    },
    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    "device": "cpu",
    "amp": "off",
    "progress": False,
}
TARGETS = {"distiller_vs_plain_ratio": 1.05, "online_kd_vs_sum_ratio": 1.05}
NOISY_SPREAD = 1.25  # p75/p25 of a variant's step times above which the notes warn
Batch = tuple[torch.Tensor, torch.Tensor]


def load_batches(k: int, seed: int) -> tuple[list[Batch], str]:
    """``k`` batches of the first ``128·k`` Fashion-MNIST training images / 255 (or random)."""
    n = k * BATCH_SIZE
    try:
        from crossdistill.data import load_source

        split = load_source("fashion_mnist", "train")
        x = split.inputs[:n].to(torch.float32) / 255.0
        y = split.targets[:n].to(torch.int64)
        data = f"Fashion-MNIST train, first {n} images / 255"
    except Exception as exc:  # any failure (not installed, unreadable): random inputs
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        data = f"random uniform inputs (Fashion-MNIST not available: {exc})"
    batches = [
        (xb.contiguous(), yb.contiguous())
        for xb, yb in zip(x.split(BATCH_SIZE), y.split(BATCH_SIZE), strict=True)
    ]
    return batches, data


def build_trainer(distiller: Distiller) -> Trainer:
    """A Trainer with the recipe's optimizer and the LambdaLR scheduler ``fit`` would install."""
    spec = TrainSpec.model_validate(TRAIN)
    trainer = Trainer(distiller, spec)
    steps_per_epoch = math.ceil(TRAIN_IMAGES / BATCH_SIZE)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
        trainer.optimizer,
        lambda s: lr_factor(s, spec.schedule, steps_per_epoch, spec.epochs),
    )
    trainer.distiller.train()  # as Trainer._train_epoch does (the teacher stays in eval mode)
    return trainer


def build_variants(seed: int) -> dict[str, Callable[[Batch], object]]:
    """The four step functions, keyed by variant name; each owns its models and optimizer."""
    torch.manual_seed(seed)
    student = SmallCNN(in_channels=1, num_classes=10, width=8)
    teacher = ResNet(in_channels=1, num_classes=10, widths=(16, 32, 64), blocks=(1, 1, 1))
    opt = TRAIN["optimizer"]

    # A: hand-written plain PyTorch.
    model_a = copy.deepcopy(student).train()
    sgd_a = torch.optim.SGD(
        model_a.parameters(),
        lr=opt["lr"],
        momentum=opt["momentum"],
        nesterov=opt["nesterov"],
        weight_decay=opt["weight_decay"],
    )
    mean = torch.tensor([MEAN]).view(1, -1, 1, 1)
    std = torch.tensor([STD]).view(1, -1, 1, 1)

    def plain_student_step(batch: Batch) -> object:
        x, y = batch
        loss = F.cross_entropy(model_a((x - mean) / std), y)
        sgd_a.zero_grad(set_to_none=True)
        loss.backward()
        sgd_a.step()
        return loss

    # B: the same through crossdistill.
    trainer_b = build_trainer(
        Distiller(
            Student(copy.deepcopy(student), pipeline=build_pipeline(NORMALIZE)),
            [Term("ce", build_loss("ce"))],
        )
    )

    def crossdistill_ce_step(batch: Batch) -> object:
        x, y = batch
        return trainer_b.train_step({"views": {"teacher": x, "student": x}, "target": y})

    # C: the teacher's forward alone, hand-written.
    model_c = copy.deepcopy(teacher).eval().requires_grad_(False)

    def teacher_forward(batch: Batch) -> object:
        with torch.no_grad():
            return model_c((batch[0] - mean) / std)

    # D: online KD through crossdistill (the kd.yaml setup).
    trainer_d = build_trainer(
        Distiller(
            Student(copy.deepcopy(student), pipeline=build_pipeline(NORMALIZE)),
            [
                Term("ce", build_loss("ce"), 0.5),
                Term("kd", build_loss("kd", {"temperature": 4.0}), 0.5),
            ],
            teacher=Teacher(copy.deepcopy(teacher), pipeline=build_pipeline(NORMALIZE)),
        )
    )

    def online_kd_step(batch: Batch) -> object:
        x, y = batch
        return trainer_d.train_step({"views": {"teacher": x, "student": x}, "target": y})

    return {
        "plain_student_step": plain_student_step,
        "crossdistill_ce_step": crossdistill_ce_step,
        "teacher_forward": teacher_forward,
        "online_kd_step": online_kd_step,
    }


def run_interleaved(
    steps: dict[str, Callable[[Batch], object]], batches: list[Batch], rounds: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``warmup`` untimed then ``rounds`` timed rounds; one step of each variant per round, in
    an order rotated by one each round, all on that round's batch.

    Returns per variant the wall-clock seconds of each timed step (``perf_counter``) and the
    CPU seconds this process used during it (``process_time``, all threads), in round order.
    """
    names = list(steps)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        if r == warmup:
            gc.collect()
        batch = batches[r % len(batches)]
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            step = steps[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            step(batch)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if r >= warmup:
                wall[name].append(elapsed)
                cpu[name].append(elapsed_cpu)
    return wall, cpu


def ratios(t: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """The two overhead ratios as ratios of medians, and as medians of per-round ratios.

    A round's steps ran within a fraction of a second of each other, so the per-round ratio
    cancels load that drifts over seconds; it is reported next to the ratio of medians.
    """
    a, b = t["plain_student_step"], t["crossdistill_ce_step"]
    c, d = t["teacher_forward"], t["online_kd_step"]
    med = statistics.median
    of_medians = {
        "distiller_vs_plain_ratio": med(b) / med(a),
        "online_kd_vs_sum_ratio": med(d) / (med(c) + med(a)),
    }
    paired = {
        "distiller_vs_plain_ratio": med([bi / ai for ai, bi in zip(a, b, strict=True)]),
        "online_kd_vs_sum_ratio": med([di / (ci + ai) for ai, ci, di in zip(a, c, d, strict=True)]),
    }
    return of_medians, paired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 timed steps per variant")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per variant (default: 20 quick, 200 full; at least 20)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--batches", type=int, default=8, help="distinct batches, cycled")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = args.steps if args.steps is not None else (20 if args.quick else 200)
    if steps < 20:
        parser.error("--steps must be at least 20 (medians of fewer are too noisy)")

    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    batches, data = load_batches(args.batches, args.seed)
    variants = build_variants(args.seed)
    wall, cpu = run_interleaved(variants, batches, rounds=steps, warmup=args.warmup)
    stats = {name: summarize(t) for name, t in wall.items()}
    for name, t in cpu.items():
        stats[name]["cpu_median_ms"] = round(1000 * statistics.median(t), 4)
    ratio, paired = ratios(wall)
    cpu_ratio, _ = ratios(cpu)

    result = {
        **{k: round(v, 4) for k, v in ratio.items()},
        "targets": TARGETS,
        "targets_met": {k: ratio[k] <= TARGETS[k] for k in TARGETS},
        "variants": stats,
        "paired_ratios": {k: round(v, 4) for k, v in paired.items()},
        "cpu_time_ratios": {k: round(v, 4) for k, v in cpu_ratio.items()},
        "steps": steps,
        "warmup_rounds": args.warmup,
        "batch_size": BATCH_SIZE,
        "distinct_batches": len(batches),
        "data": data,
        "device": "cpu",
        "dtype": "float32",
        "order": "interleaved, rotated each round",
        "quick": args.quick,
        "command": command_line(),
        "machine": machine(),
    }
    table = markdown_table(
        ["variant", "median ms", "p25", "p75", "n", "CPU ms (median)"],
        [
            (
                name,
                f"{s['median_ms']:.3f}",
                f"{s['p25_ms']:.3f}",
                f"{s['p75_ms']:.3f}",
                s["n"],
                f"{s['cpu_median_ms']:.3f}",
            )
            for name, s in stats.items()
        ],
    )
    lines = []
    for key, label in (("distiller_vs_plain_ratio", "B/A"), ("online_kd_vs_sum_ratio", "D/(C+A)")):
        met = "met" if result["targets_met"][key] else "MISSED"
        lines.append(
            f"- {label} `{key}` = **{ratio[key]:.3f}** (target ≤ {TARGETS[key]}: {met}); "
            f"median of per-round ratios {paired[key]:.3f}, ratio of CPU-time medians "
            f"{cpu_ratio[key]:.3f}"
        )
    lines.append(
        f"- {steps} timed steps per variant after {args.warmup} warmup rounds, interleaved "
        f"(order rotated each round); batch {BATCH_SIZE}, CPU float32, "
        f"{torch.get_num_threads()} threads; data: {data}. CPU ms is the process's CPU time "
        "(all threads) during the step."
    )
    spread = max(s["p75_ms"] / s["p25_ms"] for s in stats.values())
    result["max_p75_over_p25"] = round(spread, 3)
    result["load_avg_1m_before"] = load_before
    if spread > NOISY_SPREAD:
        lines.append(
            f"- **Noisy machine**: step times vary up to p75/p25 = {spread:.2f}× (1-min load "
            f"average {load_before} before, {result['machine'].get('load_avg_1m')} after, on "
            f"{os.cpu_count()} cores), so a ratio of medians carries several % of noise; the "
            "per-round ratios, whose steps ran within a second of each other, are steadier."
        )
    notes = "\n".join(lines)
    markdown = write_results("overhead" + (".quick" if args.quick else ""), result, table, notes)
    print(markdown)


if __name__ == "__main__":
    main()
