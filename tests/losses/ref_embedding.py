"""NumPy float64 references for the embedding and ranking losses (cosine, sim_mse, infonce,
margin_mse, listwise_kl), written from the formulas in their docstrings one sample (one pair,
one candidate) at a time with explicit loops, so that they share no code with the losses, and
the cases ``benchmarks/losses.py`` runs them at (``BENCH_CASES``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from bench_case import Arrays, BenchCase


def unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(float(np.sum(v * v)))


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max()
    return z - m - math.log(float(np.sum(np.exp(z - m))))


def kl(log_p: np.ndarray, log_q: np.ndarray) -> float:
    return float(np.sum(np.exp(log_p) * (log_p - log_q)))


def rows(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)


def ref_cosine(s: np.ndarray, t: np.ndarray) -> float:
    """``mean (1 − cos)`` over every vector of the last dimension."""
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    terms = [
        1 - float(np.dot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b))
        for a, b in zip(s, t, strict=True)
    ]
    return sum(terms) / len(terms)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    x = rows(x)
    b = x.shape[0]
    c = np.empty((b, b))
    for i in range(b):
        for j in range(b):
            c[i, j] = float(np.dot(unit(x[i]), unit(x[j])))
    return c


def ref_sim_mse(s: np.ndarray, t: np.ndarray, exclude_diagonal: bool = True) -> float:
    c_s, c_t = cosine_matrix(s), cosine_matrix(t)
    b = c_s.shape[0]
    total, count = 0.0, 0
    for i in range(b):
        for j in range(b):
            if exclude_diagonal and i == j:
                continue
            total += (c_s[i, j] - c_t[i, j]) ** 2
            count += 1
    return total / count if count else 0.0


def ref_infonce(
    s: np.ndarray, t: np.ndarray, temperature: float = 0.05, symmetric: bool = False
) -> float:
    s, t = rows(s), rows(t)
    b = s.shape[0]
    z = np.array(
        [[np.dot(unit(s[i]), unit(t[j])) / temperature for j in range(b)] for i in range(b)]
    )
    by_row = -sum(log_softmax(z[i])[i] for i in range(b)) / b
    if not symmetric:
        return float(by_row)
    by_col = -sum(log_softmax(z[:, j])[j] for j in range(b)) / b
    return float((by_row + by_col) / 2)


def ref_margin_mse_scores(s: np.ndarray, t: np.ndarray) -> float:
    """Hofstätter et al. Eq.: mean over (query, negative) of squared margin differences."""
    total, count = 0.0, 0
    for i in range(s.shape[0]):
        for k in range(1, s.shape[1]):
            total += ((s[i, 0] - s[i, k]) - (t[i, 0] - t[i, k])) ** 2
            count += 1
    return total / count


def similarity_matrix(x: np.ndarray, similarity: str) -> np.ndarray:
    x = rows(x)
    if similarity == "cosine":
        return cosine_matrix(x)
    b = x.shape[0]
    return np.array([[float(np.dot(x[i], x[j])) for j in range(b)] for i in range(b)])


def ref_margin_mse_embeddings(s: np.ndarray, t: np.ndarray, similarity: str = "cosine") -> float:
    """Teacher-mined in-batch triples: p(i) the teacher's nearest other row, the rest negatives."""
    ss, tt = similarity_matrix(s, similarity), similarity_matrix(t, similarity)
    b = ss.shape[0]
    total, count = 0.0, 0
    for i in range(b):
        others = [j for j in range(b) if j != i]
        p = max(others, key=lambda j: tt[i, j])
        for k in others:
            if k == p:
                continue
            total += ((ss[i, p] - ss[i, k]) - (tt[i, p] - tt[i, k])) ** 2
            count += 1
    return total / count if count else 0.0


def ref_listwise_kl_scores(s: np.ndarray, t: np.ndarray, temperature: float = 1.0) -> float:
    b = s.shape[0]
    total = sum(
        kl(log_softmax(t[i] / temperature), log_softmax(s[i] / temperature)) for i in range(b)
    )
    return total / b * temperature**2


def ref_listwise_kl_embeddings(
    s: np.ndarray, t: np.ndarray, temperature: float = 1.0, similarity: str = "cosine"
) -> float:
    ss, tt = similarity_matrix(s, similarity), similarity_matrix(t, similarity)
    b = ss.shape[0]
    if b < 2:
        return 0.0
    total = 0.0
    for i in range(b):
        keep = [j for j in range(b) if j != i]
        total += kl(log_softmax(tt[i, keep] / temperature), log_softmax(ss[i, keep] / temperature))
    return total / b * temperature**2


