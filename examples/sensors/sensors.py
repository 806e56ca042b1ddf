"""A smart-watch teacher on all six channels teaches a cheaper device's student on three.

BasicMotions (bundled with sktime, installs offline): 80 ten-second recordings of a smart watch,
3-axis accelerometer + 3-axis gyroscope at 10 Hz (``(N, 6, 100)``), four activities (standing,
walking, running, badminton). The data has no subject ids, so its published 40/40 train/test
split is kept: written into the ``.npz`` as a split column, which the ``arrays`` source reads
with ``split_key`` (with subject ids, ``groups`` would keep each subject in one split).

1. The teacher, a 1-D CNN on all 6 channels, is trained first (cross-entropy, with
   crossdistill itself): the pretrained teacher of the story.
2. The student, a smaller 1-D CNN, sees only the accelerometer (channels 0-2): each side reads
   its own view of one ``signal`` field, so the exported student takes exactly 3 channels.
3. Same student, seeds and epochs, last epoch: cross-entropy alone vs cross-entropy + KD.
   Reported on the 40 test recordings (10 per class: one recording is 2.5 points of accuracy).

    python examples/sensors/sensors.py                  # seeds 0 1 2, 60 epochs (~1 min on 2 cores)
    python examples/sensors/sensors.py --tiny --seeds 0 # a smoke run (seconds)

Writes ``<out>/basic_motions.npz``, the runs ``<out>/teacher``, ``<out>/{ce,kd}-seed<N>``,
the ONNX export of the first KD student, and ``<out>/results.json``; prints a markdown table.
``examples/sensors/kd.yaml`` is the KD student as a recipe on the same ``.npz`` and teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import crossdistill
from crossdistill.export import export_run

HERE = Path(__file__).resolve().parent
CHANNELS = ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
STUDENT_CHANNELS = [0, 1, 2]  # the accelerometer: what the cheaper device has
# What each side reads (the recipe's data.views says the same)
VIEWS: dict[str, Any] = {
    "teacher": "signal",
    "student": {"field": "signal", "channels": STUDENT_CHANNELS},
}
NET = "sensors_nets:Conv1dNet"
# A run folder is data: crossdistill rebuilds a model it names by import path only from the
# packages we allow when we reopen it (the CLI: --allow-import sensors_nets)
TRUSTED = ["sensors_nets"]
TEACHER = {"in_channels": len(CHANNELS), "num_classes": 4, "widths": [32, 64, 64]}
STUDENT = {"in_channels": len(STUDENT_CHANNELS), "num_classes": 4, "widths": [8, 16]}
ARMS = {  # arm -> losses; same student, data, epochs, optimizer and seeds
    "ce": ["ce"],
    "kd": [("ce", {}, 0.5), ("kd", {"temperature": 4.0}, 0.5)],
}


@dataclass(frozen=True)
class Settings:
    """Training settings of one benchmark size."""

    teacher_epochs: int
    student_epochs: int
    batch_size: int = 8
    lr: float = 3e-3


FULL = Settings(teacher_epochs=60, student_epochs=60)
TINY = Settings(teacher_epochs=2, student_epochs=2)


# ----------------------------------------------------------------------------- data


def write_npz(path: Path) -> dict[str, Any]:
    """Write BasicMotions (train and test) to ``path`` as ``signal`` (float32), ``label`` and
    ``split``; return what the data holds (shapes, class balance, missing values)."""
    from sktime.datasets import load_basic_motions  # an optional dependency of the example

    signals, labels, splits, checks = [], [], [], {}
    for split in ("train", "test"):
        x, y = load_basic_motions(split=split, return_type="numpy3D")
        checks[split] = {
            "shape": list(x.shape),
            "classes": dict(sorted(Counter(y.tolist()).items())),
            "nan": int(np.isnan(x).sum()),
            "channel_mean": [round(float(v), 3) for v in x.mean(axis=(0, 2))],
            "channel_std": [round(float(v), 3) for v in x.std(axis=(0, 2))],
        }
        signals.append(x.astype(np.float32))  # the models are float32
        labels.append(np.asarray(y, dtype=str))
        splits.append(np.full(len(y), split))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        signal=np.concatenate(signals),
        label=np.concatenate(labels),
        split=np.concatenate(splits),
    )
    return {"file": str(path), "channels": CHANNELS, **checks}


def load_splits(npz: Path) -> tuple[crossdistill.Split, crossdistill.Split]:
    """The train and test splits of the ``.npz``, as the ``arrays`` source reads them (the
    recipe names the same source and params)."""
    params = {"path": str(npz), "targets": "label", "split_key": "split"}
    return (
        crossdistill.load_source("arrays", "train", **params),
        crossdistill.load_source("arrays", "test", **params),
    )


# ----------------------------------------------------------------------------- training


def _train(settings: Settings, epochs: int) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "optimizer": {"name": "adamw", "lr": settings.lr, "weight_decay": 1e-4},
        "batch_size": settings.batch_size,
        "progress": False,
    }


def train_teacher(
    train: crossdistill.Split, test: crossdistill.Split, settings: Settings, run_dir: Path
) -> crossdistill.DistillResult:
    """The 6-channel teacher, trained with cross-entropy (no teacher of its own)."""
    torch.manual_seed(0)  # distill(seed=...) seeds training, after the model is built
    teacher = crossdistill.build_model(NET, TEACHER)
    return crossdistill.distill(
        None,
        teacher,
        train,
        losses=["ce"],
        eval_data=test,
        seed=0,
        run_dir=run_dir,
        **_train(settings, settings.teacher_epochs),
    )


def train_student(
    arm: str,
    seed: int,
    teacher_run: Path,
    train: crossdistill.Split,
    test: crossdistill.Split,
    settings: Settings,
    run_dir: Path,
) -> crossdistill.DistillResult:
    """One student of ``arm`` at ``seed``. Both arms get the teacher: the ``ce`` arm's losses
    never read it (so it never runs in training), but evaluation reports agreement with it."""
    # distill(seed=...) seeds training, after the models are built: seeding here too, and
    # building in crossdistill run's order (student, then teacher), makes the initial weights
    # depend on the seed alone and gives kd.yaml's student exactly
    torch.manual_seed(seed)
    student = crossdistill.build_model(NET, STUDENT)
    # Loaded from its run, the teacher remembers its weights file: the run records it
    teacher = crossdistill.load_student(teacher_run, allow_import=TRUSTED).model
    return crossdistill.distill(
        teacher,
        student,
        train.with_views(VIEWS),
        losses=ARMS[arm],
        eval_data=test.with_views(VIEWS),
        seed=seed,
        run_dir=run_dir,
        **_train(settings, settings.student_epochs),
    )


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def export_onnx(run_dir: Path) -> dict[str, Any]:
    """Export the run's student to ONNX; its input shape, classes and parity."""
    folder = export_run(crossdistill.Run(run_dir, allow_import=TRUSTED), "onnx")
    pre = json.loads((folder / "preprocessing.json").read_text())
    parity = json.loads((folder / "parity.json").read_text())
    return {
        "folder": str(folder),
        "input_shape": pre["input"]["shape"],
        "class_names": pre["class_names"],
        "parity": {k: v for k, v in parity.items() if "diff" in k or "agreement" in k},
    }


