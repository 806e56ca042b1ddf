"""A PyTorch teacher as an ONNX Runtime teacher, for the store pass (``cache --runtime onnx``).

The teacher is exported once, to ``$CROSSDISTILL_CACHE/onnx-teachers/<digest>.onnx`` (default
``~/.cache/crossdistill``), the digest covering the teacher's weights and structure, the
Knowledge keys exported, the input's rank and dtype and the torch version; a later store of
the same teacher reuses the file. Before it is used, the graph is run beside the PyTorch
teacher on real examples of the data (:func:`measure_parity`): the largest absolute
difference of each Knowledge key must be within ``atol * max(1, max |teacher value|)``, or the
runtime is refused.

What the graph holds:

- a teacher whose view is a tensor: everything the Teacher computes — its input pipeline, the
  model and its taps — with one graph output per Knowledge key, the batch axis dynamic;
- a sentence-transformers text teacher (``minilm``, ``sentence_transformer``): the transformer,
  pooling and normalisation, with inputs ``input_ids``/``attention_mask`` (and
  ``token_type_ids`` where the tokenizer gives them) of dynamic batch and sequence length; the
  model's own tokenizer runs in Python before it (taps are not exported here).

Exporter: torch.onnx's TorchScript-based exporter (``dynamo=False``): under a second for the
zoo's CNNs where the dynamo exporter takes ~10 s, and its result is parity-checked anyway.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from crossdistill._util.device import to_device
from crossdistill._util.hashing import digest, sha256_file, weights_digest
from crossdistill.core.wrappers import Teacher
from crossdistill.errors import ConfigError, require
from crossdistill.models.hub.minilm import SentenceEncoder
from crossdistill.models.runtime.onnx_file import CPU, ONNX_HINT, OnnxModel

log = logging.getLogger(__name__)

CACHE_ENV = "CROSSDISTILL_CACHE"
OPSET = 18
ATOL = 1e-4  # parity: max |ORT - PyTorch| <= ATOL * max(1, max |PyTorch|), per Knowledge key
PARITY_EXAMPLES = 256
EXPORT_VERSION = 2  # bump when what an exported graph holds changes
# Graph outputs are named "knowledge/<key>": the TorchScript-based exporter does not refuse an
# output name that an inner value already has (MiniLM's "embedding"), it silently exports
# another tensor under it; no inner value of a traced model is named like this.
OUT = "knowledge/{}"


def cache_root() -> Path:
    """``$CROSSDISTILL_CACHE`` or ``~/.cache/crossdistill``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "crossdistill"


class _KnowledgeGraph(nn.Module):
    """A teacher as a function of its view: one output per Knowledge key, in ``keys`` order."""

    def __init__(self, teacher: Teacher, keys: Sequence[str]) -> None:
        super().__init__()
        self.teacher, self.keys = teacher, list(keys)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        knowledge = self.teacher(x)
        return tuple(knowledge[key] for key in self.keys)


class _SentenceGraph(nn.Module):
    """A sentence-transformers pipeline after its tokenizer: token tensors -> embeddings."""

    def __init__(self, encoder: SentenceEncoder, names: Sequence[str]) -> None:
        super().__init__()
        self.encoder, self.names = encoder, list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features: dict[str, Any] = dict(zip(self.names, tensors, strict=True))
        for module in self.encoder.model.children():
            if type(module).__name__ == "Normalize" and not self.encoder.normalize:
                continue
            features = module(features)
        embedding = features["sentence_embedding"]
        if self.encoder.normalize and not self.encoder._has_normalize:
            embedding = torch.nn.functional.normalize(embedding, dim=-1)
        return embedding


