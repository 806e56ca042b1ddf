"""The embedding and ranking losses (cosine, sim_mse, infonce, margin_mse, listwise_kl), checked
against NumPy re-derivations of their formulas (``ref_embedding``), against maintained peers
(``torch.nn.CosineEmbeddingLoss``, sentence-transformers' ``MarginMSELoss`` and
``DistillKLDivLoss`` on the same scores, crossdistill's ``affinity``), by gradcheck, by
invariants, on bad input, in a Distiller with ``adapter: auto`` (a 256-d student of a 384-d
teacher) and, for the batch-level ones, by a two-process gloo run against one process on the
concatenated batch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ref_embedding import (
    BENCH_CASES,
    ref_cosine,
    ref_infonce,
    ref_listwise_kl_embeddings,
    ref_listwise_kl_scores,
    ref_margin_mse_embeddings,
    ref_margin_mse_scores,
    ref_sim_mse,
)
from torch import nn

# registers cosine, margin_mse, listwise_kl until losses/__init__ imports the two families
import crossdistill.losses.embedding
import crossdistill.losses.ranking  # noqa: F401
from crossdistill.build import build_term
from crossdistill.config import LossSpec
from crossdistill.core.distiller import Distiller, Term
from crossdistill.core.knowledge import Knowledge
from crossdistill.core.wrappers import Student, Teacher
from crossdistill.errors import ConfigError, KnowledgeError, ShapeError
from crossdistill.losses import LOSSES, build_loss

NEW = ["cosine", "sim_mse", "infonce", "margin_mse", "listwise_kl"]
SCORES = {"student": "scores", "teacher": "scores"}


def kn(x: torch.Tensor, source: str, key: str = "embedding") -> Knowledge:
    return Knowledge({key: x}, source=source)


def value(name: str, params: dict[str, Any], s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    loss = build_loss(name, params)
    if s.dtype == torch.float64:  # a learnable temperature in the inputs' precision
        loss = loss.double()
    key_s, key_t = params.get("student", "embedding"), params.get("teacher", "embedding")
    return loss(kn(s, "student", key_s), kn(t, "teacher", key_t), None)


def draw(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


# --------------------------------------------------------------------------------------------
# 1. NumPy references
# --------------------------------------------------------------------------------------------

# (loss, params, student shape, teacher shape, reference); widths differ wherever allowed.
CASES = [
    ("cosine", {}, (6, 5), (6, 5), ref_cosine),
    ("cosine", {}, (3, 4, 7), (3, 4, 7), ref_cosine),  # token states: per (sample, token)
    ("sim_mse", {}, (6, 4), (6, 9), ref_sim_mse),
    ("sim_mse", {"exclude_diagonal": False}, (6, 4), (6, 9), lambda s, t: ref_sim_mse(s, t, False)),
    ("sim_mse", {}, (4, 2, 3), (4, 2, 2, 2), ref_sim_mse),  # flattened rows
    ("sim_mse", {}, (2, 3), (2, 5), ref_sim_mse),
    ("infonce", {}, (7, 6), (7, 6), ref_infonce),
    ("infonce", {"temperature": 0.5}, (7, 6), (7, 6), lambda s, t: ref_infonce(s, t, 0.5)),
    (
        "infonce",
        {"temperature": 0.2, "symmetric": True},
        (7, 6),
        (7, 6),
        lambda s, t: ref_infonce(s, t, 0.2, True),
    ),
    (
        "infonce",
        {"learnable_temperature": True, "temperature": 0.1},
        (5, 3),
        (5, 3),
        # the parameter is created in float32: log τ is log 0.1 rounded to float32
        lambda s, t: ref_infonce(s, t, math.exp(np.float32(math.log(0.1)))),
    ),
    ("infonce", {}, (4, 2, 3), (4, 2, 3), ref_infonce),
    ("margin_mse", SCORES, (5, 4), (5, 4), ref_margin_mse_scores),
    ("margin_mse", SCORES, (3, 2), (3, 2), ref_margin_mse_scores),
    (
        "margin_mse",
        {"student": "a", "teacher": "b", "mode": "scores"},
        (5, 4),
        (5, 4),
        ref_margin_mse_scores,
    ),
    ("margin_mse", {}, (7, 4), (7, 9), ref_margin_mse_embeddings),
    (
        "margin_mse",
        {"similarity": "dot"},
        (7, 4),
        (7, 9),
        lambda s, t: ref_margin_mse_embeddings(s, t, "dot"),
    ),
    ("margin_mse", {}, (3, 4), (3, 2), ref_margin_mse_embeddings),  # one negative per anchor
    ("listwise_kl", SCORES, (5, 4), (5, 4), ref_listwise_kl_scores),
    (
        "listwise_kl",
        {**SCORES, "temperature": 3.0},
        (5, 4),
        (5, 4),
        lambda s, t: ref_listwise_kl_scores(s, t, 3.0),
    ),
    ("listwise_kl", {}, (6, 4), (6, 9), ref_listwise_kl_embeddings),
    (
        "listwise_kl",
        {"temperature": 0.05},
        (6, 4),
        (6, 9),
        lambda s, t: ref_listwise_kl_embeddings(s, t, 0.05),
    ),
    (
        "listwise_kl",
        {"similarity": "dot", "temperature": 2.0},
        (6, 4),
        (6, 9),
        lambda s, t: ref_listwise_kl_embeddings(s, t, 2.0, "dot"),
    ),
]
IDS = [f"{c[0]}-{c[2]}-{c[3]}-{c[1]}" for c in CASES]


@pytest.mark.parametrize(("name", "params", "s_shape", "t_shape", "ref"), CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_reference(name, params, s_shape, t_shape, ref, seed) -> None:
    s, t = draw(s_shape, seed) * 2, draw(t_shape, seed + 100)
    expected = ref(s, t)
    got64 = value(name, params, torch.tensor(s), torch.tensor(t))
    assert got64.dtype == torch.float64 and got64.dim() == 0
    np.testing.assert_allclose(got64.item(), expected, rtol=1e-9, atol=1e-13)
    got32 = value(name, params, torch.tensor(s).float(), torch.tensor(t).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.item(), expected, rtol=1e-5, atol=1e-6)


def test_the_references_are_not_trivially_zero() -> None:
    # so that matching them means something: every case of the table gives a positive value
    for name, _, s_shape, t_shape, ref in CASES:
        assert ref(draw(s_shape, 0) * 2, draw(t_shape, 100)) > 1e-3, name


# --------------------------------------------------------------------------------------------
# 2. maintained peers
# --------------------------------------------------------------------------------------------


def test_cosine_equals_torch_cosine_embedding_loss() -> None:
    s, t = torch.tensor(draw((9, 6), 1)), torch.tensor(draw((9, 6), 2))
    peer = nn.CosineEmbeddingLoss()(s, t, torch.ones(9, dtype=torch.float64))
    torch.testing.assert_close(value("cosine", {}, s, t), peer, rtol=1e-12, atol=0)


def dot_columns(scores: torch.Tensor) -> list[torch.Tensor]:
    """Embeddings whose pairwise dot products with a query of ones are ``scores``' columns, so
    sentence-transformers' losses (dot product by default) see exactly these scores."""
    return [torch.ones(scores.shape[0], 1, dtype=scores.dtype)] + [
        scores[:, k : k + 1] for k in range(scores.shape[1])
    ]