# ----------------------------------------------------------------------------- benchmark


def _run_dirs(out: Path, seeds: list[int]) -> list[Path]:
    return [out / "teacher", *(out / f"{arm}-seed{seed}" for arm in ARMS for seed in seeds)]


def _ensure_nets_importable() -> None:
    # runs name the model "sensors_nets:Conv1dNet", which crossdistill imports by that name
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))


def _mean_std(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.mean(values), "std": std}


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def benchmark(
    tiny: bool, seeds: list[int], out: Path, student_epochs: int | None = None
) -> dict[str, Any]:
    """The whole story under ``out``: data, teacher, both arms at each seed (last epoch), the
    ONNX export of the first KD student. Returns the JSON-able result (also in results.json).

    ``student_epochs`` overrides the students' epochs (the teacher keeps its own)."""
    _ensure_nets_importable()
    settings = TINY if tiny else FULL
    if student_epochs is not None:
        settings = replace(settings, student_epochs=student_epochs)
    threads = torch.get_num_threads()
    # Models this small spend more time handing work between threads than computing: on a
    # shared 2-core machine one thread was ~30x faster per step than two.
    torch.set_num_threads(1)
    try:  # runs record absolute paths, so that they reopen from any working directory
        return _benchmark(settings, seeds, Path(out).resolve(), tiny)
    finally:
        torch.set_num_threads(threads)


