"""NumPy float64 references for the logit losses, written straight from the papers' formulas one
sample at a time, and their bench cases (torchdistill 1.1.5 has KD, LogitStdKD and DIST; it has
no multi-label KD like bce_kd)."""

from __future__ import annotations

import numpy as np

# tests/losses is on sys.path under pytest (no __init__.py, rootdir-relative "prepend" import),
# and the benchmark puts it there too.
from bench_case import Arrays, BenchCase


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def ref_ce(s, t, y, label_smoothing=0.0):
    n, c = s.shape
    total = 0.0
    for i in range(n):
        q = np.full(c, label_smoothing / c)
        q[y[i]] += 1 - label_smoothing
        total += -np.sum(q * np.log(np_softmax(s[i])))
    return total / n


def ref_kd(s, t, y=None, temperature=4.0):
    kl = [
        np_kl(np_softmax(t[i] / temperature), np_softmax(s[i] / temperature)) for i in range(len(s))
    ]
    return temperature**2 * np.mean(kl)


def ref_dkd(s, t, y, alpha=1.0, beta=8.0, temperature=4.0):
    losses = []
    for i in range(len(s)):
        ps, pt = np_softmax(s[i] / temperature), np_softmax(t[i] / temperature)
        b_s = np.array([ps[y[i]], 1 - ps[y[i]]])
        b_t = np.array([pt[y[i]], 1 - pt[y[i]]])
        others = np.arange(len(ps)) != y[i]
        hat_s, hat_t = ps[others] / ps[others].sum(), pt[others] / pt[others].sum()
        losses.append(alpha * np_kl(b_t, b_s) + beta * np_kl(hat_t, hat_s))
    return temperature**2 * np.mean(losses)


def ref_nkd(s, t, y, temperature=1.0, gamma=1.5):
    losses = []
    for i in range(len(s)):
        big_s, big_t = np_softmax(s[i]), np_softmax(t[i])
        target_part = -big_t[y[i]] * np.log(big_s[y[i]])
        ps, pt = np_softmax(s[i] / temperature), np_softmax(t[i] / temperature)
        others = np.arange(len(ps)) != y[i]
        hat_s, hat_t = ps[others] / ps[others].sum(), pt[others] / pt[others].sum()
        non_target = -np.sum(hat_t * np.log(hat_s))
        losses.append(target_part + gamma * temperature**2 * non_target)
    return np.mean(losses)


def ref_logit_std_kd(s, t, y=None, temperature=2.0, eps=1e-7):
    def z_score(z):
        return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, ddof=1, keepdims=True) + eps)

    return ref_kd(z_score(s), z_score(t), temperature=temperature)


def ref_dist(s, t, y=None, beta=1.0, gamma=1.0, temperature=1.0, eps=None):
    ys = np.stack([np_softmax(r / temperature) for r in s])
    yt = np.stack([np_softmax(r / temperature) for r in t])
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(len(s))])
    intra = 1 - np.mean([np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(s.shape[1])])
    return temperature**2 * (beta * inter + gamma * intra)


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(x / 2))  # = 1 / (1 + e^-x), without overflow


def ref_bce_kd(
    s,
    t,
    y=None,
    temperature=1.0,
    pos_weight=1.0,
    mask=None,
    teacher_probabilities=False,
):
    """τ² · Σ_e m_e ℓ_e / Σ_e m_e, ℓ_e = -[w p log q + (1-p) log(1-q)], q = σ(s/τ), one sample
    (first axis) at a time. The teacher's probabilities at τ are σ(t/τ) from logits, and
    p^(1/τ) / (p^(1/τ) + (1-p)^(1/τ)) from probabilities (the same, written without the logit)."""
    total, count = 0.0, 0.0
    for i in range(len(s)):
        if teacher_probabilities:
            a, b = t[i] ** (1 / temperature), (1 - t[i]) ** (1 / temperature)
            p = a / (a + b)
        else:
            p = np_sigmoid(t[i] / temperature)
        x = s[i] / temperature
        # log σ(x) = -log(1 + e^-x), log(1 - σ(x)) = -log(1 + e^x)
        log_q, log_not_q = -np.logaddexp(0, -x), -np.logaddexp(0, x)
        per_element = -(pos_weight * p * log_q + (1 - p) * log_not_q)
        m = np.ones_like(x) if mask is None else np.broadcast_to(mask[i] != 0, x.shape)
        total += float(np.sum(per_element * m))
        count += float(np.sum(m))
    return temperature**2 * total / max(count, 1.0)


# ---------------------------------------------------------------------------------------------
# Bench cases: CIFAR-100-like logits, batch 128 × 100 classes; AudioSet-like multi-label scores,
# 527 classes (batch 64 per clip, or 16 clips × 100 frames with padded frames masked)
# ---------------------------------------------------------------------------------------------


