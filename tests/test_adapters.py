"""Adapters: shapes, the automatic choice, the layout of tokens on a grid, and how a recipe's
``adapter:`` is built, trained, checkpointed and left out of the exported student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from crossdistill import Distiller, Student, Tap, Teacher, Term, load_recipe, run_recipe
from crossdistill.core.adapters import ADAPTERS, auto_adapter, build_adapter
from crossdistill.core.adapters._grid import resample, token_grid
from crossdistill.errors import ConfigError, ShapeError, UnknownNameError
from crossdistill.losses import build_loss
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
    assert set(ADAPTERS.names()) == {name for *_, name in AUTO}


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


def test_an_adapter_on_a_loss_reading_two_student_tensors_is_refused():
    loss = build_loss("kd")
    loss.needs_student = ("logits", "embedding")  # type: ignore[misc]
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
