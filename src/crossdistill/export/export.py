"""Export a finished run's student alone — no teacher, adapters or loss modules — as safetensors,
TorchScript or ONNX (optionally int8), a text student as a sentence-transformers model, a static
one as a model2vec model, with ``preprocessing.json`` and a parity check. A dual encoder exports
its tower: the text encoder that embeds queries and documents alike.

``RUN_DIR/export/<format>[-int8]/`` holds the model file, ``README.md`` (the model card: see
:mod:`crossdistill.export.card`), ``preprocessing.json`` (input shape,
dtype, value range, pipeline steps, output names, classes) and ``parity.json`` (the exported
model, run by its own runtime, against the trained student in crossdistill on real validation
examples; for a text student: embeddings' max abs diff and cosine on up to 1,000 sentences;
with the exporter that wrote the file and the seconds the format's export took).
The folder is written under a temporary name and renamed at the end: a failure leaves no export
behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill._util.files import replace_dir, write_errors
from crossdistill.data import Clips, Split
from crossdistill.errors import CrossDistillError, DataError
from crossdistill.export.base import (
    EXPORTERS,
    TENSOR,
    TEXT,
    ExportError,
    ExportInputs,
    StudentGraph,
    torch_runner,
)
from crossdistill.export.card import card_data, write_card
from crossdistill.registry import plugin_name, untrusted
from crossdistill.runs import Run

PREPROCESSING = "preprocessing.json"
PARITY = "parity.json"


def _batches(run: Run, split: str, limit: int) -> torch.Tensor | list[str]:
    """Up to ``limit`` unaugmented student inputs of ``split``, in order: a tensor, or the
    list of strings of a text source."""
    xs = [batch["views"]["student"] for batch in run.eval_data(split, limit=limit)]
    if xs and isinstance(xs[0], dict):  # ranking batches: their queries' and candidates' texts
        texts = [t for v in xs for t in [*v["query"], *(c for col in v["candidates"] for c in col)]]
        return list(dict.fromkeys(texts))[:limit]
    if xs and isinstance(xs[0], list):  # text batches collate to lists of str
        return [text for batch in xs for text in batch][:limit]
    return torch.cat(xs)[:limit]


def _calibration(run: Run, limit: int) -> tuple[torch.Tensor | list[str], str]:
    """Training inputs for static int8, and the split they came from: the evaluation split
    when the run keeps no training data (a run trained from Python on in-memory data)."""
    recipe = run.config
    try:
        return _batches(run, recipe.data.train_split, limit), recipe.data.train_split
    except DataError:
        return _batches(run, recipe.data.eval_split, limit), recipe.data.eval_split


def _input_kind(x: torch.Tensor | list[str]) -> str:
    return TEXT if isinstance(x, list) else TENSOR


def _numpy(x: torch.Tensor | list[str]) -> np.ndarray | list[str]:
    return x if isinstance(x, list) else x.numpy()


def text_input(model: Any) -> dict[str, Any]:
    """preprocessing.json's ``input`` for a student that takes raw strings."""
    return {
        "name": "texts",
        "type": "list[str]",
        "note": "raw UTF-8 strings; the model tokenizes them itself",
        "tokenizer": getattr(model, "tokenizer_name", None),
        "max_length": getattr(model, "max_length", None),
        "truncation": "to max_length tokens (longer texts are cut, never refused)",
    }


def _check_format(exporter: Any, kind: str, run: Run) -> None:
    """An ExportError when ``exporter`` cannot hold a student taking ``kind`` inputs."""
    if kind in exporter.inputs:
        return
    fitting = [n for n in EXPORTERS.names() if kind in EXPORTERS.get(n).inputs]
    what = {
        TEXT: "raw strings, tokenized inside the student in Python",
        TENSOR: "tensors, not raw strings",
    }[kind]
    raise ExportError(
        f"the {plugin_name(exporter)} format cannot hold the student of {run.path}: its inputs are "
        f"{what}, and {plugin_name(exporter)} takes only {' / '.join(exporter.inputs)} inputs",
        hint=f"use --format {' or --format '.join(fitting)}" if fitting else None,
    )


