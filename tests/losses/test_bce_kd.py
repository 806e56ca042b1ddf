"""bce_kd (KD for sigmoid / multi-label teachers), checked against a NumPy float64 derivation of
the formula (ref_logit.ref_bce_kd), by gradcheck, by invariants (the minimum at the teacher, the
τ² scaling of Hinton KD, probabilities equal to logits), by hand-worked values and by every
refused input."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from ref_logit import BENCH_CASES, ref_bce_kd

from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.knowledge import Knowledge
from crossdistill.core.wrappers import Student
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError
from crossdistill.losses import Needs, build_loss
from crossdistill.losses.checks import HyperParameterError


def inputs(shape, seed, dtype=torch.float64, scale=3.0, shift=-1.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=g, dtype=dtype) * scale + shift
    t = torch.randn(shape, generator=g, dtype=dtype) * scale + shift
    return s, t


def random_mask(shape, seed, p=0.6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < p


def run(loss, s, t, mask=None, mask_key="mask"):
    teacher = {"logits": t} if mask is None else {"logits": t, mask_key: mask}
    return loss(Knowledge({"logits": s}, source="student"), Knowledge(teacher, source="teacher"))


def value_and_grad(loss, s, t, mask=None):
    s = s.clone().requires_grad_(True)
    value = run(loss, s, t, mask)
    (grad,) = torch.autograd.grad(value, s)
    return value.detach(), grad


# --------------------------------------------------------------------------------------------
# 1. the NumPy derivation
# --------------------------------------------------------------------------------------------

PARAMS = [
    {},
    {"temperature": 2.0},
    {"temperature": 4.0},
    {"temperature": 0.5},
    {"pos_weight": 3.0},
    {"temperature": 2.0, "pos_weight": 0.25},
]
SHAPES = [(1, 1), (4, 7), (8, 527), (3, 5, 6), (2, 1, 4)]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: str(p) if p else "default")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_numpy_reference(params: dict, shape: tuple[int, ...]) -> None:
    loss = build_loss("bce_kd", params)
    for seed in range(3):
        s, t = inputs(shape, seed)
        expected = ref_bce_kd(s.numpy(), t.numpy(), **params)
        got64 = run(loss, s, t)
        assert got64.dim() == 0 and got64.dtype == torch.float64
        np.testing.assert_allclose(got64.item(), expected, rtol=1e-12, atol=1e-12)
        got32 = run(loss, s.float(), t.float())
        assert got32.dtype == torch.float32
        np.testing.assert_allclose(got32.item(), expected, rtol=1e-5, atol=1e-6)


MASKS = {
    # name: (logits shape, mask shape)
    "elements (B, K)": ((6, 9), (6, 9)),
    "samples (B, 1)": ((6, 9), (6, 1)),
    "elements (B, N, K)": ((3, 5, 4), (3, 5, 4)),
    "padded frames (B, N, 1)": ((3, 5, 4), (3, 5, 1)),
    "classes per clip (B, 1, K)": ((3, 5, 4), (3, 1, 4)),
}


@pytest.mark.parametrize("params", [{}, {"temperature": 3.0, "pos_weight": 2.0}])
@pytest.mark.parametrize("kind", MASKS)
def test_masked_mean_matches_numpy_reference(kind: str, params: dict) -> None:
    shape, mask_shape = MASKS[kind]
    loss = build_loss("bce_kd", {"mask": "mask", **params})
    for seed in range(3):
        s, t = inputs(shape, seed)
        mask = random_mask(mask_shape, seed)
        expected = ref_bce_kd(s.numpy(), t.numpy(), mask=mask.numpy(), **params)
        np.testing.assert_allclose(run(loss, s, t, mask).item(), expected, rtol=1e-12)
        # 0/1 integers and floats mean the same as booleans
        for as_number in (mask.long(), mask.float(), mask.double()):
            assert torch.equal(run(loss, s, t, as_number), run(loss, s, t, mask))


def test_the_mean_is_over_unmasked_elements_only() -> None:
    loss, plain = build_loss("bce_kd", {"mask": "mask"}), build_loss("bce_kd")
    s, t = inputs((4, 6, 5), seed=1)
    lengths = [6, 3, 1, 4]
    frames = torch.arange(6)[None, :, None] < torch.tensor(lengths)[:, None, None]
    # the masked mean is the plain loss on the concatenated unpadded frames
    flat_s = torch.cat([s[i, :n] for i, n in enumerate(lengths)])
    flat_t = torch.cat([t[i, :n] for i, n in enumerate(lengths)])
    torch.testing.assert_close(run(loss, s, t, frames), run(plain, flat_s, flat_t))
    # an all-ones mask is no mask
    torch.testing.assert_close(run(loss, s, t, torch.ones(4, 6, 1)), run(plain, s, t))


def test_masked_elements_contribute_nothing_whatever_they_hold() -> None:
    loss = build_loss("bce_kd", {"mask": "mask", "temperature": 2.0})
    s, t = inputs((3, 5, 4), seed=2)
    mask = random_mask((3, 5, 1), seed=2)
    mask[0] = True  # some elements of each kind
    mask[1] = False
    v1, g1 = value_and_grad(loss, s, t, mask)
    junk = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=s.dtype)
    fill = junk[torch.arange(s.numel()) % 4].view(s.shape)
    s2, t2 = torch.where(mask, s, fill), torch.where(mask, t, fill.flip(0))
    v2, g2 = value_and_grad(loss, s2, t2, mask)
    assert torch.equal(v1, v2) and torch.equal(g1, g2)
    assert torch.all(g2[~mask.expand_as(s)] == 0) and torch.isfinite(g2).all()


def test_all_masked_batch_gives_zero_and_no_gradient() -> None:
    loss = build_loss("bce_kd", {"mask": "mask"})
    s, t = inputs((2, 3, 4), seed=3)
    value, grad = value_and_grad(loss, s, t, torch.zeros(2, 3, 1, dtype=torch.bool))
    assert value.item() == 0 and torch.all(grad == 0)


# --------------------------------------------------------------------------------------------
# 2. gradcheck in float64
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "shape", "mask_shape"),
    [
        ({}, (3, 5), None),
        ({"temperature": 2.5, "pos_weight": 3.0}, (3, 5), None),
        ({"temperature": 0.7}, (2, 3, 4), None),
        ({"temperature": 2.0, "mask": "mask"}, (2, 3, 4), (2, 3, 1)),
        ({"pos_weight": 0.5, "mask": "mask"}, (3, 5), (3, 5)),
    ],
)
def test_gradcheck(params: dict, shape: tuple[int, ...], mask_shape) -> None:
    loss = build_loss("bce_kd", params)
    s, t = inputs(shape, seed=7, scale=1.5)
    mask = None if mask_shape is None else random_mask(mask_shape, seed=7, p=0.7)
    s.requires_grad_(True)
    t.requires_grad_(True)  # the teacher's side too: the formula, not only what is trained
    assert torch.autograd.gradcheck(lambda a, b: run(loss, a, b, mask), (s, t), eps=1e-6, atol=1e-7)


def test_gradcheck_from_teacher_probabilities() -> None:
    loss = build_loss("bce_kd", {"teacher_probabilities": True, "temperature": 2.0})
    s, t = inputs((3, 4), seed=8, scale=1.5)
    p = torch.sigmoid(t)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: run(loss, a, p), (s,), eps=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# 3. invariants
# --------------------------------------------------------------------------------------------


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log() + (1 - p) * (1 - p).log())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 8.0])
@pytest.mark.parametrize("shape", [(6, 9), (3, 4, 5)])
def test_minimum_at_the_teacher(temperature: float, shape: tuple[int, ...]) -> None:
    # ∂L/∂s = τ (σ(s/τ) − σ(t/τ)) / n = 0 at s = t; the value there is τ² × the mean binary
    # entropy of the teacher's probabilities (a cross-entropy, not a KL)
    loss = build_loss("bce_kd", {"temperature": temperature})
    t, _ = inputs(shape, seed=4)
    value, grad = value_and_grad(loss, t, t)
    assert grad.abs().max().item() < 1e-15
    p = torch.sigmoid(t / temperature)
    torch.testing.assert_close(value, temperature**2 * binary_entropy(p).mean())
    # and it is a minimum: any step away increases the loss
    for seed in range(3):
        step, _ = inputs(shape, seed=seed, scale=0.1, shift=0.0)
        assert run(loss, t + step, t) > value


def test_pos_weight_moves_the_minimum_to_wp_over_wp_plus_1_minus_p() -> None:
    w, temperature = 3.0, 2.0
    loss = build_loss("bce_kd", {"pos_weight": w, "temperature": temperature})
    t, _ = inputs((5, 6), seed=5)
    p = torch.sigmoid(t / temperature)
    q = w * p / (w * p + 1 - p)
    _, grad = value_and_grad(loss, temperature * torch.logit(q), t)
    assert grad.abs().max().item() < 1e-14
    _, grad_at_teacher = value_and_grad(loss, t, t)
    assert torch.all(grad_at_teacher < 0)  # positives up-weighted: every logit pushed up


def test_temperature_squared_keeps_the_gradient_scale() -> None:
    # ∂L/∂s_e = τ (σ(s_e/τ) − σ(t_e/τ)) / n → (s_e − t_e) / (4 n) for large τ (σ'(0) = 1/4), the
    # sigmoid counterpart of Hinton et al. §2.1: the gradient does not vanish as τ grows
    s, t = inputs((4, 10), seed=6, scale=1.0, shift=0.0)
    limit = (s - t) / (4 * s.numel())
    for temperature in (100.0, 1000.0):
        _, grad = value_and_grad(build_loss("bce_kd", {"temperature": temperature}), s, t)
        torch.testing.assert_close(grad, limit, rtol=1e-3, atol=1e-9)
    for temperature in (0.5, 1.0, 3.0):  # exactly τ (q − p) / n at any τ
        _, grad = value_and_grad(build_loss("bce_kd", {"temperature": temperature}), s, t)
        q, p = torch.sigmoid(s / temperature), torch.sigmoid(t / temperature)
        torch.testing.assert_close(grad, temperature * (q - p) / s.numel())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_teacher_probabilities_equal_teacher_logits(temperature: float) -> None:
    params = {"temperature": temperature}
    from_logits = build_loss("bce_kd", params)
    from_probs = build_loss("bce_kd", {**params, "teacher_probabilities": True})
    s, t = inputs((4, 3, 6), seed=9, scale=2.0)
    p = torch.sigmoid(t)
    v1, g1 = value_and_grad(from_logits, s, t)
    v2, g2 = value_and_grad(from_probs, s, p)
    if temperature == 1.0:  # the probabilities are used as they are: the same kernel, same bits
        assert torch.equal(v1, v2) and torch.equal(g1, g2)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-14)
    expected = ref_bce_kd(s.numpy(), p.numpy(), temperature=temperature, teacher_probabilities=True)
    np.testing.assert_allclose(v2.item(), expected, rtol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_teacher_probabilities_of_exactly_0_and_1(temperature: float) -> None:
    # hard 0/1 teacher outputs (a thresholded or saturated teacher): BCE against hard labels
    loss = build_loss("bce_kd", {"teacher_probabilities": True, "temperature": temperature})
    s, _ = inputs((3, 4), seed=10)
    p = (torch.arange(12).view(3, 4) % 2).double()
    value, grad = value_and_grad(loss, s, p)
    expected = temperature**2 * torch.nn.functional.binary_cross_entropy_with_logits(
        s / temperature, p
    )
    torch.testing.assert_close(value, expected)
    assert torch.isfinite(grad).all()


def test_hand_worked_values() -> None:
    def bce(s, t, **params):
        loss = build_loss("bce_kd", params)
        s, t = torch.tensor([[s]], dtype=torch.float64), torch.tensor([[t]], dtype=torch.float64)
        return run(loss, s, t).item()

    log2 = math.log(2.0)
    # q = σ(0) = 1/2, p = σ(ln 3) = 3/4: ℓ = -(3/4 ln 1/2 + 1/4 ln 1/2) = ln 2
    assert bce(0.0, math.log(3.0)) == pytest.approx(log2, abs=1e-15)
    # q = 1/2 at any τ, so ℓ = ln 2 whatever p; × τ² = 4
    assert bce(0.0, math.log(3.0), temperature=2.0) == pytest.approx(4 * log2, abs=1e-14)
    # w = 2: -(2 · 3/4 ln 1/2 + 1/4 ln 1/2) = 7/4 ln 2 = 1.213008
    assert bce(0.0, math.log(3.0), pos_weight=2.0) == pytest.approx(1.75 * log2, abs=1e-15)
    # q = σ(ln 3) = 3/4, p = 1/2: -(1/2 ln 3/4 + 1/2 ln 1/4) = 1/2 ln(16/3) = 0.836988
    assert bce(math.log(3.0), 0.0) == pytest.approx(0.5 * math.log(16 / 3), abs=1e-15)
    assert bce(math.log(3.0), 0.0) == pytest.approx(0.836988, abs=1e-6)


def test_mixed_dtypes_compute_in_the_wider() -> None:
    # binary_cross_entropy_with_logits alone would compute in the target's dtype
    loss = build_loss("bce_kd", {"temperature": 2.0})
    s, t = inputs((3, 4), seed=11)
    for a, b in ((s, t.float()), (s.float(), t)):
        value = run(loss, a, b)
        assert value.dtype == torch.float64
        torch.testing.assert_close(value, run(loss, a.double(), b.double()))


def test_stable_for_large_logits() -> None:
    # log(sigmoid(x)) would give -inf (and NaN gradients) at |x| ≈ 100 in float32
    loss = build_loss("bce_kd")
    s = torch.tensor([[-200.0, 200.0, 90.0, -90.0]], requires_grad=True)
    t = torch.tensor([[200.0, -200.0, 90.0, -90.0]])
    value = run(loss, s, t)
    (grad,) = torch.autograd.grad(value, s)
    # ℓ = softplus(200) = 200 for the two opposite elements, ≈ 90 e^-90 for the agreeing ones
    assert value.item() == pytest.approx(100.0, rel=1e-6)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, torch.tensor([[-0.25, 0.25, 0.0, 0.0]]))


# --------------------------------------------------------------------------------------------
# 4. needs, keys and the Distiller
# --------------------------------------------------------------------------------------------


def test_needs_report_the_configured_keys() -> None:
    assert build_loss("bce_kd").needs() == Needs(("logits",), ("logits",), False)
    keyed = build_loss("bce_kd", {"student": "tag_logits", "teacher": "probs", "mask": "valid"})
    assert keyed.needs() == Needs(("tag_logits",), ("probs", "valid"), False)


def test_reads_its_keys_from_a_store_batch_through_the_distiller() -> None:
    # frame-level tagging: the student has a second head for the teacher's 7 tags, the teacher's
    # probabilities and frame mask come precomputed (a knowledge store's batch["knowledge"])
    torch.manual_seed(0)

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.data_head, self.tag_head = torch.nn.Linear(8, 3), torch.nn.Linear(8, 7)

        def forward(self, x):
            return self.data_head(x.mean(1)), self.tag_head(x)

    student = Student(TwoHeads(), outputs=["logits", "tags"])
    params = {"student": "tags", "teacher": "probs", "mask": "frames"}
    params["teacher_probabilities"] = True
    loss = build_loss("bce_kd", params)
    distiller = Distiller(student, [Term("tags", loss)], knowledge_given=True)
    x = torch.randn(2, 5, 8)
    frames = (torch.arange(5)[None, :] < torch.tensor([[5], [2]]))[..., None]
    knowledge = {"probs": torch.rand(2, 5, 7), "frames": frames}
    batch = {"views": {"student": x}, "knowledge": knowledge}
    distiller.check(batch)
    _, terms = distiller(batch)
    tags = student(x)["tags"]
    expected = ref_bce_kd(
        tags.detach().double().numpy(),
        knowledge["probs"].double().numpy(),
        mask=frames.numpy(),
        teacher_probabilities=True,
    )
    np.testing.assert_allclose(terms["tags"].item(), expected, rtol=1e-5)
    terms["tags"].backward()
    assert student.model.tag_head.weight.grad is not None
    assert student.model.data_head.weight.grad is None  # only the tag head is distilled


# --------------------------------------------------------------------------------------------
# 5. refused inputs and hyper-parameters
# --------------------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes() -> None:
    loss = build_loss("bce_kd", {"student": "s", "teacher": "t"})
    s, t = torch.randn(4, 5), torch.randn(4, 6)
    with pytest.raises(ShapeError, match=r"'s' \(4, 5\).*'t' \(4, 6\)") as info:
        loss(Knowledge({"s": s}), Knowledge({"t": t}))
    assert "`student:`" in str(info.value)  # the hint: a head of the teacher's classes
    with pytest.raises(ShapeError, match=r"\(2, 3, 4\).*\(2, 4, 3\)"):
        run(build_loss("bce_kd"), torch.randn(2, 3, 4), torch.randn(2, 4, 3))


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4, 5)])
def test_rank_other_than_2_or_3_is_refused(shape) -> None:
    with pytest.raises(ShapeError, match=r"\(batch, classes\) or \(batch, frames, classes\)"):
        run(build_loss("bce_kd"), torch.randn(shape), torch.randn(shape))


@pytest.mark.parametrize(
    ("logits", "mask"),
    [((3, 5, 4), (3, 5)), ((3, 5, 4), (3, 5, 2)), ((6, 9), (6, 8)), ((6, 9), (9,))],
)
def test_mask_that_does_not_fit_is_refused(logits, mask) -> None:
    loss = build_loss("bce_kd", {"mask": "valid"})
    s, t = torch.randn(logits), torch.randn(logits)
    m_str = "(" + ", ".join(map(str, mask)) + ")"
    with pytest.raises(ShapeError, match=rf"'valid' {re.escape(m_str)}") as info:
        run(loss, s, t, torch.ones(mask), mask_key="valid")
    assert "(batch, frames, 1)" in str(info.value)


def test_missing_keys_are_knowledge_errors_naming_them() -> None:
    loss = build_loss("bce_kd", {"mask": "valid", "teacher": "probs"})
    s = torch.randn(2, 3)
    with pytest.raises(KnowledgeError, match="'probs'"):
        loss(Knowledge({"logits": s}), Knowledge({"logits": s, "valid": s}, source="teacher"))
    with pytest.raises(KnowledgeError, match="'valid'"):
        loss(Knowledge({"logits": s}), Knowledge({"probs": s.sigmoid()}, source="teacher"))
    with pytest.raises(KnowledgeError, match="'tags'"):
        build_loss("bce_kd", {"student": "tags"})(
            Knowledge({"logits": s}), Knowledge({"logits": s})
        )


@pytest.mark.parametrize(
    ("values", "found"),
    [
        (torch.tensor([[0.2, 1.5], [0.0, 1.0]]), r"values in \[0, 1\.5\], outside \[0, 1\]"),
        (torch.tensor([[-0.25, 0.5], [0.0, 1.0]]), r"values in \[-0\.25, 1\], outside \[0, 1\]"),
        (torch.tensor([[-3.0, 2.0], [0.5, 0.5]]), r"values in \[-3, 2\], outside \[0, 1\]"),
        (torch.tensor([[float("nan"), 0.5], [0.5, 0.5]]), r"NaN, not probabilities in \[0, 1\]"),
    ],
)
def test_teacher_probabilities_outside_0_1_are_refused(values, found) -> None:
    loss = build_loss("bce_kd", {"teacher_probabilities": True, "teacher": "probs"})
    with pytest.raises(ShapeError, match=rf"'probs' \(2, 2\) holds {found}") as info:
        loss(Knowledge({"logits": torch.zeros(2, 2)}), Knowledge({"probs": values}))
    assert "teacher_probabilities: false" in str(info.value)


def test_probability_check_ignores_masked_elements_and_runs_once_per_mode() -> None:
    loss = build_loss("bce_kd", {"teacher_probabilities": True, "mask": "mask"})
    s, p = torch.zeros(2, 3), torch.full((2, 3), 0.5)
    padded = p.clone()
    padded[1] = -1.0  # the padding value of a teacher's output, masked
    mask = torch.tensor([[1], [0]])
    assert torch.isfinite(run(loss, s, padded, mask))
    bad = p.clone()
    bad[0, 0] = 2.0
    loss = build_loss("bce_kd", {"teacher_probabilities": True})
    loss.eval()  # the Distiller's preflight check
    with pytest.raises(ShapeError, match="outside"):
        run(loss, s, bad)
    run(loss, s, p)  # checked in eval mode: not again (no host sync per step)
    loss.train()
    with pytest.raises(ShapeError, match="outside"):  # the first call in training mode is checked
        run(loss, s, bad)
    run(loss, s, p)
    assert torch.isfinite(run(loss, s, bad))  # documented: later batches are not checked


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -2.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"pos_weight": 0.0}, "pos_weight"),
        ({"pos_weight": -1.0}, "pos_weight"),
        ({"pos_weight": float("inf")}, "pos_weight"),
    ],
)
def test_out_of_range_hyper_parameter(params: dict, word: str) -> None:
    with pytest.raises(HyperParameterError, match=word) as info:
        build_loss("bce_kd", params)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"mask": 3}, "mask"),
        ({"teacher_probabilities": "maybe"}, "teacher_probabilities"),
        ({"student": None}, "student"),
        ({"temperature": "hot"}, "temperature"),
    ],
)
def test_bad_hyper_parameter_type_is_a_config_error(params: dict, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        build_loss("bce_kd", params)


# --------------------------------------------------------------------------------------------
# 6. mixed precision and the bench cases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{}, {"temperature": 2.0, "pos_weight": 2.0}])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_finite_scalar_under_bfloat16_autocast(params: dict, scale: float) -> None:
    torch.manual_seed(0)
    head_s, head_t = torch.nn.Linear(16, 10), torch.nn.Linear(16, 10)
    x = torch.randn(8, 5, 16)
    loss = build_loss("bce_kd", params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s, t = head_s(x) * scale, head_t(x) * scale
        assert s.dtype == torch.bfloat16
        value = run(loss, s, t)
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in head_s.parameters())
    torch.testing.assert_close(value, run(loss, s.float(), t.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [c for c in BENCH_CASES if c.loss == "bce_kd"], ids=lambda c: c.id)
def test_bench_case_matches_its_reference(case) -> None:
    got, expected = case.small_values()
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
