"""Any teacher, any student, any data: a `.pth` teacher of 10 animals teaches a 4-group student.

The story, on Animal-MNIST (PyPI ``animal-mnist``: 10,000 grayscale 28×28 animal silhouettes,
10 classes), which no crossdistill source ships:

1. A teacher is trained *outside* crossdistill — a plain PyTorch loop over RGB 56×56 images (the
   grey images replicated and resized, as a model made for colour photos expects) on the 10 fine
   classes — and saved with ``torch.save(model.state_dict(), "teacher.pth")``.
2. crossdistill loads that ``.pth`` (``build_model("animals_nets:AnimalTeacher")`` +
   ``load_weights``) with the teacher's own input pipeline ``to_rgb → resize 56 → normalize``.
3. The student's data has a coarser label space (pets, farm, wild, bird). A grayscale 28×28
   student with two heads learns it: ``logits`` (4 groups, ``ce``) and ``teacher_logits``
   (10 animals, ``kd`` from the teacher). The same student without a teacher is the baseline.

    python examples/animals/animals.py               # full: seeds 0 1 2 (about 10 min, 2 cores)
    python examples/animals/animals.py --tiny --out /tmp/animals_tiny   # 400 images, 1 epoch
    python examples/animals/animals.py --prepare     # data + teacher.pth only, for kd.yaml

Each student is a complete crossdistill run folder under ``--out`` (default
``examples/animals/runs``); ``result.json`` there holds every number of the table.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import io
import json
import os
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import crossdistill

HERE = Path(__file__).resolve().parent
# crossdistill builds the models from their import paths ("animals_nets:...")
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from animals_nets import AnimalTeacher  # noqa: E402

FINE = ["Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra"]
COARSE = {
    "pets": ["Cat", "Dog"],
    "farm": ["Cow", "Horse", "Sheep"],
    "wild": ["Bear", "Elephant", "Giraffe", "Zebra"],
    "bird": ["Bird"],
}
COARSE_NAMES = list(COARSE)
# fine class index -> coarse group index
FINE_TO_COARSE = np.array(
    [next(i for i, members in enumerate(COARSE.values()) if name in members) for name in FINE]
)

TEST_FRACTION = 0.2  # by a stable hash of each image: train and test never share an image
# Grey-level mean and std of the full training split (printed by `animals.py --prepare`); the
# teacher's normalize repeats them per channel, since to_rgb copies the grey channel.
GREY_MEAN, GREY_STD = 0.2733, 0.4059
TEACHER_MODEL = "animals_nets:AnimalTeacher"
TEACHER_PARAMS = {"width": 16, "num_classes": len(FINE)}
TEACHER_PIPELINE = [
    {"name": "to_rgb"},
    {"name": "resize", "params": {"size": 56}},
    {"name": "normalize", "params": {"mean": [GREY_MEAN] * 3, "std": [GREY_STD] * 3}},
]
STUDENT_MODEL = "animals_nets:TwoHeadStudent"
STUDENT_PARAMS = {"width": 8, "num_classes": len(COARSE), "teacher_classes": len(FINE)}
STUDENT_OUTPUTS = ["logits", "teacher_logits"]
STUDENT_PIPELINE = [{"name": "normalize", "params": {"mean": [GREY_MEAN], "std": [GREY_STD]}}]
# The coarse head's objective is the same in both variants (ce, weight 1); KD adds the fine head.
LOSSES: dict[str, list[Any]] = {
    "ce": [("ce", {}, 1.0)],
    "kd": [("ce", {}, 1.0), ("kd", {"temperature": 4.0, "student": "teacher_logits"}, 1.0)],
}


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark: images per class (None: all), epochs, batch, learning rates."""

    per_class: int | None
    teacher_epochs: int
    student_epochs: int
    batch_size: int = 128
    teacher_lr: float = 0.1
    student_lr: float = 0.05


FULL = Settings(per_class=None, teacher_epochs=8, student_epochs=10)
TINY = Settings(per_class=40, teacher_epochs=1, student_epochs=1, batch_size=64)


# --------------------------------------------------------------------------------- the data


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct as found
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct as found  # type: ignore[no-redef]
    return found