@pytest.mark.parametrize("candidates", [2, 5])
def test_margin_mse_equals_sentence_transformers(candidates: int) -> None:
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    s, t = torch.tensor(draw((6, candidates), 3)), torch.tensor(draw((6, candidates), 4))
    peer = st_losses.MarginMSELoss(model=None)
    expected = peer.compute_loss_from_embeddings(dot_columns(s), t)  # labels: [pos, neg_1, ...]
    torch.testing.assert_close(value("margin_mse", SCORES, s, t), expected, rtol=1e-12, atol=0)
    # and with labels given as margins, its other input form
    margins = t[:, :1] - t[:, 1:]
    expected = peer.compute_loss_from_embeddings(dot_columns(s), margins.squeeze(1))
    torch.testing.assert_close(value("margin_mse", SCORES, s, t), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_listwise_kl_equals_sentence_transformers_distill_kl_div(temperature: float) -> None:
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    s, t = torch.tensor(draw((6, 4), 5)), torch.tensor(draw((6, 4), 6))
    peer = st_losses.DistillKLDivLoss(model=None, temperature=temperature)
    expected = peer.compute_loss_from_embeddings(dot_columns(s), t)
    got = value("listwise_kl", {**SCORES, "temperature": temperature}, s, t)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_listwise_kl_on_embeddings_is_affinity_times_tau_squared(temperature: float) -> None:
    s, t = torch.tensor(draw((7, 5), 7)), torch.tensor(draw((7, 11), 8))
    affinity = value("affinity", {"temperature": temperature}, s, t)
    got = value("listwise_kl", {"temperature": temperature}, s, t)
    torch.testing.assert_close(got, affinity * temperature**2, rtol=1e-10, atol=0)


# --------------------------------------------------------------------------------------------
# 3. gradcheck
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params", "s_shape", "t_shape", "ref"), CASES, ids=IDS)
def test_gradcheck(name, params, s_shape, t_shape, ref) -> None:
    s = torch.tensor(draw(s_shape, 3), requires_grad=True)
    t = torch.tensor(draw(t_shape, 4))
    assert torch.autograd.gradcheck(lambda x: value(name, params, x, t), (s,), eps=1e-6, atol=1e-6)


def test_infonce_learnable_temperature_is_a_trained_parameter() -> None:
    loss = build_loss("infonce", {"learnable_temperature": True, "temperature": 0.1}).double()
    assert [n for n, _ in loss.named_parameters()] == ["log_temperature"]
    assert "log_temperature" in loss.state_dict()
    s, t = torch.tensor(draw((5, 4), 1)), torch.tensor(draw((5, 4), 2))

    def of_log_tau(log_tau: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            loss.log_temperature.copy_(log_tau)
        return loss(kn(s, "s"), kn(t, "t"))

    start = math.log(0.1)
    value_ = of_log_tau(torch.tensor(start, dtype=torch.float64))
    np.testing.assert_allclose(value_.item(), ref_infonce(s.numpy(), t.numpy(), 0.1), rtol=1e-9)
    (grad,) = torch.autograd.grad(value_, loss.log_temperature)
    h = 1e-6
    up = of_log_tau(torch.tensor(start + h, dtype=torch.float64))
    down = of_log_tau(torch.tensor(start - h, dtype=torch.float64))
    np.testing.assert_allclose(grad.item(), ((up - down) / (2 * h)).item(), rtol=1e-5)
    # clamped at min_temperature: below it the value is that of τ = min_temperature and the
    # parameter gets no gradient (CLIP's clamp)
    at_floor = of_log_tau(torch.tensor(math.log(0.001), dtype=torch.float64))
    np.testing.assert_allclose(at_floor.item(), ref_infonce(s.numpy(), t.numpy(), 0.01), rtol=1e-9)
    (grad,) = torch.autograd.grad(loss(kn(s, "s"), kn(t, "t")), loss.log_temperature)
    assert grad.item() == 0


def test_fixed_temperature_has_no_parameter() -> None:
    assert list(build_loss("infonce").parameters()) == []


# --------------------------------------------------------------------------------------------
# 4. invariants
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "shape"),
    [
        ("cosine", {}, (6, 5)),
        ("sim_mse", {}, (6, 5)),
        ("sim_mse", {"exclude_diagonal": False}, (6, 5)),
        ("margin_mse", SCORES, (6, 5)),
        ("margin_mse", {}, (6, 5)),
        ("margin_mse", {"similarity": "dot"}, (6, 5)),
        ("listwise_kl", SCORES, (6, 5)),
        ("listwise_kl", {"temperature": 0.05}, (6, 5)),
    ],
)
def test_zero_with_zero_gradient_when_student_equals_teacher(name, params, shape) -> None:
    t = torch.tensor(draw(shape, 5))
    s = t.clone().requires_grad_(True)
    loss = value(name, params, s, t)
    (grad,) = torch.autograd.grad(loss, s)
    assert abs(loss.item()) < 1e-14
    assert grad.abs().max().item() < 1e-9