def _student_field(split: Split) -> Any:
    """The field the student reads, or None when its side is not one named field."""
    side = split.side("student")
    return split.fields[side] if isinstance(side, str) else None


def _reads_uint8(split: Split) -> bool:
    """Whether the student reads a uint8 field (images, which it sees divided by 255)."""
    field = _student_field(split)
    return isinstance(field, torch.Tensor) and field.dtype == torch.uint8


def _value_range(split: Split, x: torch.Tensor) -> list[float]:
    """[0, 1] for image sources (uint8 scaled by the dataset), [-1, 1] for audio clips, else
    the observed range."""
    if isinstance(_student_field(split), Clips):
        return [-1.0, 1.0]
    if _reads_uint8(split):
        return [0.0, 1.0]
    return [float(x.min()), float(x.max())]


# ----------------------------------------------------------------------------- parity


def parity(
    reference: list[np.ndarray], exported: list[np.ndarray], names: list[str], text: bool = False
) -> dict[str, Any]:
    """Max abs diff per output, and top-1 agreement of the first 2-D output or, for a text
    student (whose outputs are embeddings), the cosine of each exported embedding to the
    reference's (mean and min)."""
    out: dict[str, Any] = {
        "max_abs_diff": {
            n: float(np.abs(r - e).max()) if r.size else 0.0
            for n, r, e in zip(names, reference, exported, strict=True)
        }
    }
    out["max_abs_diff_all"] = max(out["max_abs_diff"].values())
    if text:
        r, e = (np.asarray(a, dtype=np.float64) for a in (reference[0], exported[0]))
        norms = np.linalg.norm(r, axis=1) * np.linalg.norm(e, axis=1)
        cosine = (r * e).sum(1) / np.maximum(norms, 1e-12)
        out["mean_cosine"] = float(cosine.mean())
        out["min_cosine"] = float(cosine.min())
    elif reference[0].ndim == 2:
        agree = reference[0].argmax(1) == exported[0].argmax(1)
        out["top1_agreement"] = float(agree.mean())
        out["disagreements"] = int((~agree).sum())
    return out


