"""The reference models: shapes, parameter counts, and the ViT's tap points."""

from __future__ import annotations

import pytest
import torch

from crossdistill.errors import ConfigError
from crossdistill.models.registry import build_model


@pytest.mark.parametrize(
    ("name", "params", "count"),
    [
        ("cnn", {"width": 8}, 6_274),
        ("resnet", {"widths": [16, 32, 64], "blocks": [1, 1, 1]}, 77_754),
        ("vit", {"dim": 64, "depth": 4, "heads": 4}, 139_018),
        ("vit", {"dim": 32, "depth": 2, "heads": 2}, 19_658),
    ],
)
def test_zoo_models_classify_fashion_mnist_sized_images(name, params, count):
    model = build_model(name, params)
    assert sum(p.numel() for p in model.parameters()) == count  # the sizes docs/results.md reports
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_vit_tap_points_have_the_documented_shapes():
    vit = build_model("vit", {"dim": 16, "depth": 2, "heads": 4, "patch_size": 7})
    seen = {}
    for path in ("blocks.1", "blocks.1.attn.probs", "blocks.1.attn.values"):
        module = dict(vit.named_modules())[path]
        module.register_forward_hook(lambda m, a, out, path=path: seen.__setitem__(path, out))
    vit(torch.randn(2, 1, 28, 28))
    assert seen["blocks.1"].shape == (2, 1 + 16, 16)  # CLS + 4×4 patches
    assert seen["blocks.1.attn.values"].shape == (2, 17, 16)
    probs = seen["blocks.1.attn.probs"]
    assert probs.shape == (2, 4, 17, 17)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 17))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_head_reads_the_cls_token_or_the_mean_of_the_patches(pool):
    vit = build_model("vit", {"dim": 8, "depth": 1, "heads": 2, "pool": pool})
    normed = {}
    vit.norm.register_forward_hook(lambda m, a, out: normed.__setitem__("x", out))
    logits = vit(torch.randn(2, 1, 28, 28))
    x = normed["x"]
    pooled = x[:, 0] if pool == "cls" else x[:, 1:].mean(dim=1)
    torch.testing.assert_close(logits, vit.head(pooled))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"image_size": 28, "patch_size": 5}, "not a multiple of patch_size"),
        ({"dim": 30, "heads": 4}, "not a multiple of heads"),
    ],
)
def test_vit_refuses_shapes_it_cannot_build(params, message):
    with pytest.raises(ConfigError, match=message):
        build_model("vit", params)