def test_infonce_is_lowest_when_aligned() -> None:
    t = torch.tensor(draw((8, 6), 6))
    aligned = value("infonce", {}, t, t).item()
    shuffled = value("infonce", {}, t[torch.tensor([1, 2, 3, 4, 5, 6, 7, 0])], t).item()
    noisy = value("infonce", {}, t + 0.3 * torch.tensor(draw((8, 6), 7)), t).item()
    random = value("infonce", {}, torch.tensor(draw((8, 6), 8)), t).item()
    assert aligned < noisy < random < shuffled
    # at a sharp temperature the aligned student picks its teacher with certainty: loss → 0
    assert value("infonce", {"temperature": 1e-3}, t, t).item() < 1e-12
    # and the symmetric loss of an aligned pair equals the one-directional one (z is symmetric)
    torch.testing.assert_close(
        value("infonce", {"symmetric": True}, t, t), value("infonce", {}, t, t)
    )


def test_cosine_is_invariant_to_positive_scaling_per_row() -> None:
    s, t = torch.tensor(draw((5, 4), 1)), torch.tensor(draw((5, 4), 2))
    scale = torch.tensor([[0.1], [1.0], [3.0], [7.0], [100.0]], dtype=s.dtype)
    base = value("cosine", {}, s, t)
    torch.testing.assert_close(value("cosine", {}, s * scale, t), base, rtol=1e-12, atol=0)
    torch.testing.assert_close(value("cosine", {}, s, t * scale), base, rtol=1e-12, atol=0)
    # a negative factor flips the direction: 1 − cos becomes 1 + cos
    flipped = value("cosine", {}, -s, t)
    torch.testing.assert_close(flipped, 2 - base, rtol=1e-12, atol=0)