class OnnxSentenceEncoder(nn.Module):
    """The ORT twin of a :class:`SentenceEncoder`: its tokenizer in Python, the rest in the
    graph; ``forward(texts) -> (B, D)``, the same as the PyTorch encoder's."""

    def __init__(self, encoder: SentenceEncoder, graph: OnnxModel) -> None:
        super().__init__()
        self.tokenize: Callable[[list[str]], Mapping[str, Any]] = (
            getattr(encoder.model, "preprocess", None) or encoder.model.tokenize
        )
        self.graph, self.dim = graph, encoder.dim

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        if not len(texts):
            return torch.zeros(0, self.dim)
        features = self.tokenize(list(texts))
        names = [name for name, _, _ in self.graph.inputs]
        out = self.graph({name: features[name] for name in names})
        return next(iter(out.values()))


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: Sequence[str],
    outputs: Sequence[str],
    axes: Mapping[str, Mapping[int, str]],
) -> None:
    """``module`` to ONNX at ``path``, written to a temporary file first (a crash leaves no
    graph that looks complete)."""
    # in eval mode from the outermost module: exported in training mode (a fresh wrapper's
    # default), MiniLM's graph computed other embeddings (max difference 0.1)
    module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(
                module,
                args,
                str(partial),
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_axes={k: dict(v) for k, v in axes.items()},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:  # torch.onnx raises many types; all mean "this teacher cannot go"
        partial.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or ["no detail"])[0][:300]
        raise ConfigError(
            f"the teacher cannot be exported to ONNX: {type(exc).__name__}: {first}",
            hint="write the store with the PyTorch teacher (`--runtime torch`, the default)",
        ) from exc
    os.replace(partial, path)


def _batch(dataset: Any, indices: Sequence[int]) -> Any:
    """The teacher views of examples ``indices`` (first recorded slot), collated."""
    examples = [dataset.example(i, dataset.slot_params(i, 0)) for i in indices]
    return default_collate(examples)["views"]["teacher"]


def onnx_teacher(
    teacher: Teacher,
    keys: Sequence[str],
    sample: Any,
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    cache: Path | None = None,
) -> Teacher:
    """``teacher`` as a Teacher run by onnxruntime, emitting ``keys``; exported on ``sample``
    (a batch of its view) the first time, read from the cache after that. ``teacher`` is left
    on the CPU (the export runs there)."""
    require("onnxruntime", "the ONNX Runtime teacher (--runtime onnx)", ONNX_HINT)
    require("onnx", "the ONNX Runtime teacher (--runtime onnx)", ONNX_HINT)
    model = getattr(teacher, "model", None)  # an ensemble has members instead
    root = (cache or cache_root()) / "onnx-teachers"
    teacher = teacher.cpu()
    if isinstance(model, SentenceEncoder):
        if teacher.taps:
            raise ConfigError(
                "--runtime onnx exports a text teacher's embedding only; this teacher has taps",
                hint="write the store with the PyTorch teacher (`--runtime torch`)",
            )
        features = (getattr(model.model, "preprocess", None) or model.model.tokenize)(
            list(teacher.pipeline(sample))
        )
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in features]
        tensors = tuple(features[n] for n in names)
        path = root / (_key(teacher, ["embedding"], tensors) + ".onnx")
        if not path.is_file():
            out = OUT.format("embedding")
            axes = {n: {0: "batch", 1: "tokens"} for n in names} | {out: {0: "batch"}}
            _export(_SentenceGraph(model, names), tensors, path, names, [out], axes)
        graph = OnnxModel(path, threads, providers)
        ort_model: nn.Module = OnnxSentenceEncoder(model, graph)
        return Teacher(ort_model, outputs=teacher.outputs, pipeline=teacher.pipeline)
    if not isinstance(sample, torch.Tensor):
        raise ConfigError(
            f"--runtime onnx exports teachers whose view is a tensor (or sentence-transformers "
            f"text teachers); this one reads a {type(sample).__name__}",
            hint="write the store with the PyTorch teacher (`--runtime torch`)",
        )
    sample = sample.cpu()
    path = root / (_key(teacher, keys, (sample,)) + ".onnx")
    if not path.is_file():
        outs = [OUT.format(key) for key in keys]
        axes = {"input": {0: "batch"}} | {out: {0: "batch"} for out in outs}
        _export(_KnowledgeGraph(teacher, keys), (sample,), path, ["input"], outs, axes)
    graph = OnnxModel(path, threads, providers)
    return Teacher(graph, outputs={key: OUT.format(key) for key in keys})


