"""A small Vision Transformer (Dosovitskiy et al. 2021, arXiv:2010.11929) for the zoo.

Made to be tapped: each block's output is ``blocks.<i>`` (tokens ``(B, 1 + N, D)``, CLS first),
its attention probabilities are the output of ``blocks.<i>.attn.probs`` (``(B, heads, 1+N, 1+N)``)
and its values (before the split into heads) of ``blocks.<i>.attn.values`` (``(B, 1+N, D)``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from crossdistill.errors import ConfigError
from crossdistill.models.registry import MODELS


class Attention(nn.Module):
    """Multi-head self-attention written out, so that its probabilities pass through a module."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.values = nn.Identity()  # a tap point: V before the split into heads
        self.probs = nn.Identity()  # a tap point: softmax(QKᵀ/√d) per head
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(self.values(v))
        attn = self.probs(torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(x.shape)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@MODELS.register("vit")
class ViT(nn.Module):
    """Patch embedding (a strided conv), a CLS token, learned positions, ``depth`` blocks, and a
    linear head on the CLS token (``pool="cls"``) or on the mean of the patch tokens."""

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 4,
        in_channels: int = 1,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        pool: Literal["cls", "mean"] = "cls",
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(
                f"vit: image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        if dim % heads:
            raise ConfigError(f"vit: dim {dim} is not a multiple of heads {heads}")
        self.pool = pool
        self.grid = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid**2, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = self.norm(self.blocks(torch.cat([cls, tokens], dim=1) + self.pos_embed))
        return self.head(x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1))
