"""How one Knowledge key is held on disk: dense (float16/float32) or top-k logits.

Top-k keeps, per row of ``(B, C)`` logits, the k largest values, their class indices and the
probability mass of the other ``C - k`` classes (FKD, Shen & Xing, arXiv:2112.01528; MobileCLIP's
reinforced datasets, arXiv:2311.17049). Decoding gives log-probabilities whose top-k entries are
exact (a softmax at any temperature is shift-invariant, so a loss reading them as logits sees the
same top-k probabilities at T = 1) and whose tail spreads the remaining mass evenly.

With ``tail_bits`` top-k also keeps the tail's shape: each of the ``C - k`` other logits is held
as a ``tail_bits``-bit code of its distance below the k-th largest, uniform over
``[0, tail_range]`` (farther ones share the last code), packed in class order. Decoding gives
the tail those logits, scaled so that it still holds exactly the stored remaining mass: the
top-k stay exact and the tail keeps its order to the codes' resolution. KD at a temperature T
softens the target so that a good part of it lies in the tail (Hinton et al., arXiv:1503.02531),
which an even spread gets wrong.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from crossdistill.config import StoreKeySpec
from crossdistill.errors import ConfigError, ShapeError

DTYPES = {"float16": np.float16, "float32": np.float32}
# The tail of a decoded top-k row never has probability exactly 0: KL terms would be NaN.
_MIN_TAIL = 1e-12
# The span of logits below the k-th largest that tail codes cover when a recipe names none:
# at T = 4 a class 16 logits below the k-th weighs exp(-4) ~ 2% of it (see docs/store.md).
DEFAULT_TAIL_RANGE = 16.0


def _unset(value: object) -> bool:
    return value is None


class KeyCodec(BaseModel):
    """The on-disk format of one Knowledge key: its ``shape`` per example is filled in by the
    writer from the teacher's first forward. ``tail_bits``/``tail_range`` (top-k only) are left
    out of the manifest when unset, so stores written before they existed read the same."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["dense", "topk"] = "dense"
    k: PositiveInt | None = None
    dtype: Literal["float16", "float32"] = "float16"
    shape: list[int] | None = None
    tail_bits: int | None = Field(None, ge=1, le=8, exclude_if=_unset)
    tail_range: PositiveFloat | None = Field(None, exclude_if=_unset)

    @classmethod
    def of(cls, spec: StoreKeySpec | None, dtype: str) -> KeyCodec:
        """The codec a recipe's ``store.keys`` entry asks for (``None``: dense), in the entry's
        dtype or else ``dtype`` (the store's)."""
        if spec is None:
            return cls(dtype=dtype)
        options = spec.model_dump(exclude_none=True)
        return cls(**{**options, "dtype": spec.dtype or dtype})

    @model_validator(mode="after")
    def _tail_settings(self) -> KeyCodec:
        if self.tail_bits is not None and self.tail_range is None:
            self.tail_range = DEFAULT_TAIL_RANGE
        if (self.tail_bits is not None or self.tail_range is not None) and (
            self.format != "topk" or self.tail_bits is None
        ):
            raise ValueError("tail_range needs tail_bits, and tail_bits format: topk")
        return self

    def _tail(self) -> int:
        """How many classes the top-k leave (the tail)."""
        assert self.shape is not None and self.k is not None
        return self.shape[0] - self.k

    def tail_bytes(self) -> int:
        """Bytes per row of the packed tail codes (0 without ``tail_bits``)."""
        if self.tail_bits is None:
            return 0
        return math.ceil(self._tail() * self.tail_bits / 8)

    def arrays(self, key: str) -> list[str]:
        """The names of the arrays this key is stored as inside a shard."""
        if self.format == "dense":
            return [key]
        names = [f"{key}.values", f"{key}.indices", f"{key}.rest"]
        return names + ([f"{key}.tail"] if self.tail_bits is not None else [])

    def row_shapes(self, key: str) -> dict[str, tuple[int, ...]]:
        """Each array of this key (see :meth:`arrays`) and its shape per example and slot."""
        assert self.shape is not None
        if self.format == "dense":
            return {key: tuple(self.shape)}
        assert self.k is not None
        shapes = {f"{key}.values": (self.k,), f"{key}.indices": (self.k,), f"{key}.rest": ()}
        if self.tail_bits is not None:
            shapes[f"{key}.tail"] = (self.tail_bytes(),)
        return shapes

    def row_bytes(self) -> int:
        """Bytes of one example's slot of this key on disk (without the file's header)."""
        assert self.shape is not None
        item = np.dtype(DTYPES[self.dtype]).itemsize
        if self.format == "dense":
            return item * math.prod(self.shape)
        assert self.k is not None
        return self.k * (item + self._index_dtype().itemsize) + 4 + self.tail_bytes()

    def _index_dtype(self) -> np.dtype:
        assert self.shape is not None
        return np.dtype(np.int16 if self.shape[0] <= np.iinfo(np.int16).max else np.int32)

    def check(self, key: str, shape: tuple[int, ...]) -> KeyCodec:
        """A copy with ``shape`` filled in; refuses top-k of anything but ``(C,)`` rows."""
        update: dict[str, object] = {"shape": list(shape)}
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
            if self.tail_bits is not None and self.k == shape[0]:
                raise ConfigError(
                    f"store key {key!r}: tail_bits codes the classes outside the top-k, and "
                    f"k={self.k} keeps all {shape[0]}",
                    hint="leave tail_bits out, or lower k",
                )
        return self.model_copy(update=update)

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
        out = {
            f"{key}.values": values.numpy().astype(dtype),
            f"{key}.indices": indices.numpy().astype(self._index_dtype()),
            f"{key}.rest": rest.numpy(),
        }
        if self.tail_bits is not None:
            # codes relative to the k-th value as stored, so the decoder sees the same anchor
            kth = torch.from_numpy(out[f"{key}.values"][..., -1:].astype(np.float32))
            out[f"{key}.tail"] = self._encode_tail(x, indices, kth)
        return out

    def _tail_mask(self, indices: torch.Tensor) -> torch.Tensor:
        """``(n, C)``: True at the classes outside each row's top-k."""
        assert self.shape is not None
        mask = torch.ones(*indices.shape[:-1], self.shape[0], dtype=torch.bool)
        return mask.scatter_(-1, indices, False)

    def _step(self) -> float:
        """The logit distance between two neighbouring tail codes."""
        assert self.tail_bits is not None and self.tail_range is not None
        return self.tail_range / (2**self.tail_bits - 1)

    def _encode_tail(self, x: torch.Tensor, indices: torch.Tensor, kth: torch.Tensor) -> np.ndarray:
        """The tail's codes, ``round((k-th - logit) / step)`` clipped to the code range, in
        class order, packed ``tail_bits`` at a time (big-endian bits) into bytes."""
        assert self.tail_bits is not None
        rows = indices.shape[0]
        gaps = (kth - x)[self._tail_mask(indices)].view(rows, self._tail())
        codes = (gaps / self._step()).round().clamp_(0, 2**self.tail_bits - 1)
        bits = np.unpackbits(codes.numpy().astype(np.uint8)[..., None], axis=-1)
        bits = bits[..., 8 - self.tail_bits :].reshape(rows, -1)
        return np.packbits(bits, axis=-1)

    def _decode_tail(self, packed: np.ndarray) -> torch.Tensor:
        """``(n, tail_bytes)`` packed codes → ``(n, C - k)`` logits below the k-th value."""
        assert self.tail_bits is not None
        tail = self._tail()
        bits = np.unpackbits(packed, axis=-1, count=tail * self.tail_bits)
        bits = bits.reshape(*packed.shape[:-1], tail, self.tail_bits)
        weights = 1 << np.arange(self.tail_bits - 1, -1, -1, dtype=np.int64)
        codes = torch.from_numpy((bits.astype(np.int64) * weights).sum(-1))
        return -self._step() * codes.to(torch.float32)

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
        if self.tail_bits is not None and self._tail() > 0:
            lead = rest.shape
            flat = np.asarray(arrays[f"{key}.tail"]).reshape(-1, self.tail_bytes())
            shape = self._decode_tail(flat).view(*lead, self._tail())
            # the tail's log-probabilities: its decoded shape holding exactly the rest's mass
            tail = torch.log(rest.clamp_min(_MIN_TAIL)).unsqueeze(-1) + shape.log_softmax(-1)
            out = torch.empty(*lead, classes)
            out[self._tail_mask(indices.view(-1, self.k)).view(*lead, classes)] = tail.flatten()
            return out.scatter_(-1, indices, values - log_z.unsqueeze(-1))
        tail = max(classes - self.k, 1)  # with k = C the fill is overwritten everywhere
        fill = torch.log(rest.clamp_min(_MIN_TAIL) / tail)
        out = fill.unsqueeze(-1).expand(*rest.shape, classes).clone()
        return out.scatter_(-1, indices, values - log_z.unsqueeze(-1))