def ref_bce(s, y, pos_weight=1.0):
    """mean_e -[w y log σ(s) + (1 - y) log(1 - σ(s))] over every element; ``y`` may lack the
    logits' trailing 1 (frame labels ``(B, N)`` of ``(B, N, 1)`` logits)."""
    y = np.reshape(y, s.shape)
    log_q, log_not_q = -np.logaddexp(0, -s), -np.logaddexp(0, s)
    return float(np.mean(-(pos_weight * y * log_q + (1 - y) * log_not_q)))


def _make(rng: np.random.Generator, realistic: bool) -> tuple[Arrays, Arrays, np.ndarray]:
    b, c = (128, 100) if realistic else (8, 10)
    s, t = rng.normal(0, 3, (b, c)), rng.normal(0, 3, (b, c))
    return {"logits": s}, {"logits": t}, rng.integers(0, c, b)


def _ref(fn, **params):
    def reference(s: Arrays, t: Arrays, y, loss) -> float:
        return fn(s["logits"], t["logits"], y, **params)

    return reference


def _make_multilabel(frames: bool):
    def make(rng: np.random.Generator, realistic: bool) -> tuple[Arrays, Arrays, None]:
        if frames:
            shape = (16, 100, 527) if realistic else (4, 6, 5)
        else:
            shape = (64, 527) if realistic else (8, 10)
        # multi-label teachers are mostly confident negatives: logits around -4
        s, t = rng.normal(-4, 3, shape), rng.normal(-4, 3, shape)
        teacher = {"logits": t}
        if frames:  # each clip's last frames are padding
            lengths = rng.integers(shape[1] // 2, shape[1] + 1, shape[0])
            teacher["mask"] = (np.arange(shape[1])[None, :] < lengths[:, None])[..., None] * 1.0
        return {"logits": s}, teacher, None

    return make


def _make_frame_labels(
    rng: np.random.Generator, realistic: bool
) -> tuple[Arrays, Arrays, np.ndarray]:
    # voice activity: one logit per 32 ms frame of 5 s clips, a 0/1 label per frame
    b, n = (32, 160) if realistic else (4, 12)
    return {"logits": rng.normal(0, 3, (b, n, 1))}, {}, (rng.random((b, n)) < 0.55) * 1.0


def _ref_bce(s: Arrays, t: Arrays, y, loss) -> float:
    return ref_bce(s["logits"], y, pos_weight=2.0)


def _ref_bce_kd(**params):
    def reference(s: Arrays, t: Arrays, y, loss) -> float:
        return ref_bce_kd(s["logits"], t["logits"], mask=t.get("mask"), **params)

    return reference


def _td(build, scale=lambda value: value):
    """A torchdistill loss (built once, on first use) called on ``{".": {"output": logits}}``."""
    built = []

    def call(s, t, y):
        if not built:
            from torchdistill.losses import mid_level

            built.append(build(mid_level))
        io_s, io_t = {".": {"output": s["logits"]}}, {".": {"output": t["logits"]}}
        return scale(built[0](io_s, io_t))

    return call


_PATH = (".", "output", ".", "output")

BENCH_CASES = [
    BenchCase("ce", {}, _make, _ref(ref_ce)),
    BenchCase(
        "kd",
        {"temperature": 4.0},
        _make,
        _ref(ref_kd, temperature=4.0),
        torchdistill=_td(
            lambda m: m.KDLoss(*_PATH, temperature=4.0, alpha=0.0), lambda v: 16.0 * v
        ),
        td_note="T² × KDLoss(alpha=0) (torchdistill returns the KL without T²)",
    ),
    BenchCase("dkd", {}, _make, _ref(ref_dkd)),
    BenchCase("nkd", {}, _make, _ref(ref_nkd)),
    BenchCase(
        "logit_std_kd",
        {"temperature": 2.0},
        _make,
        _ref(ref_logit_std_kd, temperature=2.0),
        torchdistill=_td(
            lambda m: m.LogitStdKDLoss(*_PATH, temperature=2.0, eps=1e-7, alpha=0.0),
            lambda v: 4.0 * v,
        ),
        td_note="T² × LogitStdKDLoss(alpha=0)",
    ),
    BenchCase(
        "dist",
        {"eps": 1e-20},
        _make,
        _ref(ref_dist, eps=1e-20),
        torchdistill=_td(lambda m: m.DISTLoss(*_PATH, eps=1e-20)),
        td_note="DISTLoss with a negligible eps (the eps placements differ; see the dist docs)",
    ),
    BenchCase(
        "bce_kd", {"temperature": 2.0}, _make_multilabel(False), _ref_bce_kd(temperature=2.0)
    ),
    BenchCase(
        "bce_kd",
        {"temperature": 2.0, "mask": "mask"},
        _make_multilabel(True),
        _ref_bce_kd(temperature=2.0),
        label="bce_kd-frames-mask",
    ),
    BenchCase("bce", {"pos_weight": 2.0}, _make_frame_labels, _ref_bce, label="bce-frames"),
]
