"""Cosine geometry of embedding matrices (NumPy), shared by every suite that compares
embeddings: unit rows, paired cosines, cosine matrices."""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row (e.g. a text with no known token) stays zero,
    so its cosine with anything is 0 rather than NaN."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row ``i`` of ``a`` with row ``i`` of ``b``."""
    return np.sum(unit_rows(a) * unit_rows(b), axis=1)


def cosine_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """All cosine similarities between the rows of ``a`` and the rows of ``b`` (default ``a``)."""
    ua = unit_rows(a)
    return ua @ (ua if b is None else unit_rows(b)).T
