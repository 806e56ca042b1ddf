"""Evaluation suites: a student (and its teacher) on a data split → metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from crossdistill.evaluate.metrics import MetricAccumulator
from crossdistill.models.wrappers import Student, Teacher
from crossdistill.train.runtime import autocast, to_device


@torch.no_grad()
def evaluate_classification(
    student: Student,
    loader: Any,
    teacher: Teacher | None = None,
    device: torch.device | None = None,
    amp: torch.dtype | None = None,
    topk: int = 5,
) -> dict[str, float]:
    """Accuracy, top-k and calibration of the student; agreement and KL with the teacher.

    The teacher's logits come from ``batch["knowledge"]`` when a store provides them.
    """
    device = device or next(student.parameters()).device
    was_training = student.training
    student.eval()
    acc = MetricAccumulator()
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, amp):
            logits = student(batch["views"]["student"])["logits"]
            t_logits = None
            if "knowledge" in batch:
                t_logits = batch["knowledge"].get("logits")
            elif teacher is not None:
                t_logits = teacher(batch["views"]["teacher"]).get("logits")
        acc.update(logits, batch["target"], t_logits)
    student.train(was_training)
    return acc.compute(k=topk)


def evaluate_run(run_dir: str | Path, split: str | None = None) -> dict[str, float]:
    """Evaluate a finished run's student on its recipe's eval split; writes eval-<split>.json."""
    from crossdistill.config import load_recipe
    from crossdistill.errors import CheckpointError
    from crossdistill.experiment import build_eval_loader, build_teacher, load_student
    from crossdistill.train.runtime import amp_dtype, select_device

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(
            f"{run_dir} is not a run directory (no config.yaml)",
            hint="pass the folder that `crossdistill run` printed",
        )
    recipe = load_recipe(run_dir / "config.yaml", [f"data.eval_split={split}"] if split else None)
    device = select_device(recipe.train.device)
    student = load_student(run_dir).to(device)
    teacher = build_teacher(recipe.teacher).to(device) if recipe.teacher else None
    loader = build_eval_loader(recipe, device)
    amp = amp_dtype(recipe.train.amp, device)  # the same precision as evaluation in training
    metrics = evaluate_classification(student, loader, teacher, device, amp, recipe.eval.topk)
    out = run_dir / f"eval-{recipe.data.eval_split}.json"
    out.write_text(json.dumps(metrics, indent=1))
    return metrics