def test_margin_mse_scores_are_invariant_to_a_per_row_shift() -> None:
    s, t = torch.tensor(draw((5, 4), 1)), torch.tensor(draw((5, 4), 2))
    shift = torch.tensor(draw((5, 1), 3)) * 10
    base = value("margin_mse", SCORES, s, t)
    torch.testing.assert_close(value("margin_mse", SCORES, s + shift, t), base)
    torch.testing.assert_close(value("margin_mse", SCORES, s, t - shift), base)
    # but not to a per-column shift, which changes the margins
    assert not torch.allclose(value("margin_mse", SCORES, s + shift.T[:, :4], t), base)


@pytest.mark.parametrize("name", ["sim_mse", "margin_mse", "listwise_kl"])
def test_embedding_relations_are_invariant_to_rotating_and_rescaling_rows(name: str) -> None:
    s, t = torch.tensor(draw((6, 5), 1)), torch.tensor(draw((6, 8), 2))
    q, _ = torch.linalg.qr(torch.tensor(draw((5, 5), 3)))
    scale = torch.tensor(np.abs(draw((6, 1), 4)) + 0.1)
    base = value(name, {}, s, t)
    torch.testing.assert_close(value(name, {}, (s @ q) * scale, t), base, rtol=1e-10, atol=1e-14)


def test_margin_mse_mines_the_teachers_nearest_neighbour() -> None:
    # teacher: 0 and 1 close, 2 and 3 close. A student that keeps those pairs but changes the
    # margins to the far rows has a loss; one that only swaps which far row is farther too
    t = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], dtype=torch.float64)
    assert value("margin_mse", {}, t, t).item() == 0
    s = torch.tensor([[1.0, 0.0], [1.0, 0.05], [-1.0, 0.0], [-1.0, 0.05]], dtype=torch.float64)
    np.testing.assert_allclose(
        value("margin_mse", {}, s, t).item(), ref_margin_mse_embeddings(s.numpy(), t.numpy())
    )
    assert value("margin_mse", {}, s, t).item() > 0.1


