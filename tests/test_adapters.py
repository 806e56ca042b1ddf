"""Adapters: shapes, the automatic choice, the layout of tokens on a grid, and how a recipe's
``adapter:`` is built, trained, checkpointed and left out of the exported student."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from crossdistill import Distiller, Student, Tap, Teacher, Term, load_recipe, run_recipe
from crossdistill.config import TapSpec
from crossdistill.core.adapters import ADAPTERS, Adapter, auto_adapter, build_adapter
from crossdistill.core.adapters._grid import resample, resample_1d, token_grid
from crossdistill.core.wrappers import EnsembleTeacher
from crossdistill.errors import ConfigError, ShapeError, UnknownNameError
from crossdistill.losses import Loss, build_loss
from crossdistill.models.zoo.cnn import SmallCNN
from crossdistill.models.zoo.vit import ViT
from crossdistill.train.trainer import Trainer

AUTO = [  # student shape, teacher shape, the adapter `auto` picks
    ((8,), (8,), "identity"),
    ((8,), (16,), "linear"),
    ((50, 32), (50, 64), "linear"),
    ((16, 7, 7), (64, 7, 7), "conv1x1"),
    ((16, 14, 14), (64, 7, 7), "conv1x1"),
    ((16, 4, 4), (64, 7, 7), "conv1x1"),
    ((32, 7, 7), (50, 64), "map_to_tokens"),
    ((32, 7, 7), (49, 64), "map_to_tokens"),
    ((50, 32), (64, 7, 7), "tokens_to_map"),
    ((49, 32), (64, 14, 14), "tokens_to_map"),
    ((50, 32), (17, 64), "tokens_to_tokens"),
    ((32, 7, 7), (128,), "pool"),
    ((50, 32), (128,), "pool"),
]


@pytest.mark.parametrize(("student", "teacher", "expected"), AUTO)
def test_auto_picks_the_simplest_adapter_and_it_maps_the_shape(student, teacher, expected):
    assert auto_adapter(student, teacher) == expected
    adapter = build_adapter("auto", student, teacher)
    x = torch.randn(3, *student, requires_grad=True)
    out = adapter(x)
    assert out.shape == (3, *teacher)
    out.square().sum().backward()  # differentiable end to end, every parameter trained
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in adapter.parameters())


@pytest.mark.parametrize(
    ("student", "teacher"),
    [((8,), (3, 4, 4)), ((8,), (50, 8)), ((30, 8), (4, 7, 7)), ((4, 7, 7), (30, 8))],
)
def test_no_adapter_bridges_these_shapes(student, teacher):
    with pytest.raises(ShapeError, match="no adapter maps a student") as info:
        auto_adapter(student, teacher)
    assert str(tuple(student)) in str(info.value) and str(tuple(teacher)) in str(info.value)


def test_a_named_adapter_that_cannot_map_the_shapes_is_refused():
    with pytest.raises(ShapeError, match="adapter 'linear' cannot map a student map"):
        build_adapter("linear", (16, 7, 7), (64, 7, 7))


def test_adapter_params_are_validated_and_names_checked():
    with pytest.raises(ConfigError, match="hiden"):
        build_adapter({"name": "linear", "params": {"hiden": 8}}, (8,), (16,))
    with pytest.raises(UnknownNameError, match="did you mean 'linear'"):
        build_adapter("linaer", (8,), (16,))
    mlp = build_adapter({"name": "linear", "params": {"hidden": 32}}, (8,), (16,))
    assert sum(p.numel() for p in mlp.parameters()) == 8 * 32 + 32 + 32 * 16 + 16


def test_token_grid_tells_cls_from_patches():
    assert token_grid(49) == (7, 0)
    assert token_grid(50) == (7, 1)
    assert token_grid(1) == (1, 0)
    assert token_grid(7) is None


def test_resample_averages_whole_blocks_and_interpolates_otherwise():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    pooled = resample(x, (2, 2))
    assert pooled[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 4
    assert resample(x, (4, 4)) is x
    assert resample(x, (3, 3)).shape == (1, 1, 3, 3)


def _identity_(linear_or_conv: nn.Module) -> None:
    with torch.no_grad():
        w = linear_or_conv.weight
        w.zero_()
        w.view(w.shape[0], w.shape[1])[:] = torch.eye(w.shape[0], w.shape[1])
        linear_or_conv.bias.zero_()


def test_tokens_to_map_lays_patch_tokens_out_row_major_like_the_vit_patch_embedding():
    # The ViT flattens its patch grid row by row (Conv2d → flatten(2)); the adapter must put
    # token 1 + r*g + c back at (r, c), and drop the CLS token.
    side, dim = 3, 4
    adapter = build_adapter("tokens_to_map", (1 + side * side, dim), (dim, side, side))
    _identity_(adapter.conv)
    grid = torch.randn(2, dim, side, side)
    tokens = torch.cat([torch.full((2, 1, dim), 99.0), grid.flatten(2).transpose(1, 2)], dim=1)
    torch.testing.assert_close(adapter(tokens), grid)


def test_map_to_tokens_is_the_inverse_layout_with_a_mean_cls_token():
    side, dim = 3, 4
    adapter = build_adapter("map_to_tokens", (dim, side, side), (1 + side * side, dim))
    _identity_(adapter.proj)
    grid = torch.randn(2, dim, side, side)
    tokens = adapter(grid)
    torch.testing.assert_close(tokens[:, 1:], grid.flatten(2).transpose(1, 2))
    torch.testing.assert_close(tokens[:, 0], grid.mean(dim=(2, 3)))


def test_map_to_tokens_agrees_with_the_vit_patch_order():
    # A real ViT's tokens come from the same row-major flattening the adapters assume.
    vit = ViT(image_size=8, patch_size=2, dim=4, depth=1, heads=1)
    x = torch.randn(1, 1, 8, 8)
    patches = vit.patch_embed(x)  # (1, 4, 4, 4)
    tokens = patches.flatten(2).transpose(1, 2)
    adapter = build_adapter("tokens_to_map", (16, 4), (4, 4, 4))
    _identity_(adapter.conv)
    torch.testing.assert_close(adapter(tokens), patches)


def test_pool_takes_the_cls_token_or_the_mean():
    with_cls = build_adapter("pool", (50, 8), (8,))
    no_cls = build_adapter({"name": "pool", "params": {"cls_token": False}}, (50, 8), (8,))
    for a in (with_cls, no_cls):
        _identity_(a.proj)
    x = torch.randn(2, 50, 8)
    torch.testing.assert_close(with_cls(x), x[:, 0])
    torch.testing.assert_close(no_cls(x), x.mean(dim=1))


def test_every_registered_adapter_is_covered_here():
    assert set(ADAPTERS.names()) == {name for *_, name in AUTO + LAYOUT_AUTO}


# ------------------------------------------------------------------------ layouts: 1-D maps

LAYOUT_AUTO = [  # student shape and declared layout, teacher's, the adapter `auto` picks
    ((16, 50), "NCT", (32, 50), "NCT", "conv1x1_1d"),
    ((16, 50), "NCT", (32, 25), "NCT", "conv1x1_1d"),
    ((16, 50), "NCT", (16, 100), "NCT", "conv1x1_1d"),  # resampled in time, not `linear` across it
    ((16, 50), "NCT", (16, 50), "NCT", "identity"),
    ((16, 50), "NCT", (128,), None, "pool"),
    ((16, 50), "NLD", (64, 50), "NLD", "tokens_to_tokens"),  # declared tokens: 4×4 grid meant
    ((50, 32), "NLD", (50, 64), None, "linear"),
    ((16, 7, 7), "NCHW", (64, 7, 7), None, "conv1x1"),
]


@pytest.mark.parametrize(("student", "s_layout", "teacher", "t_layout", "expected"), LAYOUT_AUTO)
def test_auto_reads_declared_layouts(student, s_layout, teacher, t_layout, expected):
    layouts = {"student_layout": s_layout, "teacher_layout": t_layout}
    assert auto_adapter(student, teacher, **layouts) == expected
    adapter = build_adapter("auto", student, teacher, **layouts)
    x = torch.randn(3, *student, requires_grad=True)
    out = adapter(x)
    assert out.shape == (3, *teacher)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in adapter.parameters())


NCT = {"student_layout": "NCT", "teacher_layout": "NCT"}


def _pointwise(adapter: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a 1×1 Conv1d computes, independently: the same channel mix at every time step."""
    return torch.einsum("oc,bct->bot", adapter.conv.weight[:, :, 0], x) + adapter.conv.bias[:, None]


