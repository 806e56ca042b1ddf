"""Classification metrics against NumPy / SciPy / scikit-learn and hand-worked examples."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy
from sklearn.metrics import accuracy_score, top_k_accuracy_score

from crossdistill.errors import ShapeError
from crossdistill.evaluate import (
    MetricAccumulator,
    accuracy,
    agreement,
    classification_metrics,
    expected_calibration_error,
    kl_divergence,
    topk_accuracy,
)

N, C = 257, 10


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    student = rng.normal(scale=2.0, size=(N, C))
    teacher = student + rng.normal(scale=1.5, size=(N, C))  # correlated, so agreement is mid-range
    target = np.where(rng.random(N) < 0.6, teacher.argmax(1), rng.integers(0, C, N))
    return student, teacher, target


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


def np_ece(logits: np.ndarray, target: np.ndarray, n_bins: int) -> float:
    """Guo et al. (2017) ECE with an explicit loop over bins (lower, upper]."""
    p = softmax(logits, axis=1)
    conf, correct = p.max(1), (p.argmax(1) == target)
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += abs(correct[m].mean() - conf[m].mean()) * m.mean()
    return ece


# --- against reference implementations ------------------------------------------------------


def test_accuracy_vs_sklearn(data):
    s, _, y = data
    assert accuracy(t(s), t(y)) == pytest.approx(accuracy_score(y, s.argmax(1)), abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_topk_vs_sklearn_and_numpy(data, k):
    s, _, y = data
    ref = np.mean([y[i] in np.argsort(-s[i])[:k] for i in range(N)])
    got = topk_accuracy(t(s), t(y), k)
    assert got == pytest.approx(ref, abs=1e-12)
    assert got == pytest.approx(top_k_accuracy_score(y, s, k=k, labels=range(C)), abs=1e-12)


def test_agreement_vs_numpy(data):
    s, te, _ = data
    ref = np.mean(s.argmax(1) == te.argmax(1))
    assert 0.2 < ref < 0.9
    assert agreement(t(s), t(te)) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 4.0])
def test_kl_vs_scipy(data, temperature):
    s, te, _ = data
    pt, ps = softmax(te / temperature, axis=1), softmax(s / temperature, axis=1)
    ref = np.mean([entropy(pt[i], ps[i]) for i in range(N)])  # entropy(p, q) = KL(p || q)
    assert kl_divergence(t(s), t(te), temperature) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_ece_vs_numpy(data, n_bins):
    s, _, y = data
    got = expected_calibration_error(t(s), t(y), n_bins)
    assert got == pytest.approx(np_ece(s, y, n_bins), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_computed_in_float64(data, dtype):
    s, te, y = data
    s_lp, te_lp = t(s).to(dtype), t(te).to(dtype)
    s64, te64 = s_lp.double().numpy(), te_lp.double().numpy()  # the values actually passed
    assert expected_calibration_error(s_lp, t(y)) == pytest.approx(np_ece(s64, y, 15), abs=1e-12)
    ref_kl = np.mean(entropy(softmax(te64, axis=1), softmax(s64, axis=1), axis=1))
    assert kl_divergence(s_lp, te_lp) == pytest.approx(ref_kl, rel=1e-10)


# --- hand-worked examples and edge cases ----------------------------------------------------


def test_ece_hand_worked():
    # Two classes, logits = log p, so softmax gives p back; every prediction is class 0.
    #   conf   target  correct  bin (M=5, width 0.2)
    #   0.90     0       1       (0.8, 1.0]
    #   0.70     0       1       (0.6, 0.8]
    #   0.65     1       0       (0.6, 0.8]
    #   0.55     1       0       (0.4, 0.6]
    # (0.8,1.0]: |1.0 - 0.900| * 1/4 = 0.0250
    # (0.6,0.8]: |0.5 - 0.675| * 2/4 = 0.0875
    # (0.4,0.6]: |0.0 - 0.550| * 1/4 = 0.1375
    # ECE = 0.25
    conf = torch.tensor([0.9, 0.7, 0.65, 0.55], dtype=torch.float64)
    logits = torch.stack([conf.log(), (1 - conf).log()], dim=1)
    target = torch.tensor([0, 0, 1, 1])
    assert expected_calibration_error(logits, target, n_bins=5) == pytest.approx(0.25, abs=1e-12)
    assert accuracy(logits, target) == 0.5


def test_ece_zero_when_perfectly_calibrated():
    # 4 examples at confidence 0.75 (3 right) and 2 at confidence 0.5 over 3 classes (1 right).
    p75 = [math.log(0.75), math.log(0.125), math.log(0.125)]
    p50 = [math.log(0.5), math.log(0.25), math.log(0.25)]
    logits = torch.tensor([p75] * 4 + [p50] * 2, dtype=torch.float64)
    target = torch.tensor([0, 0, 0, 1, 0, 2])
    assert expected_calibration_error(logits, target) == pytest.approx(0.0, abs=1e-12)


def test_agreement_hand_worked():
    student = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])  # argmax 0, 1, 2
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # argmax 0, 2, 2
    assert agreement(student, teacher) == pytest.approx(2 / 3)


def test_topk_hand_worked_and_clipped():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    target = torch.tensor([1, 0])  # ranks 2 and 3
    assert [topk_accuracy(logits, target, k) for k in (1, 2, 3)] == [0.0, 0.5, 1.0]
    assert topk_accuracy(logits, target, 100) == 1.0


def test_kl_identical_is_zero_and_nonnegative(data):
    s, te, _ = data
    assert kl_divergence(t(s), t(s)) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(t(s), t(s) + 7.0) == pytest.approx(0.0, abs=1e-12)  # shift-invariant
    assert kl_divergence(t(s), t(te)) > 0


# --- classification_metrics and the accumulator ---------------------------------------------


def test_classification_metrics_keys(data):
    s, te, y = data
    assert set(classification_metrics(t(s), t(y), k=3)) == {
        "accuracy",
        "top3_accuracy",
        "macro_f1",
        "ece",
        "nll",
    }
    out = classification_metrics(t(s), t(y), t(te))
    assert set(out) == {
        "accuracy",
        "top5_accuracy",
        "macro_f1",
        "ece",
        "nll",
        "teacher_accuracy",
        "agreement",
        "agreement_top5",
        "kl_teacher_student",
    }
    # nll: the mean of -log softmax at the label, by NumPy
    z = s - s.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    assert out["nll"] == pytest.approx(-log_p[np.arange(len(y)), y].mean(), rel=1e-9)
    assert out["teacher_accuracy"] == pytest.approx(np.mean(te.argmax(1) == y))
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize("with_teacher", [True, False])
def test_accumulator_matches_one_shot(data, with_teacher):
    s, te, y = (t(a) for a in data)
    s, te = s.float(), te.float()  # the accumulator stores float32
    acc = MetricAccumulator()
    for lo, hi in [(0, 100), (100, 101), (101, 200), (200, N)]:
        acc.update(s[lo:hi], y[lo:hi], te[lo:hi] if with_teacher else None)
    assert len(acc) == N
    expected = classification_metrics(s, y, te if with_teacher else None, k=3)
    assert acc.compute(k=3) == pytest.approx(expected, abs=1e-12)
    acc.reset()
    with pytest.raises(ShapeError, match="no batches"):
        acc.compute()


def test_accumulator_detaches():
    logits = torch.randn(4, 3, requires_grad=True)
    acc = MetricAccumulator()
    acc.update(logits * 2, torch.tensor([0, 1, 2, 0]))
    assert not acc._student[0].requires_grad
    assert acc._student[0].dtype == torch.float32


def test_accumulator_rejects_inconsistent_batches():
    acc = MetricAccumulator()
    acc.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ShapeError, match="every batch or for none"):
        acc.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ShapeError, match="classes"):
        acc.update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2, 4))


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("logits", "target", "match"),
    [
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), r"\(5,\).*\(4, 3\)"),
        (torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.long), r"\(4, 1\)"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), r"2-D.*\(4,\)"),
        (torch.zeros(2, 4, 3), torch.zeros(2, dtype=torch.long), r"2-D.*\(2, 4, 3\)"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "empty"),
    ],
)
def test_bad_shapes(logits, target, match):
    for fn in (accuracy, expected_calibration_error, classification_metrics):
        with pytest.raises(ShapeError, match=match):
            fn(logits, target)
    with pytest.raises(ShapeError, match=match):
        MetricAccumulator().update(logits, target)


def test_student_teacher_shape_mismatch():
    with pytest.raises(ShapeError, match=r"\(4, 3\).*\(4, 5\)"):
        agreement(torch.zeros(4, 3), torch.zeros(4, 5))
    with pytest.raises(ShapeError, match=r"\(4, 3\).*\(2, 3\)"):
        kl_divergence(torch.zeros(4, 3), torch.zeros(2, 3))


def test_per_class_and_macro_f1_equal_scikit_learn() -> None:
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    from crossdistill.evaluate.metrics import macro_f1, per_class

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(200, 5))
    target = rng.integers(0, 4, size=200)  # class 4 never occurs: support 0
    predicted = logits.argmax(1)
    rows = per_class(t(logits), t(target), ["a", "b", "c", "d", "e"])
    p, r, f, support = precision_recall_fscore_support(
        target, predicted, labels=range(5), zero_division=0
    )
    for c, name in enumerate("abcde"):
        assert rows[name]["precision"] == pytest.approx(p[c])
        assert rows[name]["recall"] == pytest.approx(r[c])
        assert rows[name]["f1"] == pytest.approx(f[c])
        assert rows[name]["support"] == support[c]
    # macro over the classes present in the targets, as scikit-learn's with labels=present
    expected = f1_score(target, predicted, labels=range(4), average="macro", zero_division=0)
    assert macro_f1(t(logits), t(target)) == pytest.approx(expected)


def test_topk_overlap_by_hand() -> None:
    from crossdistill.evaluate.metrics import topk_overlap

    student = torch.tensor([[5.0, 4.0, 3.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    teacher = torch.tensor([[5.0, 0.0, 4.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    # row 0: top-2 {0, 1} vs {0, 2} -> 1/2; row 1: {3, 2} vs {0, 1} -> 0
    assert topk_overlap(student, teacher, 2) == pytest.approx(0.25)
    assert topk_overlap(student, student, 3) == 1.0
    assert topk_overlap(student, teacher, 10) == 1.0  # k capped at the class count