@pytest.mark.parametrize(
    ("name", "params", "rows"),
    [
        ("sim_mse", {}, 1),
        ("margin_mse", {}, 1),
        ("margin_mse", {}, 2),
        ("listwise_kl", {}, 1),
    ],
)
def test_batches_too_small_for_relations_give_zero_and_keep_the_graph(name, params, rows) -> None:
    s = torch.tensor(draw((rows, 3), 1), requires_grad=True)
    loss = value(name, params, s, torch.tensor(draw((rows, 4), 2)))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()


def test_infonce_with_one_row_is_zero() -> None:
    assert value("infonce", {}, torch.ones(1, 3), torch.ones(1, 3) * 2).item() == 0


# --------------------------------------------------------------------------------------------
# 5. a 256-d student of a 384-d teacher in a Distiller
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["auto", "linear"])
def test_distiller_projects_a_narrower_student_for_the_element_wise_losses(adapter: str) -> None:
    torch.manual_seed(0)
    student = Student(nn.Linear(16, 256), outputs=("embedding",))
    teacher = Teacher(nn.Linear(16, 384), outputs=("embedding",))
    terms = [
        Term("cosine", build_loss("cosine"), adapter=adapter),
        Term("infonce", build_loss("infonce", {"learnable_temperature": True}), adapter="auto"),
        Term("sim_mse", build_loss("sim_mse")),  # relations: widths may differ
        Term("margin_mse", build_loss("margin_mse")),
        Term("listwise_kl", build_loss("listwise_kl", {"temperature": 0.05})),
    ]
    distiller = Distiller(student, terms, teacher=teacher)
    x = torch.randn(8, 16)
    batch = {"views": {"student": x, "teacher": x}}
    distiller.check(batch)
    assert distiller.ready and set(distiller.adapters) == {"cosine", "infonce"}
    assert distiller.adapters["cosine"](torch.zeros(2, 256)).shape == (2, 384)
    _, out = distiller(batch)
    assert set(out) == {t.name for t in terms}
    sum(out.values()).backward()
    assert student.model.weight.grad is not None
    assert distiller.losses["infonce"].log_temperature.grad is not None
    assert "losses.infonce.log_temperature" in distiller.trainable().state_dict()


@pytest.mark.parametrize("name", ["cosine", "infonce"])
def test_without_an_adapter_a_width_mismatch_says_to_add_one(name: str) -> None:
    with pytest.raises(ShapeError, match=r"'embedding' \(4, 256\).*'embedding' \(4, 384\)") as e:
        value(name, {}, torch.randn(4, 256), torch.randn(4, 384))
    assert "adapter: auto" in str(e.value)


# --------------------------------------------------------------------------------------------
# 6. bad input and recipe parameters
# --------------------------------------------------------------------------------------------


def test_every_new_loss_is_registered() -> None:
    assert set(NEW) <= set(LOSSES.names())


@pytest.mark.parametrize("name", NEW)
def test_wrong_rank_and_batch_mismatch_name_both_keys_and_shapes(name: str) -> None:
    loss = build_loss(name, {"student": "features/a", "teacher": "embedding"})
    with pytest.raises(ShapeError, match=r"'features/a' \(4\).*'embedding' \(4, 3\)"):
        loss(kn(torch.randn(4), "s", "features/a"), kn(torch.randn(4, 3), "t"))
    with pytest.raises(ShapeError, match=r"batch sizes differ.*\(4, 3\).*\(5, 3\)"):
        loss(kn(torch.randn(4, 3), "s", "features/a"), kn(torch.randn(5, 3), "t"))
    with pytest.raises(KnowledgeError, match="features/a"):
        loss(kn(torch.randn(4, 3), "s"), kn(torch.randn(4, 3), "t"))


