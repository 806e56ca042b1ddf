"""Paired data: the same example in two modalities, a different one on each side.

A :class:`PairSplit` holds each example once per *modality* (``"text"``, ``"speech"``,
``"image"``) and says which modality each *view* sees: by default the teacher reads the text
and the student hears (or sees) the other modality. A view may also take several modalities at
once as a dict (a two-tower student reads ``{"text": str, "speech": waveform}``).

Audio clips have different lengths; :class:`Clips` keeps them in one flat int16 array and hands
out fixed-length float32 waveforms (zero-padded, or the middle cut out of a longer clip), so a
batch stacks without a custom collate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill._util.files import atomic_path
from crossdistill.data.checks import check_index, to_float
from crossdistill.data.text import TextDataset
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


@dataclass
class PairSplit:
    """One split of paired data: example ``i`` is ``modalities[m][i]`` in each modality ``m``.

    ``sides`` maps a view name to the modality it sees (or a tuple of modalities: a dict view).
    ``meta`` holds per-example columns for evaluation (e.g. ``text_id``: which distinct text a
    clip speaks; ``voice``), each of length N.
    """

    modalities: dict[str, Any]  # "text": list[str]; "speech": Clips; "image": (N, C, H, W) tensor
    targets: torch.Tensor | None
    class_names: list[str]
    name: str
    sides: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "text" not in self.modalities:
            raise DataError(f"paired split {self.name!r} has no 'text' modality")
        lengths = {m: len(v) for m, v in self.modalities.items()}
        lengths.update({f"meta {k}": len(v) for k, v in self.meta.items()})
        if self.targets is not None:
            lengths["targets"] = len(self.targets)
        if len(set(lengths.values())) > 1:
            raise DataError(f"paired split {self.name!r}: lengths differ: {lengths}")
        if not all(isinstance(t, str) for t in self.modalities["text"]):
            raise DataError(f"paired split {self.name!r}: texts must be str")
        other = [m for m in self.modalities if m != "text"]
        defaults = {"teacher": "text", "student": other[0] if other else "text"}
        self.sides = {**defaults, **self.sides}
        for view, wanted in self.sides.items():
            for m in (wanted,) if isinstance(wanted, str) else wanted:
                if m not in self.modalities:
                    raise DataError(
                        f"paired split {self.name!r}: view {view!r} wants modality {m!r}",
                        hint=f"modalities here: {sorted(self.modalities)}",
                    )

    @property
    def texts(self) -> list[str]:
        """The text of every example (what a text teacher reads; what a store sizes by)."""
        return self.modalities["text"]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _item(value: Any, i: int) -> Any:
    x = value[i]
    return to_float(x) if isinstance(x, torch.Tensor) else x


class PairDataset(TextDataset):
    """Examples ``{id, views: {"teacher": text, "student": clip or image}, target?, aug}``.

    The interface of :class:`TextDataset`, so the trainer and a knowledge store take it as they
    are: a text teacher's outputs depend on the text alone, which the store keys by example.
    """

    split: PairSplit  # type: ignore[assignment]

    def example(self, i: int, params: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """Example ``i``, each view in the modality the split's ``sides`` give it."""
        i = check_index(i, len(self))
        if np.asarray(params).size != 0:
            raise DataError(f"paired example {i}: paired data takes no augmentation parameters")
        views: dict[str, Any] = {}
        for name in self.views:
            wanted = self.split.sides.get(name, "text")
            if isinstance(wanted, str):
                views[name] = _item(self.split.modalities[wanted], i)
            else:
                views[name] = {m: _item(self.split.modalities[m], i) for m in wanted}
        out: dict[str, Any] = {"id": i, "views": views, "aug": torch.empty(0, dtype=torch.float32)}
        if self.split.targets is not None:
            out["target"] = torch.tensor(int(self.split.targets[i]), dtype=torch.int64)
        return out