def _key(teacher: Teacher, keys: Sequence[str], inputs: Sequence[torch.Tensor]) -> str:
    """The cache name of the graph of ``teacher``: weights, structure, keys, input kinds."""
    return digest(
        EXPORT_VERSION,
        weights_digest(teacher),
        repr(teacher),  # the structure (layers, their settings) and the input pipeline
        list(keys),
        [(t.dim(), str(t.dtype)) for t in inputs],
        torch.__version__,
        OPSET,
    )


@torch.no_grad()
def measure_parity(
    reference: Teacher,
    candidate: Teacher,
    dataset: Any,
    keys: Sequence[str],
    *,
    examples: int = PARITY_EXAMPLES,
    batch_size: int = 64,
    atol: float = ATOL,
) -> dict[str, Any]:
    """``candidate`` against ``reference`` on up to ``examples`` real examples of ``dataset``
    (spread over it): ``{"examples", "parity": {key: max |difference|}, "tolerance": {key:
    atol * max(1, max |reference|)}}``."""
    n = len(dataset)
    indices = sorted(set(np.linspace(0, n - 1, min(examples, n)).round().astype(int).tolist()))
    device = next(iter(reference.parameters()), torch.empty(0)).device
    diff = dict.fromkeys(keys, 0.0)
    scale = dict.fromkeys(keys, 1.0)
    for start in range(0, len(indices), batch_size):
        view = _batch(dataset, indices[start : start + batch_size])
        ref = reference(to_device(view, device))
        got = candidate(view)
        for key in keys:
            a, b = ref[key].float().cpu(), got[key].float().cpu()
            if a.shape != b.shape:
                raise ConfigError(
                    f"the ONNX Runtime teacher's {key!r} has shape {tuple(b.shape)}, the PyTorch "
                    f"teacher's {tuple(a.shape)}",
                    hint="write the store with the PyTorch teacher (`--runtime torch`)",
                )
            diff[key] = max(diff[key], float((a - b).abs().max()) if a.numel() else 0.0)
            scale[key] = max(scale[key], float(a.abs().max()) if a.numel() else 0.0)
    return {
        "examples": len(indices),
        "parity": diff,
        "tolerance": {key: atol * scale[key] for key in keys},
    }


def runtime_teacher(
    teacher: Teacher,
    dataset: Any,
    keys: Sequence[str],
    *,
    threads: int | None = None,
    cache: Path | None = None,
    examples: int = PARITY_EXAMPLES,
) -> tuple[Teacher, dict[str, Any]]:
    """``teacher`` in ONNX Runtime, checked against itself on ``dataset``; returns it and its
    record (``name``, ``graph_sha256``, ``detail``, ``examples``, ``parity``, ``tolerance``).
    A difference above tolerance is a ConfigError naming the key."""
    ort = require("onnxruntime", "the ONNX Runtime teacher (--runtime onnx)", ONNX_HINT)
    device = next(iter(teacher.parameters()), torch.empty(0)).device
    providers = [CPU]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    sample = _batch(dataset, range(min(2, len(dataset))))
    converted = onnx_teacher(
        teacher, keys, sample, threads=threads, providers=providers, cache=cache
    )
    teacher.to(device)  # onnx_teacher exported it on the CPU
    measured = measure_parity(teacher, converted, dataset, keys, examples=examples)
    over = [k for k in keys if measured["parity"][k] > measured["tolerance"][k]]
    if over:
        shown = ", ".join(
            f"{k}: {measured['parity'][k]:.3g} > {measured['tolerance'][k]:.3g}" for k in over
        )
        raise ConfigError(
            f"the ONNX Runtime teacher differs from the PyTorch teacher beyond tolerance on "
            f"{measured['examples']} examples of the data ({shown})",
            hint="write the store with the PyTorch teacher (`--runtime torch`, the default); "
            "the exported graph does not compute what the teacher does",
        )
    graph = _graph_of(converted)
    record = {
        "name": "onnx",
        "graph_sha256": sha256_file(graph.path),
        "detail": f"onnxruntime {ort.__version__}, torch.onnx (dynamo=False, opset {OPSET}), "
        f"{graph.threads} threads, {graph.providers[0]}",
        **measured,
    }
    return converted, record


def _graph_of(teacher: Teacher) -> OnnxModel:
    model = teacher.model
    return model if isinstance(model, OnnxModel) else model.graph  # type: ignore[return-value]