@pytest.mark.parametrize("name", ["margin_mse", "listwise_kl"])
def test_ranking_losses_refuse_token_states(name: str) -> None:
    with pytest.raises(ShapeError, match=r"rank 2.*'embedding' \(4, 5, 3\)"):
        value(name, {}, torch.randn(4, 5, 3), torch.randn(4, 5, 3))


@pytest.mark.parametrize("name", ["margin_mse", "listwise_kl"])
def test_score_mode_needs_the_same_candidates_on_both_sides(name: str) -> None:
    with pytest.raises(ShapeError, match=r"score mode.*'scores' \(4, 3\).*'scores' \(4, 5\)") as e:
        value(name, SCORES, torch.randn(4, 3), torch.randn(4, 5))
    assert "mode: embeddings" in str(e.value)
    with pytest.raises(ShapeError, match=r"at least 2 candidates.*\(4, 1\)"):
        value(name, SCORES, torch.randn(4, 1), torch.randn(4, 1))


def test_mode_follows_the_scores_key_unless_set() -> None:
    assert build_loss("margin_mse").mode == "embeddings"
    assert build_loss("margin_mse", SCORES).mode == "scores"
    assert build_loss("listwise_kl", {"teacher": "scores"}).mode == "scores"
    assert build_loss("margin_mse", {**SCORES, "mode": "embeddings"}).mode == "embeddings"
    # embeddings under the scores key, read as embeddings: widths may then differ
    got = value(
        "margin_mse",
        {**SCORES, "mode": "embeddings"},
        *map(torch.tensor, (draw((5, 3), 1), draw((5, 6), 2))),
    )
    np.testing.assert_allclose(
        got.item(), ref_margin_mse_embeddings(draw((5, 3), 1), draw((5, 6), 2)), rtol=1e-9
    )


RECIPE_LOSSES = [
    {"name": "cosine", "adapter": "linear"},
    {"name": "sim_mse", "weight": 1.0, "params": {"exclude_diagonal": False}},
    {"name": "infonce", "adapter": "auto", "params": {"temperature": 0.05, "symmetric": True}},
    {"name": "margin_mse", "params": {"student": "scores", "teacher": "scores"}},
    {"name": "listwise_kl", "label": "listwise", "params": {"temperature": 0.1}},
]


