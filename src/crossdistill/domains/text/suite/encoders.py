"""Text encoders for the evaluation suite: anything that turns a list of strings into vectors.

:func:`load_encoder` accepts four kinds of model, all wrapped as a :class:`TextEncoder`:

==========================  ======================================  ==========================
kind                        recognised by                           texts are cut at
==========================  ======================================  ==========================
crossdistill run directory  ``student.json``                        the student's own
                                                                    ``max_length`` (tokens)
model2vec directory         ``config.json`` + ``tokenizer.json`` +  the model's ``max_length``
                            ``model.safetensors`` holding           (config; 512 tokens by
                            ``embeddings`` (what model2vec's        default)
                            ``save_pretrained`` writes)
sentence-transformers dir   ``modules.json``                        the model's
                                                                    ``max_seq_length``
registered model name       ``crossdistill.models.registry.MODELS`` the factory's default
                            (``minilm``, ...) mapping list[str] to  (``minilm``: 128 tokens)
                            ``(B, D)``
==========================  ======================================  ==========================

A model2vec directory also holds a ``modules.json`` (model2vec writes one so that
sentence-transformers can load it too); it is read with model2vec, its own library. Before any
tokenizer sees them, texts are cut at :data:`MAX_CHARS` characters, far past every model's token
window, so that one pathological input cannot stall tokenization. Empty strings are encoded like
any other text (a static model gives the zero vector). Encoding runs in eval mode under
``torch.no_grad()``, in batches, and returns rows in the order of the input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from crossdistill.errors import ConfigError, DataError, did_you_mean
from crossdistill.models.hub.sentence_transformer import load_sentence_transformer
from crossdistill.models.registry import MODELS, build_model
from crossdistill.runs import Run

MAX_CHARS = 100_000
KINDS_HINT = (
    "give a crossdistill run directory (with student.json), a sentence-transformers directory "
    "(with modules.json), a model2vec directory (config.json, tokenizer.json, "
    "model.safetensors), or a registered text model name such as 'minilm'"
)


@runtime_checkable
class TextEncoder(Protocol):
    """``encode(texts) -> (n, dim)`` float32 embeddings, one row per text, in order."""

    name: str

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray: ...


def check_texts(texts: Any, where: str = "encoder") -> list[str]:
    """``texts`` as a list of str; a lone string or a non-string item is a DataError."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise DataError(
            f"{where} takes a list of strings, got {type(texts).__name__}",
            hint="wrap a single sentence in a list",
        )
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(
            f"{where}: item {bad} is a {type(texts[bad]).__name__}, not a str",
            hint="decode bytes first (e.g. text.decode('utf-8', errors='replace'))",
        )
    return list(texts)


class BatchedEncoder:
    """Base of the encoders here: input checks, the character cap, batching, no-grad.

    Subclasses implement ``_encode_batch(texts) -> array-like (len(texts), D)``.
    """

    def __init__(self, name: str, dim: int | None = None) -> None:
        self.name = name
        self._dim = dim

    @property
    def dim(self) -> int:
        """Embedding width (found by encoding one text when the model does not say)."""
        if self._dim is None:
            self._dim = int(self._encode_batch(["a"]).shape[1])
        return self._dim

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """``(len(texts), dim)`` float32 embeddings of ``texts``, in order."""
        texts = [t[:MAX_CHARS] for t in check_texts(texts, self.name)]
        if int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = texts[start : start + batch_size]
                out = self._encode_batch(batch)
                if isinstance(out, torch.Tensor):
                    out = out.detach().float().cpu().numpy()
                out = np.asarray(out, dtype=np.float32)
                if out.ndim != 2 or out.shape[0] != len(batch):
                    raise DataError(
                        f"{self.name} returned shape {tuple(out.shape)} for {len(batch)} texts",
                        hint="a text encoder must map a list of n strings to an (n, D) array",
                    )
                parts.append(out)
        result = np.concatenate(parts)
        self._dim = int(result.shape[1])
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class TorchEncoder(BatchedEncoder):
    """A torch module ``forward(list[str])``; ``select`` picks the (B, D) tensor from its output."""

    def __init__(
        self,
        module: nn.Module,
        name: str,
        select: Callable[[Any], torch.Tensor] = lambda out: out,
        device: str = "cpu",
    ) -> None:
        super().__init__(name, getattr(module, "dim", None))
        self.module = module.to(device).eval()
        self.select = select

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        out = self.select(self.module(texts))
        if not isinstance(out, torch.Tensor):
            raise ConfigError(
                f"{self.name} returned a {type(out).__name__}, not a tensor",
                hint="only models mapping list[str] to a (B, D) tensor are text encoders",
            )
        return out.detach().float().cpu().numpy()