def test_conv1x1_1d_mixes_channels_at_every_time_step():
    # (B, 16, 50) → (B, 32, 50): the documented map, without its norm
    adapter = build_adapter(
        {"name": "conv1x1_1d", "params": {"norm": "none"}}, (16, 50), (32, 50), **NCT
    )
    x = torch.randn(3, 16, 50)
    torch.testing.assert_close(adapter(x), _pointwise(adapter, x))


def test_conv1x1_1d_resamples_time_before_the_conv():
    # shrinking by 2 averages pairs of steps
    adapter = build_adapter({"name": "conv1x1_1d", "params": {"norm": "none"}}, (4, 50), (6, 25))
    x = torch.randn(2, 4, 50)
    torch.testing.assert_close(adapter(x), _pointwise(adapter, x.reshape(2, 4, 25, 2).mean(-1)))
    grow = build_adapter({"name": "conv1x1_1d", "params": {"norm": "none"}}, (4, 25), (6, 50))
    y = torch.randn(2, 4, 25)
    torch.testing.assert_close(
        grow(y), _pointwise(grow, torch.from_numpy(_linear(y.numpy(), 50)).float())
    )


def test_conv1x1_1d_normalises_each_channel_by_default_or_by_groups():
    adapter = build_adapter("conv1x1_1d", (16, 50), (32, 50), **NCT)
    out = adapter(torch.randn(4, 16, 50) * 5 + 3)  # training mode: the batch's statistics
    torch.testing.assert_close(out.mean(dim=(0, 2)), torch.zeros(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out.var(dim=(0, 2), unbiased=False), torch.ones(32), atol=1e-3, rtol=0
    )
    grouped = build_adapter(
        {"name": "conv1x1_1d", "params": {"norm": "group", "groups": 4}}, (16, 50), (32, 50), **NCT
    )
    assert isinstance(grouped.norm, nn.GroupNorm) and grouped.norm.num_groups == 4
    with pytest.raises(ConfigError, match="groups=5 does not divide the teacher's 32 channels"):
        build_adapter(
            {"name": "conv1x1_1d", "params": {"norm": "group", "groups": 5}}, (16, 50), (32, 50)
        )
    with pytest.raises(ConfigError, match="norm"):
        build_adapter({"name": "conv1x1_1d", "params": {"norm": "layer"}}, (16, 50), (32, 50))


def _adaptive_mean(x: np.ndarray, n: int) -> np.ndarray:
    """Output step i averages input steps floor(i t / n) .. ceil((i + 1) t / n) - 1."""
    t = x.shape[-1]
    windows = [x[..., (i * t) // n : -(-(i + 1) * t // n)] for i in range(n)]
    return np.stack([w.mean(-1) for w in windows], axis=-1)


def _linear(x: np.ndarray, n: int) -> np.ndarray:
    """Output step i reads input position (i + 0.5) t / n - 0.5 (half-step centres, ends held)."""
    t = x.shape[-1]
    where = np.clip((np.arange(n) + 0.5) * t / n - 0.5, 0, t - 1)
    return np.apply_along_axis(lambda row: np.interp(where, np.arange(t), row), -1, x)


@pytest.mark.parametrize(("t", "n"), [(50, 25), (50, 13), (7, 3), (25, 50), (13, 50), (50, 50)])
def test_resample_1d_pools_when_shrinking_and_interpolates_when_growing(t, n):
    x = torch.randn(2, 3, t, dtype=torch.float64)
    reference = _adaptive_mean(x.numpy(), n) if n < t else _linear(x.numpy(), n)
    torch.testing.assert_close(resample_1d(x, n), torch.from_numpy(reference))
    assert resample_1d(x, t) is x


def test_pool_averages_a_1d_map_over_time():
    adapter = build_adapter("pool", (8, 50), (8,), student_layout="NCT")
    _identity_(adapter.proj)
    x = torch.randn(2, 8, 50)
    torch.testing.assert_close(adapter(x), x.mean(dim=2))
    with pytest.raises(ConfigError, match="crossdistill supplies itself"):
        build_adapter({"name": "pool", "params": {"student_layout": "NLD"}}, (8, 50), (8,))


@pytest.mark.parametrize(
    ("spec", "student", "teacher"),
    [
        ({"name": "conv1x1_1d", "params": {"norm": "none"}}, (3, 8), (4, 5)),  # 8 → 5 steps
        ("conv1x1_1d", (3, 5), (4, 8)),  # growing, through BatchNorm
        ({"name": "conv1x1_1d", "params": {"norm": "group", "groups": 2}}, (3, 8), (4, 8)),
        ("pool", (3, 8), (4,)),
    ],
)
def test_gradcheck_of_the_1d_adapters(spec, student, teacher):
    layout = "NCT" if len(teacher) == 2 else None
    adapter = build_adapter(spec, student, teacher, student_layout="NCT", teacher_layout=layout)
    adapter = adapter.double()
    names = [name for name, _ in adapter.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in adapter.parameters()]

    def f(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(adapter, dict(zip(names, values, strict=True)), (x,))

    x = torch.randn(3, *student, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize(
    ("student", "s_layout", "teacher", "t_layout", "says"),
    [
        # as tokens, 16 channels would be a 4×4 grid resampled to 8×8
        ((16, 50), None, (64, 50), None, "the student (16, 50) is NLD (read from its rank)"),
        ((16, 50), None, (32, 50), None, "the teacher (32, 50) is NLD (read from its rank)"),
        ((10, 50), None, (5, 50), None, "1 + g² tokens, g ≥ 4"),  # 1 + 3², 1 + 2²: sensors
        ((16, 50), None, (32, 50), "NCT", "the teacher (32, 50) is NCT (declared)"),
        ((16, 50), "NCT", (16, 50), None, "the student (16, 50) is NCT (declared)"),
        ((16, 50), "NCT", (50, 32), None, "may be a 1-D map as well as tokens"),
        ((32, 50), None, (17, 64), "NLD", "the student (32, 50) is NLD (read from its rank)"),
    ],
)
def test_auto_will_not_guess_what_an_undeclared_rank_2_tensor_is(
    student, s_layout, teacher, t_layout, says
):
    with pytest.raises(ShapeError, match="will not guess the layout of a rank-2 tensor") as info:
        auto_adapter(student, teacher, student_layout=s_layout, teacher_layout=t_layout)
    assert says in str(info.value)
    assert "declare `layout:` on the tap: NCT for a 1-D map" in str(info.value)


def test_rank_2_tensors_without_a_layout_stay_tokens_where_that_is_evident():
    assert auto_adapter((50, 32), (17, 64)) == "tokens_to_tokens"  # CLS + 7×7, CLS + 4×4
    assert auto_adapter((16, 50), (16, 100)) == "linear"  # same length: projected per token
    assert auto_adapter((16, 50), (64, 7, 7)) == "tokens_to_map"  # a 1-D map has no 2-D route
    assert auto_adapter((16, 50), (8,)) == "pool"  # as tokens: averaged over its 16 rows
    with pytest.raises(ShapeError, match="declare `layout: NCT` on the tap of a 1-D map"):
        auto_adapter((30, 8), (4, 7, 7))


def test_a_declared_layout_that_contradicts_the_rank_is_refused():
    student = Student(SmallCNN(width=4), taps=[Tap("map", "block3", layout="NCT")])
    with pytest.raises(ShapeError) as info:
        student(torch.randn(2, 1, 28, 28))
    message = str(info.value)
    assert "tap 'map' on module 'block3' declares layout NCT" in message
    assert "(2, 16, 7, 7)" in message and "its layout is NCHW" in message
    with pytest.raises(ShapeError, match="the teacher is declared NLD, tokens"):
        build_adapter("auto", (16, 50), (32, 50, 2), student_layout="NCT", teacher_layout="NLD")
    with pytest.raises(ConfigError, match="unknown layout 'nct'"):
        Tap("map", "block3", layout="nct")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"a vector \(layout ND\) cannot be pooled"):
        Tap("vec", "pool", layout="ND", pool=2)


def test_a_2d_adapter_named_on_a_1d_map_points_at_the_1d_one():
    with pytest.raises(ShapeError) as info:
        build_adapter("conv1x1", (16, 50), (32, 50), "loss 'fit'", **NCT)
    message = str(info.value)
    assert "adapter 'conv1x1' cannot map a student 1-D map (16, 50) [NCT]" in message
    assert "'conv1x1_1d' can" in message
    with pytest.raises(ShapeError, match="'conv1x1_1d' can"):
        build_adapter("linear", (16, 50), (16, 100), **NCT)  # not across time
    with pytest.raises(ShapeError, match="adapter 'conv1x1_1d' cannot map a student tokens"):
        build_adapter("conv1x1_1d", (16, 50), (32, 50), student_layout="NLD")


def test_a_named_adapter_says_how_it_reads_an_undeclared_rank_2_tensor():
    assert build_adapter("conv1x1_1d", (16, 50), (32, 50)).layouts == ("NCT", "NCT")
    assert build_adapter("linear", (16, 50), (16, 100)).layouts == ("NLD", "NLD")
    assert build_adapter("auto", (16, 7, 7), (8,)).layouts == ("NCHW", "ND")


class _Legacy(Adapter):
    """An adapter written before layouts: its ``bridges`` takes shapes only."""

    @classmethod
    def bridges(cls, student, teacher):
        return len(student) == len(teacher) == 2

    def __init__(self, student_shape, teacher_shape) -> None:
        super().__init__()
        self.proj = nn.Linear(student_shape[-1], teacher_shape[-1])

    def forward(self, x):
        return self.proj(x)


def test_an_adapter_that_knows_no_layouts_is_never_given_a_1d_map():
    assert build_adapter({"name": _Legacy}, (16, 50), (16, 40)).layouts == ("NLD", "NLD")
    with pytest.raises(ShapeError, match="cannot map a student 1-D map"):
        build_adapter({"name": _Legacy}, (16, 50), (16, 40), **NCT)


def test_taps_and_wrappers_carry_the_declared_layout():
    spec = TapSpec(name="map", path="conv2", layout="NCT")
    assert Tap(**spec.model_dump()).layout == "NCT"  # how build_wrapper makes its taps
    x = torch.randn(2, 3, 50)
    pooled = Tap("map", "x", pool=5, layout="NCT").capture(x, "map")  # 5 time steps
    torch.testing.assert_close(pooled, x.reshape(2, 3, 5, 10).mean(-1))
    student = Student(_Net1d(8), taps=[Tap("map", "conv2", layout="NCT"), Tap("h", "conv1")])
    assert student.layout_of("features/map") == "NCT"
    assert student.layout_of("features/h") is None and student.layout_of("logits") is None
    ensemble = EnsembleTeacher([Teacher(_Net1d(8)), Teacher(_Net1d(8), taps=student.taps)])
    assert ensemble.layout_of("member1/features/map") == "NCT"
    assert ensemble.layout_of("member0/features/map") is None
    assert ensemble.layout_of("member7/features/map") is None


# ------------------------------------------------------------------------ in the Distiller


def _cnn_vit_distiller(adapter="auto", loss="fitnet"):
    teacher = Teacher(
        SmallCNN(width=4), taps=[Tap("map", "block3")]
    )  # map (16, 7, 7) on 28×28 inputs
    student = Student(
        ViT(image_size=28, patch_size=4, dim=8, depth=1, heads=2), taps=[Tap("tok", "blocks.0")]
    )
    fit = build_loss(loss, {"student": "features/tok", "teacher": "features/map"})
    terms = [Term("ce", build_loss("ce")), Term("fit", fit, adapter=adapter)]
    return Distiller(student, terms, teacher=teacher)


def _batch(n=4):
    x = torch.randn(n, 1, 28, 28)
    return {"views": {"student": x, "teacher": x}, "target": torch.arange(n) % 10}


def test_distiller_builds_auto_adapters_from_real_shapes_in_check():
    distiller = _cnn_vit_distiller()
    assert not distiller.ready
    with pytest.raises(ConfigError, match=r"call distiller.check\(batch\)"):
        Trainer(distiller)
    distiller.check(_batch())
    assert distiller.ready
    assert type(distiller.adapters["fit"]).__name__ == "TokensToMap"
    _, terms = distiller(_batch())
    terms["fit"].backward()
    assert distiller.adapters["fit"].conv.weight.grad is not None
    # adapters count as extra parameters and are trained, the teacher is not
    assert distiller.extra_parameters() == 8 * 16 + 16
    assert "adapters.fit.conv.weight" in distiller.trainable().state_dict()


def test_a_shape_no_adapter_bridges_names_both_taps_before_training():
    teacher = Teacher(SmallCNN(width=4), taps=[Tap("map", "block3")])
    student = Student(SmallCNN(width=2), taps=[Tap("vec", "pool")])  # (B, 8) vector
    fit = build_loss("fitnet", {"student": "features/vec", "teacher": "features/map"})
    distiller = Distiller(student, [Term("fit", fit, adapter="auto")], teacher=teacher)
    with pytest.raises(ShapeError) as info:
        distiller.check(_batch())
    message = str(info.value)
    assert "'features/vec' (the output of module 'pool') (4, 8)" in message
    assert "'features/map' (the output of module 'block3') (4, 16, 7, 7)" in message


def test_without_an_adapter_a_shape_mismatch_says_to_add_one():
    distiller = _cnn_vit_distiller(adapter=None)
    with pytest.raises(ShapeError, match="adapter: auto"):
        distiller.check(_batch())


class _TwoStudentTensors(Loss):
    """Reads two student tensors (the logit losses declare their needs from their keys now)."""

    needs_student = ("logits", "embedding")
    needs_teacher = ("logits",)


def test_an_adapter_on_a_loss_reading_two_student_tensors_is_refused():
    loss = _TwoStudentTensors()
    with pytest.raises(ConfigError, match="an adapter maps one student tensor"):
        Distiller(Student(nn.Linear(2, 2)), [Term("kd", loss, adapter="auto")])


# ------------------------------------------------------------------------ from a recipe

DIGITS_KD = Path(__file__).resolve().parent.parent / "recipes" / "digits" / "kd.yaml"
WITH_ADAPTER = [
    "student.taps=[{name: map, path: block2}]",  # (B, 8, 2, 2) on 8×8 digits
    "teacher.taps=[{name: map, path: block3}]",  # (B, 64, 2, 2)
    "losses=[{name: ce, weight: 0.5}, {name: kd, weight: 0.5}, {name: fitnet, weight: 0.1, "
    "adapter: auto, params: {student: features/map, teacher: features/map}}]",
]


def _last_trainable(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(sorted((run_dir / "checkpoints").iterdir())[-1] / "trainable.safetensors"))


def test_recipe_adapter_is_trained_checkpointed_resumed_and_not_exported(
    tmp_path: Path, teacher_weights: Path
) -> None:
    def recipe(out: str):
        base = [f"teacher.weights={teacher_weights}", f"output.dir={tmp_path / out}"]
        return load_recipe(DIGITS_KD, [*base, "train.progress=false", *WITH_ADAPTER])

    run_dir = run_recipe(recipe("full")).run_dir
    assert "fitnet" in (run_dir / "metrics.jsonl").read_text()
    exported = load_file(str(run_dir / "student.safetensors"))
    assert not any("adapter" in k or "fitnet" in k for k in exported)
    full = _last_trainable(run_dir)
    adapter_keys = [k for k in full if k.startswith("adapters.fitnet.")]
    assert "adapters.fitnet.conv.weight" in adapter_keys

    # The same run interrupted after its first epoch and resumed ends bit-identical.
    again = run_recipe(recipe("again")).run_dir
    for checkpoint in sorted((again / "checkpoints").iterdir())[1:]:
        for f in checkpoint.iterdir():
            f.unlink()
        checkpoint.rmdir()
    for name in ("student.safetensors", "student.json", "eval.json"):
        (again / name).unlink()
    run_recipe(recipe("again"), resume=True)
    resumed = _last_trainable(again)
    for key in adapter_keys:
        assert torch.equal(resumed[key], full[key]), key


# ------------------------------------------------------------------------ 1-D CNNs in the Distiller


class _Net1d(nn.Module):
    """A 1-D CNN over (B, 3, 50) signals: ``conv2`` emits a (B, width, 50 / stride) map."""

    def __init__(self, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, width, 3, padding=1)
        self.conv2 = nn.Conv1d(width, width, 3, stride=stride, padding=1)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(h.mean(dim=-1))


def _signals(n: int = 8) -> dict:
    x = torch.randn(n, 3, 50)
    return {"views": {"student": x, "teacher": x}, "target": torch.arange(n) % 10}


def _1d_distiller(layout: str | None) -> Distiller:
    torch.manual_seed(0)
    teacher = Teacher(_Net1d(32, stride=2), taps=[Tap("map", "conv2", layout=layout)])  # 32 × 25
    student = Student(_Net1d(16), taps=[Tap("map", "conv2", layout=layout)])  # 16 × 50
    fit = build_loss("fitnet", {"student": "features/map", "teacher": "features/map"})
    terms = [Term("ce", build_loss("ce")), Term("fit", fit, adapter="auto")]
    return Distiller(student, terms, teacher=teacher)


def test_a_distiller_between_1d_cnns_picks_conv1x1_1d_logs_it_and_trains(caplog):
    distiller = _1d_distiller("NCT")
    batch = _signals()
    with caplog.at_level(logging.INFO, logger="crossdistill.core.distiller"):
        distiller.check(batch)
    assert distiller.adapter_choices == {"fit": "conv1x1_1d"}
    assert type(distiller.adapters["fit"]).__name__ == "Conv1x1_1d"
    logged = caplog.text
    assert "loss 'fit': auto chose adapter 'conv1x1_1d'" in logged
    assert "'features/map' (16, 50) (NCT)" in logged and "'features/map' (32, 25) (NCT)" in logged

    optimizer = torch.optim.SGD(distiller.trainable().parameters(), lr=0.05)
    before = [p.detach().clone() for p in distiller.student.parameters()]
    fits = []
    for _ in range(10):
        _, terms = distiller(batch)
        optimizer.zero_grad()
        sum(terms.values()).backward()
        assert all(
            p.grad is not None and torch.isfinite(p.grad).all()
            for p in distiller.trainable().parameters()
        )
        optimizer.step()
        fits.append(terms["fit"].item())
    assert all(np.isfinite(fits)) and fits[-1] < fits[0]
    after = distiller.student.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_distiller_between_undeclared_1d_maps_asks_for_their_layout():
    with pytest.raises(ShapeError) as info:
        _1d_distiller(None).check(_signals())
    message = str(info.value)
    assert "loss 'fit': adapter: auto will not guess the layout of a rank-2 tensor" in message
    assert "the student (16, 50) is NLD (read from its rank)" in message
    assert "'features/map' (the output of module 'conv2') (8, 16, 50)" in message
    assert "declare `layout:` on the tap" in message


def test_the_distiller_logs_layouts_it_read_from_the_rank(caplog):
    distiller = _cnn_vit_distiller()
    with caplog.at_level(logging.INFO, logger="crossdistill.core.distiller"):
        distiller.check(_batch())
    assert distiller.adapter_choices == {"fit": "tokens_to_map"}
    assert "(50, 8) (NLD, read from its rank)" in caplog.text
    assert "(16, 7, 7) (NCHW, read from its rank)" in caplog.text