def _plain_dtype(*args: Any) -> np.dtype:
    """``np.dtype`` for numbers only: an object dtype would make the array hold pickled
    objects, which this reader never builds."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing an array of dtype {dtype}: it holds objects")
    return dtype


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays of numbers and nothing else.

    A pickle is a program: the stock unpickler calls whatever globals it names. This one
    resolves only the three globals a pickled ``ndarray`` needs — ``_reconstruct`` (under
    NumPy 1's and 2's module names), ``ndarray`` and ``dtype`` (numeric dtypes only) — and
    raises ``pickle.UnpicklingError`` for any other (``os.system``, ``builtins.eval``, ...).
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct(),
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct(),
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): _plain_dtype,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only NumPy arrays of numbers are allowed"
            )
        return allowed[(module, name)]


def read_pickled_array(data: bytes, where: str) -> np.ndarray:
    """The one NumPy array a gzip'd pickle holds, read by :class:`NumpyOnlyUnpickler`."""
    found = NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(data))).load()
    if not isinstance(found, np.ndarray):
        raise ValueError(f"{where}: expected a NumPy array, found a {type(found).__name__}")
    return found


def _animal_mnist_files() -> tuple[bytes, bytes]:
    """The packaged image and label pickles of ``animal-mnist``, as bytes."""
    root = importlib.resources.files("animal_mnist.data") / "Animal_MNIST"
    return (
        (root / "animal_data_version_3.gz").read_bytes(),
        (root / "animal_label_version_3.gz").read_bytes(),
    )


