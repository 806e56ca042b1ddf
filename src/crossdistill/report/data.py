"""Reading a run directory into :class:`RunData` and measuring what the run did not log.

Measured here, not read: the confusion matrix (the student on at most ``max_examples`` of the
eval split, on CPU) and ``student.safetensors``'s size. The latency is the run's one measurement,
``bench.json`` (:func:`crossdistill.export.bench.student_bench`): read when ``crossdistill
bench`` wrote it after the student was trained, otherwise measured the same way and written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from crossdistill.config import RecipeLoader
from crossdistill.errors import CrossDistillError
from crossdistill.export.bench import student_bench
from crossdistill.runs import Run
from crossdistill.train.callbacks.tensorboard_logger import LIVE_SUFFIX

# Keys of a "step" record that are not loss terms.
STEP_META = frozenset({"time", "kind", "epoch", "step", "lr"})
# One colour per run, the same in every figure and in the table's swatches (seaborn "deep").
RUN_COLORS = [
    "#4C72B0",
    "#DD8452",
    "#55A868",
    "#C44E52",
    "#8172B3",
    "#937860",
    "#DA8BC3",
    "#8C8C8C",
    "#CCB974",
    "#64B5CD",
]
DEFAULT_MAX_EXAMPLES = 2000


class ReportError(CrossDistillError):
    """A run directory that no report can be made of."""


@dataclass
class RunData:
    """One run directory as the report sees it: its records, files and what was measured."""

    run_dir: Path
    name: str
    config_text: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    final_split: str | None = None  # the split eval.json's numbers are on (older runs: unknown)
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # eval.json's
    student: dict[str, Any] | None = None  # student.json
    size_bytes: int | None = None
    latency_ms: float | None = None  # bench.json's student p50 at batch 1
    bench: dict[str, Any] | None = None  # bench.json, as read or written for this report
    bench_read: bool = False  # read from an earlier `crossdistill bench` (not measured now)
    confusion: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    cm_examples: int = 0
    cm_total: int = 0
    color: str = RUN_COLORS[0]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == kind]

    @property
    def eval_split(self) -> str | None:
        """The split the per-epoch evaluations read (logged with each; older runs: unknown)."""
        return next((r["split"] for r in self.of_kind("eval") if "split" in r), None)

    @property
    def finished(self) -> bool:
        return self.student is not None and self.size_bytes is not None

    @property
    def loss_terms(self) -> list[str]:
        """Logged loss names in first-seen order, the total ``loss`` first."""
        names: dict[str, None] = {}
        for rec in self.of_kind("step"):
            for key, value in rec.items():
                if key not in STEP_META and isinstance(value, (int, float)):
                    names.setdefault(key, None)
        ordered = list(names)
        return sorted(ordered, key=lambda k: k != "loss")

    @property
    def has_teacher(self) -> bool:
        return any("agreement" in r for r in self.of_kind("eval"))


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a metrics.jsonl and notes about lines that had to be skipped.

    A run killed while writing leaves a partial last line: it is skipped with a note, not fatal.
    Steps logged after the checkpoint a run later resumed from were done again after the
    ``resume`` record; the first, abandoned copies are dropped so that no curve goes back.
    """
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("kind"), str):
            if record["kind"] == "resume":
                redone = int(record.get("step", 0))
                kept = [r for r in records if int(r.get("step", 0)) <= redone]
                if len(kept) < len(records):
                    notes.append(
                        f"metrics.jsonl: {len(records) - len(kept)} records after step {redone} "
                        "were redone after a resume; the later ones are shown."
                    )
                records = kept
            records.append(record)
        elif i == last:
            notes.append(
                f"metrics.jsonl: the last line ({i + 1}) is truncated — the run stopped while "
                "writing it; it was skipped."
            )
        else:
            notes.append(f"metrics.jsonl: line {i + 1} is not a JSON record; it was skipped.")
    return records, notes


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory (config, metrics, student files), finished or not; a folder that
    is no run, or a run that never logged a step, is an error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(
            f"{run_dir} {'is not a folder' if run_dir.exists() else 'does not exist'}",
            hint="pass the run directory that `crossdistill run` printed, e.g. runs/<name>",
        )
    files = Run.open(run_dir, finished=False)
    config_path = files.config_file
    metrics_path = files.metrics_file
    if not metrics_path.is_file():
        raise ReportError(
            f"{run_dir} has no metrics.jsonl: the run never logged a training step",
            hint="train it first with `crossdistill run RECIPE` (or resume it with --resume)",
        )
    records, notes = read_metrics(metrics_path)
    if not records:
        raise ReportError(
            f"{metrics_path} holds no complete record",
            hint="the run stopped before its first log line; resume it with --resume",
        )
    config_text = config_path.read_text(errors="replace")
    try:
        config = yaml.load(config_text, Loader=RecipeLoader)  # no anchors: no expansion
    except yaml.YAMLError:
        config = None
    if not isinstance(config, dict):
        notes.append(f"{config_path.name} is not a YAML mapping; it is shown as it is.")
        config = {}
    run = RunData(run_dir, run_dir.resolve().name, config_text, config, records, notes)
    for rec in run.of_kind("error"):
        notes.append(
            f"training stopped at epoch {rec.get('epoch', '?')}, step {rec.get('step', '?')}: "
            f"{rec.get('error', 'error')}."
        )
    evals = run.of_kind("eval")
    final_path = files.eval_file()
    final: Any = None
    if final_path.is_file():
        try:
            final = json.loads(final_path.read_text())
        except json.JSONDecodeError:
            notes.append("eval.json is not valid JSON; the last logged evaluation is used.")
    if not isinstance(final, dict):
        final = {k: v for k, v in evals[-1].items() if k not in STEP_META} if evals else {}
    run.final = {k: v for k, v in final.items() if isinstance(v, (int, float))}
    if isinstance(final.get("split"), str):
        run.final_split = final["split"]
    if isinstance(final.get("per_class"), dict):
        run.per_class = final["per_class"]
    weights, meta = files.student_file, files.student_json
    if weights.is_file() and meta.is_file():
        try:  # validated: a malformed student.json is a note, not a traceback
            run.student = files.student_meta()
            run.size_bytes = weights.stat().st_size
        except CrossDistillError as exc:
            notes.append(f"the student cannot be shown: {exc.message}")
    else:
        notes.append(
            "the run has not finished (no student.safetensors/student.json): no confusion "
            "matrix, latency or size."
        )
    return run