def test_recipe_loss_entries_build_and_bad_params_name_their_yaml_path() -> None:
    terms = [build_term(LossSpec(**e), f"losses[{i}]") for i, e in enumerate(RECIPE_LOSSES)]
    assert [t.name for t in terms] == ["cosine", "sim_mse", "infonce", "margin_mse", "listwise"]
    assert terms[0].adapter == "linear" and terms[3].loss.mode == "scores"
    bad = LossSpec(name="infonce", params={"temperature": "cold", "queue": 3})
    with pytest.raises(ConfigError) as info:
        build_term(bad, "losses[2]")
    message = str(info.value)
    assert "losses[2].params.temperature" in message and "losses[2].params.queue" in message
    assert "learnable_temperature" in message  # the hint lists what it accepts


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("cosine", {"temperature": 1.0}, "temperature"),
        ("cosine", {"student": 3}, "student"),
        ("sim_mse", {"exclude_diagonal": "sometimes"}, "exclude_diagonal"),
        ("sim_mse", {"temperature": 0.1}, "temperature"),
        ("infonce", {"temperature": 0.0}, "temperature"),
        ("infonce", {"temperature": "hot"}, "temperature"),
        ("infonce", {"symmetric": "both"}, "symmetric"),
        ("infonce", {"min_temperature": -1.0}, "min_temperature"),
        ("infonce", {"learnable_temperature": True, "temperature": 0.001}, "min_temperature"),
        ("infonce", {"queue_size": 10}, "queue_size"),
        ("margin_mse", {"mode": "pairs"}, "mode"),
        ("margin_mse", {"similarity": "euclidean"}, "similarity"),
        ("margin_mse", {"temperature": 1.0}, "temperature"),
        ("listwise_kl", {"temperature": -1.0}, "temperature"),
        ("listwise_kl", {"temperature": float("inf")}, "temperature"),
        ("listwise_kl", {"similarity": "l2"}, "similarity"),
    ],
)
def test_bad_hyper_parameters_are_config_errors(name: str, params: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        build_loss(name, params)


def test_float16_inputs_are_computed_in_float32() -> None:
    s, t = torch.randn(6, 8).half(), torch.randn(6, 8).half()
    for name in NEW:
        got = value(name, {}, s, t)
        assert got.dtype == torch.float32 and torch.isfinite(got), name
        torch.testing.assert_close(got, value(name, {}, s.float(), t.float()))


# --------------------------------------------------------------------------------------------
# 7. DDP: two gloo processes against one process on the concatenated batch
# --------------------------------------------------------------------------------------------

WORLD, LOCAL_B, DS, DT = 2, 3, 5, 7
DDP_LOSSES: dict[str, tuple[str, dict[str, Any], bool]] = {  # name → (loss, params, same width)
    "infonce": ("infonce", {"temperature": 0.3}, True),
    "infonce_sym_learned": (
        "infonce",
        {"symmetric": True, "learnable_temperature": True, "temperature": 0.2},
        True,
    ),
    "sim_mse": ("sim_mse", {}, False),
    "sim_mse_diag": ("sim_mse", {"exclude_diagonal": False}, False),
    "margin_mse": ("margin_mse", {}, False),
    "listwise_kl": ("listwise_kl", {"temperature": 0.5}, False),
}


def ddp_step(s: torch.Tensor, t: torch.Tensor) -> dict[str, dict[str, Any]]:
    out = {}
    for key, (name, params, same) in DDP_LOSSES.items():
        loss = build_loss(name, params).double()
        a = s.clone().requires_grad_(True)
        b = (s * 0.5 + t[:, :DS] if same else t).clone().requires_grad_(True)
        v = loss(kn(a, "s"), kn(b, "t"))
        v.backward()
        out[key] = {
            "value": v.detach(),
            "grad_s": a.grad,
            "grad_t": b.grad,
            "params": {n: p.grad.clone() for n, p in loss.named_parameters()},
        }
    return out


def ddp_worker(rank: int, init: str, out: str, s: torch.Tensor, t: torch.Tensor) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        part = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        torch.save(ddp_step(s[part], t[part]), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_batch_losses_under_ddp_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    s = torch.tensor(draw((WORLD * LOCAL_B, DS), 11))
    t = torch.tensor(draw((WORLD * LOCAL_B, DT), 12))
    mp.spawn(ddp_worker, args=(f"file://{tmp_path / 'init'}", str(tmp_path), s, t), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = ddp_step(s, t)
    for key, one in single.items():
        # negatives / relations span the global batch: the mean of the ranks' values is the
        # loss of the whole batch (a local-only loss would differ)
        mean = sum(r[key]["value"] for r in ranks) / WORLD
        torch.testing.assert_close(mean, one["value"], rtol=0, atol=1e-12, msg=key)
        for side in ("grad_s", "grad_t"):
            averaged = torch.cat([r[key][side] for r in ranks]) / WORLD  # DDP's average
            torch.testing.assert_close(averaged, one[side], rtol=0, atol=1e-12, msg=key)
        for n, g in one["params"].items():
            avg = sum(r[key]["params"][n] for r in ranks) / WORLD
            torch.testing.assert_close(avg, g, rtol=0, atol=1e-12, msg=n)
    local = value("infonce", {"temperature": 0.3}, s[:LOCAL_B], (s * 0.5 + t[:, :DS])[:LOCAL_B])
    assert abs(local.item() - ranks[0]["infonce"]["value"].item()) > 1e-3


@pytest.mark.parametrize("case", BENCH_CASES, ids=lambda c: c.id)
def test_bench_cases_agree_with_their_reference(case) -> None:
    """The benchmark's cases at small shapes: our loss equals the NumPy reference (float64)."""
    got, expected = case.small_values()
    np.testing.assert_allclose(got, expected, rtol=1e-9)
