"""model2vec-style initialisation of a static token-embedding table from a sentence encoder.

Tulkens & van Dongen, *model2vec: distill a small fast model from any sentence transformer*
(2024): every vocabulary token is embedded by the teacher as if it were a sentence, the vectors
are reduced with PCA, and each token's row is scaled by a SIF weight
(Arora et al., *A simple but tough-to-beat baseline for sentence embeddings*, 2017) whose word
frequency is estimated from the token's rank with Zipf's law. A static student that averages
such rows starts close to the teacher; distillation then trains it further.

Here the teacher is any registered text model (``list[str] -> (B, D)``) and the tokens are
those of the *student's* tokenizer, which need not be the teacher's: a token's surface string
(``##ing`` -> ``ing``, ``▁the`` -> ``the``, byte-level ``Ġthe`` -> ``the``) is what the teacher
embeds. The result is cached on disk, since it costs a teacher pass over the whole vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill._util.files import write_atomic
from crossdistill._util.hashing import weights_digest
from crossdistill._util.progress import ProgressBar
from crossdistill.errors import ConfigError, DataError, UnknownNameError
from crossdistill.models.registry import build_model

log = logging.getLogger(__name__)

CACHE_ENV = "CROSSDISTILL_CACHE"
CACHE_VERSION = 1  # bump when the computation below changes what a cache entry holds
DEFAULT_SIF = 1e-4  # model2vec's default


def cache_dir() -> Path:
    """``$CROSSDISTILL_CACHE`` or ``~/.cache/crossdistill``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "crossdistill"


def token_surfaces(tokenizer: Any) -> list[str]:
    """The text each token id stands for, in id order, without subword markers.

    The WordPiece/BPE continuation prefix (``##``) and end-of-word suffix are stripped, then
    the tokenizer's decoder undoes metaspace (``▁``) and byte-level (``Ġ``) encoding; special
    tokens keep their literal form (``[UNK]``). A token that is only a marker becomes ``""``.
    """
    model = tokenizer.model
    prefix = getattr(model, "continuing_subword_prefix", None) or ""
    suffix = getattr(model, "end_of_word_suffix", None) or ""
    decoder = tokenizer.decoder
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    out = []
    for i in range(tokenizer.get_vocab_size(with_added_tokens=True)):
        token = tokenizer.id_to_token(i)
        if token is None:  # a hole in the id space
            out.append("")
            continue
        if i not in special:
            if prefix and token.startswith(prefix) and len(token) > len(prefix):
                token = token[len(prefix) :]
            if suffix and token.endswith(suffix) and len(token) > len(suffix):
                token = token[: -len(suffix)]
            if decoder is not None:
                token = decoder.decode([token])
        out.append(token.strip())
    return out


def zipf_sif_weights(n: int, sif_coefficient: float | None) -> np.ndarray:
    """SIF weights ``a / (a + p(w))`` with ``p`` from Zipf's law on the token's rank.

    As in model2vec, the token with id ``i`` is taken to be the ``i+1``-th most frequent, so
    ``p_i ∝ 1 / (i + 2)``; no weighting (all ones) when ``sif_coefficient`` is None.
    """
    if sif_coefficient is None:
        return np.ones(n)
    inv_rank = 1.0 / np.arange(2, n + 2)
    p = inv_rank / inv_rank.sum()
    return sif_coefficient / (sif_coefficient + p)


def pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores (N, k), components (k, D), mean (D,))`` with ``x ≈ mean + scores @ components``.

    Eigen-decomposition of the covariance, largest variance first; each component's sign makes
    its largest-magnitude score positive, so the result does not depend on the solver's signs.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / max(len(x) - 1, 1)
    _, vectors = np.linalg.eigh(cov)
    components = vectors[:, ::-1][:, :k].T
    scores = centred @ components.T
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(k)])
    signs[signs == 0] = 1.0
    return scores * signs, components * signs[:, None], mean


@dataclass
class StaticInit:
    """A table to copy into the embedding and the linear map back to the teacher's space:
    ``teacher vector ≈ mean + table_row @ components`` (up to the row's SIF weight)."""

    table: torch.Tensor  # (V, dim)
    components: torch.Tensor  # (dim, D)
    mean: torch.Tensor  # (D,)

    @property
    def teacher_dim(self) -> int:
        return int(self.components.shape[1])


def _weights_identity(teacher: torch.nn.Module) -> str:

    return weights_digest(teacher)


def cache_key(
    surfaces: Sequence[str],
    teacher: str,
    teacher_params: Mapping[str, Any],
    weights: str,
    dim: int,
    sif_coefficient: float | None,
    use_pca: bool,
) -> str:
    """A hash of everything the result depends on: the tokens' surface strings (what the
    teacher embeds, taken from the tokenizer.json), the teacher (name, params, weights), the
    table width, the SIF coefficient and whether PCA is applied."""
    h = hashlib.sha256()
    h.update("\x00".join(surfaces).encode("utf-8", "surrogatepass"))
    spec = {
        "version": CACHE_VERSION,
        "teacher": teacher,
        "teacher_params": dict(teacher_params),
        "weights": weights,
        "dim": dim,
        "sif": sif_coefficient,
        "pca": use_pca,
    }
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