def measure(run: RunData, max_examples: int, threads: int) -> None:
    """Confusion matrix on the eval split (bounded) and the student's latency (``bench.json``)."""
    if not run.finished:
        return
    device = torch.device("cpu")
    try:
        files = Run.open(run.run_dir)
        student = files.student().to(device).eval()
        loader = files.eval_data()  # no workers: they would only add start-up time
    except CrossDistillError as exc:
        run.notes.append(f"the student could not be evaluated: {exc.message}")
        return
    dataset = loader.dataset
    run.cm_total = len(dataset)
    names = getattr(dataset, "class_names", None) or getattr(
        getattr(dataset, "dataset", None), "class_names", None
    )
    preds: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    seen = 0
    with torch.no_grad():
        for batch in loader:
            x = batch["views"]["student"]
            if seen >= max_examples:
                break
            out = student(x)
            if "logits" not in out or out["logits"].ndim != 2:
                run.notes.append("the student has no 2-D logits output: no confusion matrix.")
                preds = []
                break
            take = min(len(x), max_examples - seen)
            preds.append(out["logits"][:take].argmax(dim=1))
            targets.append(batch["target"][:take])
            seen += take
    if preds:
        y_pred, y_true = torch.cat(preds).numpy(), torch.cat(targets).numpy()
        n = max(len(names or []), int(y_pred.max()) + 1, int(y_true.max()) + 1)
        cm = np.zeros((n, n), dtype=np.int64)
        np.add.at(cm, (y_true, y_pred), 1)
        run.confusion, run.cm_examples = cm, seen
        run.class_names = list(names) if names and len(names) == n else [str(i) for i in range(n)]
    _latency(run, threads)


def _latency(run: RunData, threads: int) -> None:
    """The student's latency from the run's one measurement, ``bench.json`` (read, or measured
    now and written); a note when it cannot be measured."""
    try:
        run.bench, run.bench_read = student_bench(run.run_dir, threads=threads)
    except CrossDistillError as exc:
        run.notes.append(
            f"latency not measured ({exc.message}): run `crossdistill bench {run.run_dir}`"
        )
        return
    run.latency_ms = float(run.bench["results"]["student"]["p50_ms_b1"])


def write_tensorboard(run: RunData) -> str:
    """TensorBoard event files in ``RUN_DIR/tensorboard/`` from metrics.jsonl; returns a note."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return (
            "TensorBoard event files were not written: tensorboard is not installed "
            "(pip install tensorboard)."
        )
    target = Run(run.run_dir).tensorboard_dir
    if any(target.glob(f"events.out.tfevents.*{LIVE_SUFFIX}")):  # train.loggers wrote them already
        return f"TensorBoard event files were written while training, in {target}."
    target.mkdir(exist_ok=True)
    for old in target.glob("events.out.tfevents.*"):  # a report rewrites its own events
        old.unlink()
    writer = SummaryWriter(log_dir=str(target))
    try:
        for rec in run.records:
            kind, step, wall = rec.get("kind"), int(rec.get("step", 0)), rec.get("time")
            prefix = {"step": "train", "epoch": "epoch", "eval": "eval"}.get(str(kind))
            if prefix is None:
                continue
            for key, value in rec.items():
                if key in ("time", "kind", "step", "epoch") or not isinstance(value, (int, float)):
                    continue
                writer.add_scalar(f"{prefix}/{key}", value, step, walltime=wall)
    finally:
        writer.close()
    return f"TensorBoard event files written to {target}."
