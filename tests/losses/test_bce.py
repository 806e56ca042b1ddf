"""bce (supervised binary cross-entropy on multi-label / frame-level targets), checked against a
NumPy float64 computation written from the formula (ref_logit.ref_bce), by gradcheck, by a
hand-worked value, by the target shapes it accepts and refuses, and in a Distiller whose data
has no class count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ref_logit import BENCH_CASES, ref_bce

from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.knowledge import Knowledge
from crossdistill.core.wrappers import Student
from crossdistill.errors import ShapeError
from crossdistill.losses import Needs, build_loss
from crossdistill.losses.checks import HyperParameterError


def run(loss, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return loss(Knowledge({"logits": s}, source="student"), Knowledge({}, source="teacher"), y)


def logits_and_labels(shape, seed, soft=False):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=g, dtype=torch.float64) * 4
    y = torch.rand(shape, generator=g, dtype=torch.float64)
    return s, (y if soft else (y > 0.5).to(torch.float64))


@pytest.mark.parametrize("pos_weight", [1.0, 3.0, 0.25])
@pytest.mark.parametrize("shape", [(1, 1), (4, 7), (3, 5, 6), (2, 160, 1)])
@pytest.mark.parametrize("soft", [False, True], ids=["labels", "soft"])
def test_matches_numpy_reference(pos_weight: float, shape: tuple, soft: bool) -> None:
    loss = build_loss("bce", {"pos_weight": pos_weight})
    for seed in range(3):
        s, y = logits_and_labels(shape, seed, soft)
        expected = ref_bce(s.numpy(), y.numpy(), pos_weight)
        np.testing.assert_allclose(run(loss, s, y).item(), expected, rtol=1e-12, atol=1e-12)
        got32 = run(loss, s.float(), y.float())
        assert got32.dtype == torch.float32
        np.testing.assert_allclose(got32.item(), expected, rtol=1e-5, atol=1e-6)


def test_a_worked_value() -> None:
    # s = 0 gives σ = 1/2 whatever the label: log 2 per element; s = ln 3 with y = 1: σ = 3/4,
    # -log(3/4); the mean of the two
    s = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    expected = (math.log(2.0) - math.log(0.75)) / 2
    assert run(build_loss("bce", {}), s, y).item() == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("pos_weight", [1.0, 2.5])
def test_gradcheck(pos_weight: float) -> None:
    loss = build_loss("bce", {"pos_weight": pos_weight})
    s, y = logits_and_labels((3, 4, 2), 7, soft=True)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: run(loss, x, y), (s,))
    # the gradient by hand: (σ(s) (w y + 1 - y) - w y) / n, per element
    (grad,) = torch.autograd.grad(run(loss, s, y), s)
    q = torch.sigmoid(s.detach())
    by_hand = (q * (pos_weight * y + 1 - y) - pos_weight * y) / s.numel()
    torch.testing.assert_close(grad, by_hand, rtol=1e-10, atol=1e-12)


def test_frame_labels_fit_logits_with_a_trailing_one() -> None:
    s, y = logits_and_labels((2, 10, 1), 3)
    loss = build_loss("bce", {})
    # (B, N) labels of (B, N, 1) logits, also as integers
    assert run(loss, s, y[..., 0].long()).item() == pytest.approx(run(loss, s, y).item())
    # (B,) binary labels of (B, 1) logits
    s1, y1 = logits_and_labels((5, 1), 4)
    assert run(loss, s1, y1[:, 0]).item() == pytest.approx(ref_bce(s1.numpy(), y1.numpy()))


@pytest.mark.parametrize(
    ("logits", "target", "message"),
    [
        ((2, 10, 1), (2, 9), r"targets are \(2, 9\)"),
        ((4, 3), (4,), r"targets are \(4\)"),  # class indices: ce's job
        ((4, 3), (3, 4), r"targets are \(3, 4\)"),
    ],
)
def test_targets_of_another_shape_are_refused(logits, target, message) -> None:
    with pytest.raises(ShapeError, match=message) as info:
        run(build_loss("bce", {}), torch.zeros(logits), torch.zeros(target))
    assert "ce" in info.value.hint


def test_targets_outside_zero_one_are_refused() -> None:
    loss = build_loss("bce", {})
    with pytest.raises(ShapeError, match=r"values in \[0, 2\], outside \[0, 1\]"):
        run(loss, torch.zeros(2, 3), torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ShapeError, match="NaN"):
        run(loss, torch.zeros(1, 2), torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="needs the ground-truth target"):
        run(loss, torch.zeros(1, 2), None)
    with pytest.raises(HyperParameterError, match="pos_weight"):
        build_loss("bce", {"pos_weight": 0.0})


def test_it_declares_the_target_and_the_student_key() -> None:
    loss = build_loss("bce", {"student": "frames"})
    assert loss.needs() == Needs(("frames",), (), True)


class FrameNet(torch.nn.Module):
    """(B, T) -> (B, T, 1) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(1)).transpose(1, 2)


def test_a_distiller_trains_frame_labels_with_no_teacher() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 20)
    y = (x > 0).float()  # a frame is "on" where the signal is positive: learnable by the conv
    student = Student(FrameNet())
    distiller = Distiller(student, [Term("bce", build_loss("bce", {}))])
    batch = {"views": {"student": x}, "target": y}
    distiller.check(batch, num_classes=0)  # no class count: frame labels are not classes
    optimizer = torch.optim.Adam(distiller.parameters(), lr=0.05)
    first = None
    for _ in range(100):
        loss = sum(distiller(batch)[1].values())
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 3
    pred = student(x)["logits"][..., 0] > 0
    assert (pred == (y > 0.5)).float().mean() > 0.95


def test_the_bench_case_matches_its_reference() -> None:
    (case,) = [c for c in BENCH_CASES if c.loss == "bce"]
    got, expected = case.small_values()
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
