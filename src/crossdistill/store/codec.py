"""How one Knowledge key is held on disk: dense (float16/float32) or top-k logits.

Top-k keeps, per row of ``(B, C)`` logits, the k largest values, their class indices and the
probability mass of the other ``C - k`` classes (FKD, Shen & Xing, arXiv:2112.01528; MobileCLIP's
reinforced datasets, arXiv:2311.17049). Decoding gives log-probabilities whose top-k entries are
exact (a softmax at any temperature is shift-invariant, so a loss reading them as logits sees the
same top-k probabilities at T = 1) and whose tail spreads the remaining mass evenly.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, PositiveInt

from crossdistill.errors import ConfigError, ShapeError

DTYPES = {"float16": np.float16, "float32": np.float32}
# The tail of a decoded top-k row never has probability exactly 0: KL terms would be NaN.
_MIN_TAIL = 1e-12


class KeyCodec(BaseModel):
    """The on-disk format of one Knowledge key: its ``shape`` per example is filled in by the
    writer from the teacher's first forward."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["dense", "topk"] = "dense"
    k: PositiveInt | None = None
    dtype: Literal["float16", "float32"] = "float16"
    shape: list[int] | None = None

    def arrays(self, key: str) -> list[str]:
        """The names of the arrays this key is stored as inside a shard."""
        if self.format == "dense":
            return [key]
        return [f"{key}.values", f"{key}.indices", f"{key}.rest"]

    def row_shapes(self, key: str) -> dict[str, tuple[int, ...]]:
        """Each array of this key (see :meth:`arrays`) and its shape per example and slot."""
        assert self.shape is not None
        if self.format == "dense":
            return {key: tuple(self.shape)}
        assert self.k is not None
        return {f"{key}.values": (self.k,), f"{key}.indices": (self.k,), f"{key}.rest": ()}

    def check(self, key: str, shape: tuple[int, ...]) -> KeyCodec:
        """A copy with ``shape`` filled in; refuses top-k of anything but ``(C,)`` rows."""
        if self.format == "topk":
            if len(shape) != 1:
                raise ShapeError(
                    f"store key {key!r}: top-k needs logits of shape (B, C), got (B, "
                    f"{', '.join(map(str, shape))})",
                    hint=f"store {key!r} dense (format: dense)",
                )
            if self.k is None or self.k > shape[0]:
                raise ConfigError(
                    f"store key {key!r}: top-k needs 1 <= k <= {shape[0]} classes, got k={self.k}"
                )
        return self.model_copy(update={"shape": list(shape)})

    def encode(self, key: str, x: torch.Tensor) -> dict[str, np.ndarray]:
        """``(B, *shape)`` teacher outputs → the arrays of a shard's rows."""
        x = x.detach().to(torch.float32).cpu()
        dtype = DTYPES[self.dtype]
        if self.format == "dense":
            return {key: x.numpy().astype(dtype)}
        assert self.k is not None and self.shape is not None
        values, indices = x.topk(self.k, dim=-1)
        # the tail's mass summed directly: 1 - (top-k mass) would cancel to a few digits
        rest = torch.softmax(x, dim=-1).scatter(-1, indices, 0.0).sum(-1)
        index_dtype = np.int16 if self.shape[0] <= np.iinfo(np.int16).max else np.int32
        return {
            f"{key}.values": values.numpy().astype(dtype),
            f"{key}.indices": indices.numpy().astype(index_dtype),
            f"{key}.rest": rest.numpy(),
        }

    def decode(self, key: str, arrays: dict[str, np.ndarray]) -> torch.Tensor:
        """The arrays of some rows → a float32 tensor ``(n, *shape)`` (log-probabilities for
        top-k)."""
        if self.format == "dense":
            return torch.from_numpy(np.array(arrays[key], dtype=np.float32))
        assert self.shape is not None and self.k is not None
        values = torch.from_numpy(np.array(arrays[f"{key}.values"], dtype=np.float32))
        indices = torch.from_numpy(np.array(arrays[f"{key}.indices"], dtype=np.int64))
        rest = torch.from_numpy(np.array(arrays[f"{key}.rest"], dtype=np.float32))
        classes = self.shape[0]
        # the top-k hold 1 - rest of the mass: log Z = logsumexp(top-k) - log(1 - rest)
        log_z = values.logsumexp(-1) - torch.log1p(-rest.clamp(max=1 - 1e-7))
        tail = max(classes - self.k, 1)  # with k = C the fill is overwritten everywhere
        fill = torch.log(rest.clamp_min(_MIN_TAIL) / tail)
        out = fill.unsqueeze(-1).expand(*rest.shape, classes).clone()
        return out.scatter_(-1, indices, values - log_z.unsqueeze(-1))