def _benchmark(settings: Settings, seeds: list[int], out: Path, tiny: bool) -> dict[str, Any]:
    # a run directory is never overwritten: refuse before training anything
    taken = [p for p in _run_dirs(out, seeds) if p.exists()]
    if taken:
        raise FileExistsError(f"{out} already holds {taken[0].name}: remove it or pick --out")
    start = time.perf_counter()
    data = write_npz(out / "basic_motions.npz")
    train, test = load_splits(out / "basic_motions.npz")
    teacher_run = out / "teacher"
    teacher = train_teacher(train, test, settings, teacher_run)
    runs: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in ARMS}
    for arm in ARMS:
        for seed in seeds:
            run_dir = out / f"{arm}-seed{seed}"
            result = train_student(arm, seed, teacher_run, train, test, settings, run_dir)
            m = result.metrics
            runs[arm][seed] = {
                "run": str(run_dir),
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "agreement": m["agreement"],
                "per_class_f1": {c: v["f1"] for c, v in m["per_class"].items()},
            }
    summary = {
        arm: {
            key: _mean_std([r[key] for r in by_seed.values()])
            for key in ("accuracy", "macro_f1", "agreement")
        }
        for arm, by_seed in runs.items()
    }
    student = crossdistill.load_student(out / f"kd-seed{seeds[0]}", allow_import=TRUSTED).model
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": _machine(),  # torch_threads: 1, set for the benchmark
        "tiny": tiny,
        "seeds": seeds,
        "epoch_selection": "last epoch",
        "settings": asdict(settings),
        "data": data,
        "test_examples": len(test),
        "views": VIEWS,
        "teacher": {
            "run": str(teacher_run),
            "accuracy": teacher.metrics["accuracy"],
            "macro_f1": teacher.metrics["macro_f1"],
            "parameters": parameters(teacher.student),
        },
        "student_parameters": parameters(student),
        "runs": runs,
        "summary": summary,
        "onnx": export_onnx(out / f"kd-seed{seeds[0]}"),
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result


def table(result: dict[str, Any]) -> str:
    """The result as a markdown table (mean ± std over seeds)."""

    def cell(stat: dict[str, float]) -> str:
        return f"{stat['mean']:.3f} ± {stat['std']:.3f}"

    t = result["teacher"]
    rows = [
        "| model | channels | parameters | accuracy | macro-F1 | agreement with teacher |",
        "|---|---:|---:|---:|---:|---:|",
        f"| teacher (seed 0) | 6 | {t['parameters']:,} | {t['accuracy']:.3f} | "
        f"{t['macro_f1']:.3f} | — |",
    ]
    names = {"ce": "student, no teacher (ce)", "kd": "student, KD (ce + kd)"}
    for arm, stats in result["summary"].items():
        rows.append(
            f"| {names[arm]} | {len(STUDENT_CHANNELS)} | {result['student_parameters']:,} | "
            f"{cell(stats['accuracy'])} | {cell(stats['macro_f1'])} | "
            f"{cell(stats['agreement'])} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sensors"), help="runs go here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tiny", action="store_true", help="2 epochs each: a smoke run")
    parser.add_argument("--student-epochs", type=int, help="override the students' epochs")
    args = parser.parse_args()
    try:
        result = benchmark(args.tiny, args.seeds, args.out, args.student_epochs)
    except FileExistsError as exc:
        parser.error(str(exc))
    print(table(result))
    onnx = result["onnx"]
    print(f"\nONNX student input {onnx['input_shape']} ({onnx['folder']})")
    print(
        f"seeds {result['seeds']}, last epoch, {result['test_examples']} test recordings, "
        f"{result['seconds']} s; {args.out / 'results.json'}"
    )


if __name__ == "__main__":
    main()
