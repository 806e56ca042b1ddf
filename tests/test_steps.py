"""Pipeline steps (``crossdistill.data.steps``): each step's output against a hand computation or
a torch reference, its errors, tracing, and a pipeline built from recipe specs."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.data.steps import PIPELINE_STEPS, build_pipeline
from crossdistill.errors import ConfigError, ShapeError


def step(name: str, **params: object) -> nn.Module:
    return PIPELINE_STEPS.build(name, params)


def grid(*shape: int) -> torch.Tensor:
    """0, 1, 2, ... as a float tensor of ``shape``: every output value says where it came from."""
    return torch.arange(float(torch.Size(shape).numel())).reshape(shape)


def test_the_steps_are_registered() -> None:
    expected = {"normalize", "resize", "to_rgb", "center_crop", "pad", "select", "frame"}
    assert expected <= set(PIPELINE_STEPS.names())


# ----------------------------------------------------------------------------- normalize


def test_normalize_per_channel_and_shared() -> None:
    x = torch.tensor([[[[1.0, 3.0]], [[2.0, 6.0]]]])  # (1, 2, 1, 2)
    out = step("normalize", mean=[1.0, 2.0], std=[2.0, 4.0])(x)
    assert torch.allclose(out, torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]]]]))
    shared = step("normalize", mean=[1.0], std=[2.0])(x)
    assert torch.allclose(shared, (x - 1.0) / 2.0)
    signal = step("normalize", mean=[0.5], std=[0.5])(torch.ones(2, 1, 5))  # (B, C, T)
    assert torch.allclose(signal, torch.ones(2, 1, 5))


def test_normalize_refuses_values_for_other_channel_counts() -> None:
    norm = step("normalize", mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    with pytest.raises(ShapeError) as info:
        norm(torch.rand(2, 1, 4, 4))  # broadcasting would make 3 channels of 1
    assert "mean has 3 values but the input has 1 channel " in info.value.message
    assert "to_rgb" in info.value.hint and "one mean value per channel" in info.value.hint
    with pytest.raises(ShapeError, match="std has 2 values but the input has 3 channels"):
        step("normalize", mean=[0.5], std=[0.2, 0.3])(torch.rand(2, 3, 4, 4))
    with pytest.raises(ShapeError, match=r"\(B, C, \.\.\.\)"):
        step("normalize", mean=[0.5], std=[0.2])(torch.rand(4))


def test_normalize_refuses_bad_values() -> None:
    with pytest.raises(ConfigError, match="std must be positive"):
        step("normalize", mean=[0.0], std=[0.0])
    with pytest.raises(ConfigError, match="at least one value"):
        step("normalize", mean=[], std=[1.0])


# ----------------------------------------------------------------------------- resize


def test_resize_matches_bilinear_interpolation_and_keeps_a_same_size_input() -> None:
    x = torch.rand(2, 3, 5, 7)
    out = step("resize", size=[10, 6])(x)
    assert torch.equal(out, F.interpolate(x, size=(10, 6), mode="bilinear", align_corners=False))
    assert step("resize", size=5)(torch.rand(1, 1, 8, 8)).shape == (1, 1, 5, 5)
    assert step("resize", size=[5, 7])(x) is x
    with pytest.raises(ConfigError, match="size must be a positive int or 2 positive ints"):
        step("resize", size=[4, 4, 4])


# ----------------------------------------------------------------------------- to_rgb


def test_to_rgb_repeats_one_channel() -> None:
    x = torch.rand(2, 1, 3, 4)
    out = step("to_rgb")(x)
    assert torch.equal(out, torch.cat([x, x, x], dim=1))
    out[:, 1] = 0  # a copy: writing one channel leaves the others and the input alone
    assert torch.equal(out[:, 0], x[:, 0])


@pytest.mark.parametrize(
    ("shape", "match", "hint"),
    [
        ((2, 3, 4, 4), "repeats a 1-channel image, got 3 channels", "3 channels already"),
        ((2, 2, 4, 4), "repeats a 1-channel image, got 2 channels", "select"),
        ((2, 4, 4), r"takes \(B, 1, H, W\) images, got a 3-d tensor", "view"),
    ],
)
def test_to_rgb_refuses_other_inputs(shape: tuple[int, ...], match: str, hint: str) -> None:
    with pytest.raises(ShapeError, match=match) as info:
        step("to_rgb")(torch.rand(shape))
    assert hint in info.value.hint
    with pytest.raises(ConfigError, match="bad parameters"):
        step("to_rgb", channels=3)


# ----------------------------------------------------------------------------- center_crop


def test_center_crop_by_hand() -> None:
    x = grid(1, 1, 4, 5)  # rows 0..3, columns 0..4: value 5 * row + column
    assert torch.equal(step("center_crop", size=2)(x)[0, 0], torch.tensor([[6.0, 7.0], [11, 12]]))
    # odd margins: (4 - 1) // 2 = 1 row and (5 - 2) // 2 = 1 column before the window
    assert torch.equal(step("center_crop", size=[1, 2])(x)[0, 0], torch.tensor([[6.0, 7.0]]))
    assert torch.equal(step("center_crop", size=[4, 5])(x), x)


def test_center_crop_refuses_a_crop_larger_than_the_input() -> None:
    with pytest.raises(ShapeError, match="a 6x2 crop is larger than the 4x5 input") as info:
        step("center_crop", size=[6, 2])(torch.rand(1, 1, 4, 5))
    assert "pad" in info.value.hint
    with pytest.raises(ConfigError, match="size must be a positive int"):
        step("center_crop", size=0)


# ----------------------------------------------------------------------------- pad


def test_pad_to_a_size_by_hand() -> None:
    x = torch.ones(1, 2, 2, 3)
    out = step("pad", size=[5, 4], value=-1.0)(x)
    # 3 more rows: 1 above, 2 below; 1 more column: after
    expected = torch.full((1, 2, 5, 4), -1.0)
    expected[:, :, 1:3, 0:3] = 1.0
    assert torch.equal(out, expected)
    # center_crop back to the input's size undoes it, odd margins included
    assert torch.equal(step("center_crop", size=[2, 3])(out), x)
    assert torch.equal(step("pad", size=[2, 3])(x), x)


def test_pad_by_amounts_matches_f_pad() -> None:
    x = torch.rand(2, 3, 4, 5)
    out = step("pad", amounts=[1, 2, 3, 0], value=0.5)(x)  # top, bottom, left, right
    assert torch.equal(out, F.pad(x, (3, 0, 1, 2), value=0.5))
    assert torch.equal(step("pad", amounts=2)(x), F.pad(x, (2, 2, 2, 2)))
    signal = torch.rand(2, 1, 6)  # (B, C, T): [start, end], or a length
    assert torch.equal(step("pad", amounts=[0, 3])(signal), F.pad(signal, (0, 3)))
    assert torch.equal(step("pad", size=9)(signal), F.pad(signal, (1, 2)))


def test_pad_refusals() -> None:
    with pytest.raises(ConfigError, match=r"either size .* or amounts"):
        step("pad")
    with pytest.raises(ConfigError, match=r"either size .* or amounts"):
        step("pad", size=4, amounts=1)
    with pytest.raises(ConfigError, match="amounts must be ints of at least 0"):
        step("pad", amounts=[-1, 0])
    with pytest.raises(ShapeError, match=r"cannot pad to \[3, 3\]: the input is larger") as info:
        step("pad", size=3)(torch.rand(1, 1, 4, 2))
    assert "center_crop" in info.value.hint
    with pytest.raises(ShapeError, match=r"amounts has 2 values; .* 2 dimensions .* need 4"):
        step("pad", amounts=[1, 1])(torch.rand(1, 1, 4, 4))


# ----------------------------------------------------------------------------- select


def test_select_keeps_channels_in_order() -> None:
    x = torch.rand(2, 4, 3, 3)
    out = step("select", channels=[3, 0, 0])(x)
    assert torch.equal(out, torch.stack([x[:, 3], x[:, 0], x[:, 0]], dim=1))
    signal = torch.rand(2, 3, 10)
    assert torch.equal(step("select", channels=[1])(signal), signal[:, 1:2])


def test_select_refuses_a_missing_channel() -> None:
    with pytest.raises(ShapeError, match="channel 3 does not exist: the input has 3 channels") as i:
        step("select", channels=[0, 3])(torch.rand(2, 3, 4, 4))
    assert "from 0 to 2" in i.value.hint
    with pytest.raises(ConfigError, match="channel indices"):
        step("select", channels=[-1])
    with pytest.raises(ConfigError, match="channel indices"):
        step("select", channels=[])


# ----------------------------------------------------------------------------- frame


def test_frame_by_hand() -> None:
    x = grid(1, 2, 7)  # channel 0: 0..6, channel 1: 7..13
    out = step("frame", size=3, hop=2)(x)
    assert out.shape == (1, 3, 2, 3)  # F = 1 + (7 - 3) // 2 = 3
    assert torch.equal(out[0, 1], torch.tensor([[2.0, 3, 4], [9, 10, 11]]))
    assert out.is_contiguous()
    # hop defaults to size: frames side by side, the last (7 - 3) % 3 = 1 sample dropped
    flat = step("frame", size=3)(grid(2, 7))  # (B, T) -> (B, F, size)
    assert torch.equal(flat[1], torch.tensor([[7.0, 8, 9], [10, 11, 12]]))


@pytest.mark.parametrize(("t", "size", "hop"), [(16, 4, 4), (17, 5, 3), (5, 5, 1), (9, 2, 7)])
def test_frame_against_slicing(t: int, size: int, hop: int) -> None:
    x = torch.rand(2, 3, t)
    starts = range(0, t - size + 1, hop)  # every frame that fits whole
    reference = torch.stack([x[..., s : s + size] for s in starts], dim=1)
    out = step("frame", size=size, hop=hop)(x)
    assert out.shape == (2, 1 + (t - size) // hop, 3, size)  # the docstring's count
    assert torch.equal(out, reference)


def test_frame_refusals() -> None:
    with pytest.raises(ShapeError, match=r"frame of 8 samples is longer than the signal \(5\)"):
        step("frame", size=8)(torch.rand(2, 1, 5))
    with pytest.raises(ShapeError, match=r"\(B, C, T\) or \(B, T\) signals"):
        step("frame", size=2)(torch.rand(2, 1, 4, 4))
    with pytest.raises(ConfigError, match="hop must be a positive int"):
        step("frame", size=4, hop=0)


# ----------------------------------------------------------------------------- graphs


TRACED = [
    ("to_rgb", {}, (2, 1, 6, 6)),
    ("center_crop", {"size": [3, 4]}, (2, 3, 6, 7)),
    ("pad", {"size": [8, 9], "value": 0.5}, (2, 3, 5, 6)),
    ("pad", {"amounts": [1, 2]}, (2, 3, 10)),
    ("select", {"channels": [2, 0]}, (2, 3, 4, 4)),
    ("frame", {"size": 4, "hop": 2}, (2, 3, 10)),
    ("frame", {"size": 4}, (2, 12)),
    ("normalize", {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 2.0]}, (2, 3, 4, 4)),
]


@pytest.mark.parametrize(("name", "params", "shape"), TRACED)
def test_steps_trace(name: str, params: dict, shape: tuple[int, ...]) -> None:
    module = step(name, **params)
    x = torch.rand(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no Python branch on a tensor
        traced = torch.jit.trace(module, (x,))
    assert torch.equal(traced(x), module(x))
    other = torch.rand(5, *shape[1:])  # another batch size
    assert torch.equal(traced(other), module(other))


def test_a_pipeline_from_recipe_specs() -> None:
    specs = [
        {"name": "to_rgb"},
        {"name": "resize", "params": {"size": 4}},
        {"name": "normalize", "params": {"mean": [0.5, 1.0, 0.0], "std": [0.5, 1.0, 2.0]}},
    ]
    pipeline = build_pipeline(specs, "student.pipeline")
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])  # (1, 1, 2, 2)
    out = pipeline(x)
    # a 2x2 -> 4x4 bilinear resize (align_corners=False) of [[0, 1], [1, 0]], by hand
    up = torch.tensor(
        [
            [0.0, 0.25, 0.75, 1.0],
            [0.25, 0.375, 0.625, 0.75],
            [0.75, 0.625, 0.375, 0.25],
            [1.0, 0.75, 0.25, 0.0],
        ]
    )
    expected = torch.stack([(up - 0.5) / 0.5, up - 1.0, up / 2.0]).unsqueeze(0)
    assert torch.allclose(out, expected)
    assert pipeline.plugin_spec == [
        {"name": "to_rgb", "params": {}},
        {"name": "resize", "params": {"size": 4}},
        {"name": "normalize", "params": {"mean": [0.5, 1.0, 0.0], "std": [0.5, 1.0, 2.0]}},
    ]
    assert isinstance(build_pipeline([]), nn.Identity)


def test_pipeline_errors_name_the_recipe_path() -> None:
    with pytest.raises(ConfigError, match=r"^student.pipeline\[1\]: pipeline step 'center_crop'"):
        build_pipeline(
            [{"name": "to_rgb"}, {"name": "center_crop", "params": {"size": 0}}], "student.pipeline"
        )
    with pytest.raises(ConfigError, match=r"student.pipeline\[0\].params.sizes"):
        build_pipeline([{"name": "resize", "params": {"sizes": 4}}], "student.pipeline")
    pipeline = build_pipeline(
        [{"name": "normalize", "params": {"mean": [0.5] * 3, "std": [0.5] * 3}}], "teacher.pipeline"
    )
    with pytest.raises(ShapeError, match=r"^teacher.pipeline\[0\] \(normalize\): mean has 3"):
        pipeline(torch.rand(2, 1, 4, 4))


def test_steps_export_to_onnx(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    image = build_pipeline(
        [
            {"name": "to_rgb"},
            {"name": "center_crop", "params": {"size": [5, 6]}},
            {"name": "pad", "params": {"size": 8, "value": 0.5}},
            {"name": "select", "params": {"channels": [2, 1]}},
            {"name": "normalize", "params": {"mean": [0.5], "std": [0.25]}},
        ]
    )
    signal = build_pipeline(
        [
            {"name": "pad", "params": {"amounts": [0, 2]}},
            {"name": "frame", "params": {"size": 4, "hop": 3}},
        ]
    )
    for pipeline, x in ((image, torch.rand(2, 1, 7, 7)), (signal, torch.rand(2, 3, 11))):
        path = tmp_path / "steps.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                pipeline,
                (x,),
                str(path),
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
        session = ort.InferenceSession(str(path))
        batch = torch.cat([x, x, x])
        (out,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
        assert torch.allclose(torch.from_numpy(out), pipeline(batch), atol=1e-6)