# --------------------------------------------------------------------------------------------
# Bench cases: one step of distilling all-MiniLM-L6-v2 (384-d) into a small text student,
# batch 256, with a partly trained student, so the values are those of a run, not of unrelated
# vectors: where the loss needs equal widths (cosine, infonce) the student's 384-d output after
# its learned projector, i.e. in the teacher's space, is the teacher's embedding plus noise
# (2.5 × its scale: cosine 0.37 with its teacher row, 0 ± 0.05 with the others, so InfoNCE at
# τ = 0.05 is about 0.3, not saturated); where widths may differ (sim_mse, and margin_mse /
# listwise_kl mining the batch) its own 240-d embedding is a random linear map of the teacher's
# (which roughly keeps the batch's similarities) plus noise. Score mode: 64 queries × 8
# candidates (positive first), the student's scores the teacher's plus noise.
# --------------------------------------------------------------------------------------------

BATCH, TEACHER_DIM, STUDENT_DIM = 256, 384, 240
QUERIES, CANDIDATES = 64, 8
EMB, SC = "embedding", "scores"


def _make_projected(small: tuple[int, int]):
    """Student already in the teacher's space (after its projector): teacher plus noise."""

    def make(rng: np.random.Generator, realistic: bool) -> tuple[Arrays, Arrays, None]:
        b, d = (BATCH, TEACHER_DIM) if realistic else small
        t = rng.standard_normal((b, d))
        return {EMB: t + 2.5 * rng.standard_normal((b, d))}, {EMB: t}, None

    return make


def _make_narrow(small: tuple[int, int, int]):
    """Student of its own width: a random linear map of the teacher plus noise."""

    def make(rng: np.random.Generator, realistic: bool) -> tuple[Arrays, Arrays, None]:
        b, ds, dt = (BATCH, STUDENT_DIM, TEACHER_DIM) if realistic else small
        t = rng.standard_normal((b, dt))
        w = rng.standard_normal((dt, ds)) / math.sqrt(dt)
        return {EMB: t @ w + 0.5 * rng.standard_normal((b, ds))}, {EMB: t}, None

    return make


def _make_scores(rng: np.random.Generator, realistic: bool) -> tuple[Arrays, Arrays, None]:
    q, c = (QUERIES, CANDIDATES) if realistic else (5, 4)
    t = 3 * rng.standard_normal((q, c))  # cross-encoder-like logits
    return {SC: t + rng.standard_normal((q, c))}, {SC: t}, None


def _ref(fn: Callable[[np.ndarray, np.ndarray], float], key: str = EMB):
    return lambda s, t, y, loss: fn(s[key], t[key])


BENCH_CASES: list[BenchCase] = [
    BenchCase(
        loss="cosine",
        params={},
        make=_make_projected((6, 5)),
        reference=_ref(ref_cosine),
    ),
    BenchCase(
        loss="sim_mse",
        params={},
        make=_make_narrow((6, 4, 9)),
        reference=_ref(ref_sim_mse),
    ),
    BenchCase(
        loss="infonce",
        params={"temperature": 0.05},
        make=_make_projected((7, 6)),
        reference=_ref(lambda s, t: ref_infonce(s, t, 0.05)),
    ),
    BenchCase(
        loss="infonce",
        params={"temperature": 0.05, "symmetric": True},
        make=_make_projected((7, 6)),
        reference=_ref(lambda s, t: ref_infonce(s, t, 0.05, symmetric=True)),
        label="infonce-symmetric",
    ),
    BenchCase(
        loss="margin_mse",
        params={"student": SC, "teacher": SC},
        make=_make_scores,
        reference=_ref(ref_margin_mse_scores, SC),
        label="margin_mse-scores",
    ),
    BenchCase(
        loss="margin_mse",
        params={},
        make=_make_narrow((6, 4, 9)),
        reference=_ref(ref_margin_mse_embeddings),
        label="margin_mse-embeddings",
    ),
    BenchCase(
        loss="listwise_kl",
        params={"student": SC, "teacher": SC},
        make=_make_scores,
        reference=_ref(ref_listwise_kl_scores, SC),
        label="listwise_kl-scores",
    ),
    BenchCase(
        loss="listwise_kl",
        params={"temperature": 0.05},
        make=_make_narrow((6, 4, 9)),
        reference=_ref(lambda s, t: ref_listwise_kl_embeddings(s, t, 0.05)),
        label="listwise_kl-embeddings",
    ),
]
