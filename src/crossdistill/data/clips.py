"""Audio clips of different lengths in one flat array, served as fixed-length waveforms.

:class:`Clips` is a column of a :class:`~crossdistill.data.split.Split` (a ``"speech"`` field):
one int16 array of every clip and the clip boundaries, so a split of thousands of clips is two
arrays, and a batch of fixed-length float32 waveforms stacks without a custom collate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from crossdistill._util.files import atomic_path
from crossdistill.data.checks import check_index
from crossdistill.errors import DataError


class Clips:
    """Variable-length 16-bit audio clips in one array, served as fixed-length waveforms.

    ``samples`` is the concatenation of every clip (int16), ``offsets`` the ``N + 1`` clip
    boundaries. ``clips[i]`` is a float32 tensor of ``max_samples`` in [-1, 1]: clip ``i``
    followed by silence, or its middle ``max_samples`` when it is longer.
    """

    def __init__(
        self, samples: np.ndarray, offsets: np.ndarray, sample_rate: int, max_samples: int
    ) -> None:
        offsets = np.asarray(offsets, dtype=np.int64)
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise DataError(f"clips: samples must be a flat int16 array, got {samples.dtype}")
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0:
            raise DataError("clips: offsets must start at 0")
        if np.any(np.diff(offsets) < 0) or offsets[-1] != len(samples):
            raise DataError(
                f"clips: offsets must rise to the {len(samples)} samples, got end {offsets[-1]}"
            )
        if max_samples < 1:
            raise DataError(f"clips: max_samples must be positive, got {max_samples}")
        self.samples = samples
        self.offsets = offsets
        self.sample_rate = int(sample_rate)
        self.max_samples = int(max_samples)

    @classmethod
    def from_list(cls, clips: Sequence[np.ndarray], sample_rate: int, max_samples: int) -> Clips:
        """Clips from float arrays in [-1, 1] (or int16 arrays)."""
        parts = [_as_int16(c) for c in clips]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
        return cls(flat, offsets, sample_rate, max_samples)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, i: int) -> int:
        """Samples in clip ``i`` before padding or cropping."""
        return int(self.offsets[i + 1] - self.offsets[i])

    def __getitem__(self, i: int) -> torch.Tensor:
        i = check_index(i, len(self))
        clip = self.samples[self.offsets[i] : self.offsets[i + 1]]
        if len(clip) > self.max_samples:
            start = (len(clip) - self.max_samples) // 2
            clip = clip[start : start + self.max_samples]
        out = torch.zeros(self.max_samples, dtype=torch.float32)
        out[: len(clip)] = torch.from_numpy(clip.astype(np.float32) / 32768.0)
        return out

    def save(self, path: str | Path) -> None:
        """Write ``samples`` and ``offsets`` as one ``.npz`` (NumPy only, no pickle), atomically:
        a crash leaves the old file or the new one, never half of it."""
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(
                f,
                samples=self.samples,
                offsets=self.offsets,
                meta=np.array([self.sample_rate, self.max_samples], dtype=np.int64),
            )

    def fingerprint(self) -> str:
        """A SHA-256 of the audio, the clip boundaries, the rate and the served length."""
        h = hashlib.sha256(np.ascontiguousarray(self.samples).tobytes())
        h.update(np.ascontiguousarray(self.offsets).tobytes())
        h.update(f"{self.sample_rate}/{self.max_samples}".encode())
        return h.hexdigest()

    @classmethod
    def load(cls, path: str | Path) -> Clips:
        """Clips written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as f:
                sample_rate, max_samples = (int(v) for v in f["meta"])
                return cls(f["samples"], f["offsets"], sample_rate, max_samples)
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(
                f"cannot read audio clips {path}: {exc}",
                hint="delete the file: it is rebuilt from the generated wavs",
            ) from None


def _as_int16(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.int16:
        return x
    return (np.clip(np.asarray(x, dtype=np.float32), -1.0, 32767 / 32768) * 32768).astype(np.int16)