def check_arrays(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Check what the pickles hold (raise ValueError otherwise) and describe it."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"images: expected (N, 28, 28) uint8, got {images.shape} {images.dtype}")
    if labels.dtype.kind not in "iu" or labels.shape != (len(images),):
        raise ValueError(f"labels: expected ({len(images)},) integers, got {labels.shape}")
    if labels.min() < 0 or labels.max() >= len(FINE):
        raise ValueError(f"labels: expected 0..{len(FINE) - 1}, got {labels.min()}..{labels.max()}")
    flat = images.reshape(len(images), -1)
    distinct = len(np.unique(flat, axis=0))
    return {
        "images": [int(n) for n in images.shape],
        "images_dtype": str(images.dtype),
        "pixel_range": [int(images.min()), int(images.max())],
        "labels_dtype": str(labels.dtype),
        "label_range": [int(labels.min()), int(labels.max())],
        "per_class": {FINE[c]: int(n) for c, n in enumerate(np.bincount(labels, minlength=10))},
        "duplicate_images": len(images) - distinct,
        "blank_images": int((flat.max(axis=1) == 0).sum()),
    }


def prepare_data(out: Path, per_class: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Convert the pickles once to ``out/animal_mnist[_tiny].npz`` (float images in [0, 1],
    ``(N, 1, 28, 28)``; ``fine`` and ``coarse`` labels); the ``arrays`` source reads it.

    ``per_class``: keep only the first that many images of each class (the tiny run)."""
    path = out / ("animal_mnist.npz" if per_class is None else "animal_mnist_tiny.npz")
    data, labels_data = _animal_mnist_files()
    images = read_pickled_array(data, "animal_data_version_3.gz")
    labels = read_pickled_array(labels_data, "animal_label_version_3.gz")
    found = check_arrays(images, labels)
    if per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(FINE))])
        images, labels = images[keep], labels[keep]
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.stem + ".partial.npz")  # a crash never leaves a bad cache
        np.savez(
            partial,
            image=(images[:, None].astype(np.float32) / 255.0),
            fine=labels.astype(np.int64),
            coarse=FINE_TO_COARSE[labels].astype(np.int64),
        )
        os.replace(partial, path)
    return path, found


def load_split(npz: Path, split: str, labels: str = "coarse") -> crossdistill.Split:
    """A split of the ``.npz`` through crossdistill's ``arrays`` source, with the ``coarse``
    (the student's data) or ``fine`` (the teacher's) labels as targets; both label choices
    give the same images in the same order, since the split hashes the images alone."""
    names = COARSE_NAMES if labels == "coarse" else FINE
    return crossdistill.load_source(
        "arrays",
        split,
        path=str(npz),
        fields={"image": "image"},
        targets=labels,
        class_names=names,
        test_fraction=TEST_FRACTION,
    )


# ---------------------------------------------------------------- the teacher, outside crossdistill


def _teacher_view(x: torch.Tensor) -> torch.Tensor:
    """What the teacher was trained on: grey → 3 channels, 56×56 bilinear, normalized."""
    x = F.interpolate(x.repeat(1, 3, 1, 1), size=56, mode="bilinear", align_corners=False)
    return (x - GREY_MEAN) / GREY_STD


def train_teacher(
    images: torch.Tensor, labels: torch.Tensor, settings: Settings, seed: int = 0
) -> AnimalTeacher:
    """A plain PyTorch loop: SGD with Nesterov momentum, cosine schedule, random flips."""
    torch.manual_seed(seed)
    model = AnimalTeacher(**TEACHER_PARAMS)
    steps = settings.teacher_epochs * -(-len(images) // settings.batch_size)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.teacher_lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for epoch in range(settings.teacher_epochs):
        order = torch.randperm(len(images))
        total = 0.0
        for start in range(0, len(images), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            x = images[batch]
            flip = torch.rand(len(x)) < 0.5  # silhouettes face either way
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(_teacher_view(x)), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        print(f"teacher epoch {epoch + 1}: train loss {total / len(images):.4f}", flush=True)
    return model.eval()


@torch.no_grad()
def _logits(model: torch.nn.Module, images: torch.Tensor, view: Any = None) -> torch.Tensor:
    model.eval()
    chunks = []
    for x in images.split(512):  # one batch of 2,000 56×56 RGB images would be 75 MB
        out = model(view(x) if view is not None else x)
        chunks.append(out["logits"] if isinstance(out, Mapping) else out)  # a Teacher: Knowledge
    return torch.cat(chunks)


def load_teacher(pth: Path) -> crossdistill.Teacher:
    """The ``.pth`` as a crossdistill teacher: rebuilt by import path, its weights loaded by
    crossdistill (``torch.load(weights_only=True)``), with its own input pipeline."""
    model = crossdistill.build_model(TEACHER_MODEL, TEACHER_PARAMS, "teacher")
    crossdistill.load_weights(model, pth, where="teacher.weights")
    return crossdistill.Teacher(
        model, pipeline=crossdistill.build_pipeline(TEACHER_PIPELINE, "teacher.pipeline")
    )


def make_student(seed: int) -> crossdistill.Student:
    """The two-head student, built by import path so that its runs can rebuild it; the same
    seed gives both variants the same initial weights."""
    torch.manual_seed(seed)
    model = crossdistill.build_model(STUDENT_MODEL, STUDENT_PARAMS, "student")
    return crossdistill.Student(
        model,
        outputs=STUDENT_OUTPUTS,
        pipeline=crossdistill.build_pipeline(STUDENT_PIPELINE, "student.pipeline"),
    )


# ------------------------------------------------------------------------------- the benchmark


def _mean_std(values: list[float]) -> list[float]:
    """[mean, sample std] over seeds (std 0.0 for one seed)."""
    return [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def prepare(out: Path, settings: Settings, seed: int = 0) -> dict[str, Any]:
    """The data cache and ``teacher.pth`` (trained outside crossdistill); what they hold."""
    npz, found = prepare_data(out, settings.per_class)
    train_fine, test_fine = load_split(npz, "train", "fine"), load_split(npz, "test", "fine")
    x_train = train_fine.fields["image"]
    print(
        f"Animal-MNIST: {found['images']} {found['images_dtype']} images, pixels "
        f"{found['pixel_range']}, labels {found['labels_dtype']} in {found['label_range']}, "
        f"{found['duplicate_images']} duplicate images; split {len(train_fine)} train / "
        f"{len(test_fine)} test; train grey mean {x_train.mean():.4f} std {x_train.std():.4f}",
        flush=True,
    )
    started = time.perf_counter()
    teacher = train_teacher(x_train, train_fine.targets, settings, seed)
    seconds = time.perf_counter() - started
    pth = (out / "teacher.pth").resolve()
    torch.save(teacher.state_dict(), pth)
    x_test = test_fine.fields["image"]
    before = _logits(teacher, x_test, _teacher_view)
    del teacher  # from here on the teacher is only the .pth file

    # The teacher as crossdistill sees it must be the model that was trained: same logits.
    reloaded = _logits(load_teacher(pth), x_test)
    accuracy = (reloaded.argmax(1) == test_fine.targets).float().mean().item()
    return {
        "data": found,
        "npz": str(npz.resolve()),
        "train_images": len(train_fine),
        "test_images": len(test_fine),
        "train_grey_mean_std": [float(x_train.mean()), float(x_train.std())],
        "teacher": {
            "pth": str(pth),
            "parameters": sum(p.numel() for p in AnimalTeacher(**TEACHER_PARAMS).parameters()),
            "accuracy_fine": accuracy,
            "reload_agreement": (reloaded.argmax(1) == before.argmax(1)).float().mean().item(),
            "reload_max_abs_diff": (reloaded - before).abs().max().item(),
            "train_seconds": round(seconds, 1),
        },
    }


def benchmark(tiny: bool, seeds: list[int], out: Path) -> dict[str, Any]:
    """Train the teacher outside crossdistill, then for each seed the same student without a
    teacher (``ce``) and with KD from it (``kd``); coarse accuracy and macro-F1 on the test
    split after the LAST epoch, agreement with the teacher on its 10 classes for ``kd``.

    ``tiny``: 400 images, 1 epoch (a test). Writes ``out/result.json`` and returns it.
    """
    settings = TINY if tiny else FULL
    out = Path(out)
    names = [f"{variant}_seed{seed}" for seed in seeds for variant in LOSSES]
    taken = [name for name in names if (out / name).exists()]
    if taken:
        raise FileExistsError(
            f"{out} already holds runs {taken}: remove them or choose another out"
        )
    started = time.perf_counter()
    result: dict[str, Any] = {"settings": asdict(settings), "seeds": list(seeds)}
    result.update(prepare(out, settings))
    npz = Path(result["npz"])
    train, test = load_split(npz, "train"), load_split(npz, "test")
    runs: dict[str, dict[str, Any]] = {variant: {} for variant in LOSSES}
    for seed in seeds:
        for variant, losses in LOSSES.items():
            begun = time.perf_counter()
            done = crossdistill.distill(
                load_teacher(Path(result["teacher"]["pth"])) if variant == "kd" else None,
                make_student(seed),
                train,
                losses,
                eval_data=test,
                batch_size=settings.batch_size,
                seed=seed,
                run_dir=out / f"{variant}_seed{seed}",
                epochs=settings.student_epochs,
                optimizer={"name": "sgd", "lr": settings.student_lr},
                schedule={"name": "cosine"},
                progress=False,
            )
            assert done.run is not None
            metrics = crossdistill.Run(done.run.path).final_metrics()
            keys = ["accuracy", "macro_f1"] + (
                ["agreement", "agreement_top5", "kl_teacher_student"] if variant == "kd" else []
            )
            runs[variant][str(seed)] = {
                **{key: metrics[key] for key in keys},
                "run": str(done.run.path),
                "seconds": round(time.perf_counter() - begun, 1),
            }
            shown = ", ".join(f"{key} {metrics[key]:.4f}" for key in keys)
            print(f"seed {seed} {variant}: {shown}", flush=True)
    student = crossdistill.Run(runs["ce"][str(seeds[0])]["run"]).student_meta()
    result.update(
        student_parameters=student["parameters"],
        runs=runs,
        summary={
            variant: {
                key: _mean_std([per_seed[str(seed)][key] for seed in seeds])
                for key in per_seed[str(seeds[0])]
                if key not in ("run", "seconds")
            }
            for variant, per_seed in runs.items()
        },
        machine=_machine(),
        command=" ".join([sys.executable, *sys.argv]),
        seconds=round(time.perf_counter() - started, 1),
    )
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict[str, Any]) -> str:
    """The result as a markdown table (mean ± std over the seeds)."""

    def cell(variant: str, key: str) -> str:
        found = result["summary"][variant].get(key)
        return "—" if found is None else f"{found[0]:.4f} ± {found[1]:.4f}"

    teacher = result["teacher"]
    rows = [
        "| model | params | coarse accuracy | coarse macro-F1 | agreement (10 fine) | top-5 agr. |",
        "|---|---:|---:|---:|---:|---:|",
        f"| teacher (RGB 56×56, `.pth`) | {teacher['parameters']:,} | — | — | "
        f"fine accuracy {teacher['accuracy_fine']:.4f} | — |",
    ]
    for variant, label in (("ce", "student, no teacher (`ce`)"), ("kd", "student, KD (`ce`+`kd`)")):
        rows.append(
            f"| {label} | {result['student_parameters']:,} | {cell(variant, 'accuracy')} | "
            f"{cell(variant, 'macro_f1')} | {cell(variant, 'agreement')} | "
            f"{cell(variant, 'agreement_top5')} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="400 images, 1 epoch (a test)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument("--out", type=Path, default=HERE / "runs", help="where runs go")
    parser.add_argument("--prepare", action="store_true", help="data + teacher.pth only")
    # Small convolutions on a shared 2-core machine run faster on one thread (measured: a
    # teacher step 0.2 s on one thread, 0.2-1.3 s on two under load).
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.prepare:
        found = prepare(args.out, TINY if args.tiny else FULL)
        print(json.dumps(found["teacher"], indent=2))
        return
    seeds = args.seeds if args.seeds is not None else ([0] if args.tiny else [0, 1, 2])
    result = benchmark(args.tiny, seeds, args.out)
    print(table(result))
    print(f"{result['seconds']} s; numbers in {args.out / 'result.json'}")


if __name__ == "__main__":
    main()