class SentenceTransformerEncoder(BatchedEncoder):
    """A ``SentenceTransformer`` through its own ``encode`` (its truncation and pooling)."""

    def __init__(self, model: Any, name: str) -> None:
        dimension = getattr(model, "get_embedding_dimension", None) or getattr(
            model, "get_sentence_embedding_dimension", None
        )
        super().__init__(name, dimension() if dimension else None)
        self.model = model.eval()

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False
        )


class Model2VecEncoder(BatchedEncoder):
    """A ``model2vec.StaticModel`` (its own tokenizer, truncation and pooling)."""

    def __init__(self, model: Any, name: str) -> None:
        super().__init__(name, int(model.dim))
        self.model = model

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=len(texts), show_progress_bar=False, use_multiprocessing=False
        )


# ------------------------------------------------------------------------------ the kinds


def _is_run(path: Path) -> bool:
    return Run(path).student_json.is_file()


def _load_run(path: Path, device: str) -> BatchedEncoder:
    run = Run(path)
    outputs = run.student_meta().get("outputs", [])
    student = run.student()
    tower = getattr(student.model, "text_encoder", None)
    if tower is not None:  # a dual encoder: texts go through its tower
        return TorchEncoder(tower, str(path), device=device)
    if "embedding" not in outputs:
        raise ConfigError(
            f"the student of {path} emits {list(outputs)}, not an 'embedding'",
            hint="text evaluation takes students whose recipe has `outputs: [embedding]`, "
            "or dual encoders",
        )
    return TorchEncoder(student, str(path), select=lambda k: k["embedding"], device=device)


def _is_model2vec(path: Path) -> bool:
    needed = ("config.json", "tokenizer.json", "model.safetensors")
    if not all((path / name).is_file() for name in needed):
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path / "model.safetensors"), framework="numpy") as f:
            return "embeddings" in f.keys()  # noqa: SIM118  (safe_open is not a Mapping)
    except Exception:  # not a safetensors file: not a model2vec model either
        return False


def _load_model2vec(path: Path, device: str) -> BatchedEncoder:
    try:
        from model2vec import StaticModel
    except ImportError:
        raise ConfigError(
            f"{path} is a model2vec model, and model2vec is not installed",
            hint="pip install model2vec",
        ) from None
    try:
        model = StaticModel.from_pretrained(path)
    except Exception as exc:  # a broken folder raises anything from OSError to KeyError
        raise ConfigError(
            f"cannot load the model2vec model in {path}: {type(exc).__name__}: {exc}",
            hint="check that config.json, tokenizer.json and model.safetensors are complete",
        ) from None
    return Model2VecEncoder(model, str(path))


def _is_sentence_transformer(path: Path) -> bool:
    return (path / "modules.json").is_file()


def _load_sentence_transformer(path: Path, device: str) -> BatchedEncoder:

    return SentenceTransformerEncoder(load_sentence_transformer(path, device), str(path))


# Tried in this order: a model2vec folder also has a modules.json.
DIRECTORY_KINDS: tuple[tuple[str, Callable[[Path], bool], Callable[[Path, str], Any]], ...] = (
    ("crossdistill run", _is_run, _load_run),
    ("model2vec", _is_model2vec, _load_model2vec),
    ("sentence-transformers", _is_sentence_transformer, _load_sentence_transformer),
)


def _load_registered(name: str, device: str) -> BatchedEncoder:

    module = build_model(name, {"device": device} if MODELS.accepts(name, "device") else {})
    encoder = TorchEncoder(module, name, device=device)
    try:
        with torch.no_grad():
            probe = module(["a probe sentence"])
    except Exception as exc:
        raise ConfigError(
            f"model {name!r} does not take a list of strings ({type(exc).__name__}: {exc})",
            hint=KINDS_HINT,
        ) from None
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2:
        raise ConfigError(
            f"model {name!r} does not map list[str] to a (B, D) tensor "
            f"(it returned {type(probe).__name__})",
            hint=KINDS_HINT,
        )
    encoder._dim = int(probe.shape[1])
    return encoder


def load_encoder(spec: str | Path, device: str = "cpu") -> BatchedEncoder:
    """A :class:`TextEncoder` for ``spec``: a model directory of a known kind or a model name."""
    path = Path(spec)
    if path.is_dir():
        for _, matches, load in DIRECTORY_KINDS:
            if matches(path):
                return load(path, device)
        raise ConfigError(
            f"{path} is not a model directory the text suite can read "
            f"(kinds: {', '.join(k for k, _, _ in DIRECTORY_KINDS)})",
            hint=KINDS_HINT,
        )

    if str(spec) not in MODELS:
        raise ConfigError(
            f"{str(spec)!r} is neither a directory nor a registered model name",
            hint=f"{KINDS_HINT}; {did_you_mean(str(spec), MODELS.names())}",
        )
    return _load_registered(str(spec), device)