def _run_batched(runner: Any, x: np.ndarray | list[str], batch: int = 256) -> list[np.ndarray]:
    parts = [runner(x[i : i + batch]) for i in range(0, len(x), batch)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


# ----------------------------------------------------------------------------- export


def export_run(
    run_dir: str | Path | Run,
    fmt: str,
    int8: bool = False,
    out: str | Path | None = None,
    parity_examples: int = 1000,
    calibration_examples: int = 1024,
    half: bool = False,
) -> Path:
    """Export the student of a finished run; returns the export folder.

    ``half`` stores the float weights as float16 (half the bytes; formats with ``half``
    support only); ``parity.json`` then measures what that costs.

    Raises :class:`ExportError` / :class:`CheckpointError` with a hint on any problem, leaving
    nothing under the target name.
    """
    exporter = EXPORTERS.build(fmt, where="--format")
    run = Run.open(run_dir)
    if half and not exporter.half:
        able = [name for name in EXPORTERS.names() if EXPORTERS.get(name).half]
        raise ExportError(
            f"the {fmt} export cannot store float16 weights",
            hint=f"export without --half, or use --format {' or --format '.join(able)}",
        )
    target = Path(out) if out is not None else run.export_dir(fmt, int8, half)
    recipe = run.config
    student = run.student().cpu().eval()  # checks student.safetensors' SHA-256 (required)
    meta = run.student_meta()
    names, model = list(student.outputs), student.model
    graph = StudentGraph(student.pipeline, model, student.outputs).eval()
    tower = getattr(model, "text_encoder", None)
    if tower is not None:  # a dual encoder ships as its tower: texts in, embeddings out
        names, model = ["embedding"], tower
        graph = StudentGraph(torch.nn.Identity(), tower, names).eval()

    x = _batches(run, recipe.data.eval_split, parity_examples)
    kind = _input_kind(x)
    _check_format(exporter, kind, run)
    calibration, calibrated_on = _calibration(run, calibration_examples) if int8 else (x[:0], None)
    split = run.eval_data().dataset.split
    # a batch at a time, as the export runs: a text student pads each batch to its longest text
    reference = _run_batched(torch_runner(graph, torch.get_num_threads()), _numpy(x))

    inputs = ExportInputs(
        graph=graph,
        model=model,
        meta=meta,
        output_names=names,
        example=x[:2] if kind == TEXT else x[:2].clone(),
        calibration=calibration,
        int8=int8,
        half=half,
        card=card_data(run, len(split)),
        check=x,
    )
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with write_errors(target, "the export"):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        start = time.perf_counter()
        info = exporter.export(inputs, tmp)
        seconds = time.perf_counter() - start
        try:
            # the export names what the run names: it is trusted as far as the run is
            with untrusted(run.student_json, run.allow_import):
                runner = exporter.load(tmp)
            exported = _run_batched(runner, _numpy(x))
        except CrossDistillError:
            raise
        except Exception as exc:
            raise ExportError(
                f"the {fmt} export of {run.path} was written but cannot be run: {exc}",
                hint="report this with `crossdistill --debug export ...`",
            ) from exc
        result = {
            "format": fmt,
            "int8": int8,
            "half": half,
            "examples": len(x),
            "split": recipe.data.eval_split,
            "reference": "the trained student in crossdistill (float32, CPU)",
            "student_weights": "SHA-256 verified against student.json",
            **parity(reference, exported, names, text=kind == TEXT),
            "exporter": info.get("exporter"),
            "export_seconds": round(seconds, 3),
        }
        if calibrated_on is not None:
            result["calibration_split"] = calibrated_on
        (tmp / PARITY).write_text(json.dumps(result, indent=1))
        if kind == TEXT:
            info["input"] = {**text_input(model), **info.get("input", {})}
        pre = preprocessing(recipe, split, meta, x, reference, names, exporter, info, int8)
        (tmp / PREPROCESSING).write_text(json.dumps(pre, indent=1))
        write_card(run, tmp, exporter, pre, result, eval_examples=len(split))
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with write_errors(target, "the export"):  # re-raised: a full disk is one clear error
            raise
    return target


def preprocessing(
    recipe: Any,
    split: Split,
    meta: dict[str, Any],
    x: torch.Tensor | list[str],
    reference: list[np.ndarray],
    names: list[str],
    exporter: Any,
    info: dict[str, Any],
    int8: bool,
) -> dict[str, Any]:
    """The contents of preprocessing.json: what goes in, what comes out, how it was made.

    For a text student ``info["input"]`` describes the input (raw strings, the tokenizer, max
    length, truncation; see :func:`text_input`)."""
    return {
        "format": plugin_name(exporter),
        "file": exporter.filename,
        "int8": int8,
        "input": info["input"]
        if isinstance(x, list)
        else {
            "name": "input",
            "shape": [None, *x.shape[1:]],
            "dtype": "float32",
            "value_range": _value_range(split, x),
            "layout": "NCHW" if x.dim() == 4 else None,
            "note": "raw inputs as crossdistill's data source yields them"
            + (" (uint8 images / 255)" if _reads_uint8(split) else "")
            + "; the pipeline below runs "
            + (
                "inside the graph"
                if info.get("pipeline_in_graph")
                else "before the model: apply it yourself"
            ),
        },
        "pipeline": meta["pipeline"],
        "pipeline_in_graph": bool(info.get("pipeline_in_graph")),
        "outputs": [
            {"name": n, "shape": [None, *r.shape[1:]]}
            for n, r in zip(names, reference, strict=True)
        ],
        "num_classes": split.num_classes,
        "class_names": split.class_names,
        "student": {k: meta[k] for k in ("model", "params", "parameters") if k in meta},
        "data_source": recipe.data.source,
        **{k: v for k, v in info.items() if k not in ("pipeline_in_graph", "input")},
    }