@torch.inference_mode()
def embed_tokens(
    teacher: torch.nn.Module, surfaces: Sequence[str], batch_size: int = 256, progress: bool = True
) -> np.ndarray:
    """The teacher's embedding of every surface string, ``(len(surfaces), D)`` float64.

    Strings are sorted by length so that a batch holds sequences of similar length (as model2vec
    does); the output is in the input order.
    """

    order = sorted(range(len(surfaces)), key=lambda i: (len(surfaces[i]), i))
    out: np.ndarray | None = None
    with ProgressBar(progress, "teacher → token table", len(order), "tokens") as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            vectors = teacher([surfaces[i] for i in idx])
            ok = isinstance(vectors, torch.Tensor) and vectors.ndim == 2
            if not ok or len(vectors) != len(idx):
                raise DataError(
                    f"static_embedding init: the teacher returned {_describe(vectors)} for "
                    f"{len(idx)} texts; it must return one vector per text, (B, D)",
                    hint="init_from must name a text model mapping list[str] -> (B, D)",
                )
            if out is None:
                out = np.zeros((len(surfaces), vectors.shape[1]), dtype=np.float64)
            out[idx] = vectors.detach().double().cpu().numpy()
            bar.advance(len(idx))
    assert out is not None
    return np.nan_to_num(out)  # a teacher NaN for an odd token must not poison the PCA


def _describe(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def compute_init(
    vectors: np.ndarray, dim: int, sif_coefficient: float | None, use_pca: bool
) -> StaticInit:
    """PCA to ``dim`` dimensions, then the rows scaled by their Zipf/SIF weight (model2vec).

    Without PCA the table is the teacher's vectors themselves (``dim`` must then equal D).
    """
    n, d = vectors.shape
    weights = zipf_sif_weights(n, sif_coefficient)[:, None]
    if use_pca:
        scores, components, mean = pca(vectors, dim)
    else:
        scores, components, mean = vectors, np.eye(d), np.zeros(d)
    return StaticInit(
        table=torch.from_numpy(scores * weights).float(),
        components=torch.from_numpy(components).float(),
        mean=torch.from_numpy(mean).float(),
    )


def _check(dim: int, teacher_dim: int, use_pca: bool, teacher: str) -> None:
    if dim > teacher_dim or (not use_pca and dim != teacher_dim):
        need = f"≤ {teacher_dim}" if use_pca else f"= {teacher_dim} (no PCA)"
        raise ConfigError(
            f"static_embedding: dim={dim} but init_from={teacher!r} gives {teacher_dim}-d "
            f"vectors; dim must be {need}",
            hint=f"set dim to at most {teacher_dim}" + ("" if use_pca else " or init_pca: true"),
        )


def _read_cache(path: Path) -> StaticInit | None:
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        tensors = load_file(path)
        found = StaticInit(tensors["table"], tensors["components"], tensors["mean"])
        ok = (
            found.table.ndim == 2
            and found.components.shape == (found.table.shape[1], found.mean.shape[0])
            and bool(torch.isfinite(found.table).all())
        )
    except Exception as exc:  # a truncated or foreign file: safetensors raises several kinds
        log.warning("static_embedding init cache %s is unreadable (%s): recomputing it", path, exc)
        return None
    if not ok:
        log.warning("static_embedding init cache %s holds wrong shapes: recomputing it", path)
        return None
    return found


def _write_cache(path: Path, init: StaticInit, metadata: dict[str, str]) -> None:
    """Temporary file, fsync, rename: a crash never leaves a half-written cache entry."""
    from safetensors.torch import save

    tensors = {"table": init.table, "components": init.components, "mean": init.mean}
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    try:
        write_atomic(path, data)
    except OSError as exc:  # a read-only or full cache: the init itself is still good
        log.warning("could not write static_embedding init cache %s: %s", path, exc)


def init_from_teacher(
    tokenizer: Any,
    teacher: str,
    dim: int,
    sif_coefficient: float | None = DEFAULT_SIF,
    use_pca: bool = True,
    teacher_params: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    progress: bool = True,
    cache: Path | None = None,
) -> StaticInit:
    """The model2vec initialisation of a ``tokenizer``'s table from the registered model
    ``teacher``, read from the cache when it was computed before.

    The teacher is built (to identify its weights) but only called on a cache miss.
    """

    if sif_coefficient is not None and not 0 < sif_coefficient < 1:
        raise ConfigError(
            f"static_embedding: sif_coefficient must be in (0, 1) or null, got {sif_coefficient}",
            hint="model2vec uses 1e-4; null turns the weighting off",
        )
    params = dict(teacher_params or {})
    try:
        model = build_model(teacher, params).eval()
    except UnknownNameError as exc:
        raise ConfigError(
            f"static_embedding: init_from={teacher!r} is not a registered model", hint=exc.hint
        ) from None
    surfaces = token_surfaces(tokenizer)
    key = cache_key(
        surfaces, teacher, params, _weights_identity(model), dim, sif_coefficient, use_pca
    )
    path = (cache or cache_dir()) / "static_init" / f"{key}.safetensors"
    found = _read_cache(path)
    if found is not None and found.table.shape == (len(surfaces), dim):
        _check(dim, found.teacher_dim, use_pca, teacher)
        return found
    model = model.to("cpu")
    vectors = embed_tokens(model, surfaces, batch_size, progress)
    _check(dim, vectors.shape[1], use_pca, teacher)
    init = compute_init(vectors, dim, sif_coefficient, use_pca)
    _write_cache(path, init, {"teacher": teacher, "dim": str(dim), "sif": str(sif_coefficient)})
    return init
