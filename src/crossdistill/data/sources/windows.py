"""``windows``: long 1-D signals of another source cut into fixed windows, one example each.

For frame-level models (a sensor's activity every two seconds, a sound event every 100 ms) and
for long recordings: a source's ``(N, C, T)`` or ``(N, T)`` tensor, or its audio clips (every
sample of them, not the few seconds a clip is served as), become ``(M, C, size)`` windows. A
window's label is the source example's own, or comes from per-time-step labels. Each window's
group is its source example, so a later grouped split never puts windows of one recording in
two splits; the source's own split is kept as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# The package, not ``load_source`` itself: this module is imported while the package's
# ``__init__`` registers its sources, before ``load_source`` is defined there.
import crossdistill.data.sources as sources
from crossdistill.data.clips import Clips
from crossdistill.data.sources.base import DATA_SOURCES
from crossdistill.data.split import Split
from crossdistill.errors import ConfigError, DataError

PADS: tuple[str, ...] = ("none", "zeros")
LABELS: tuple[str, ...] = ("source", "majority", "centre")
NORMALIZE: tuple[str, ...] = ("none", "zscore")
EPS = 1e-8  # a channel flatter than this is left at zero, not blown up
SIGNAL = "a signal is a tensor field (N, T) or (N, C, T), or audio clips"


def _is_signal(column: Any) -> bool:
    return isinstance(column, Clips) or (
        isinstance(column, (torch.Tensor, np.ndarray)) and column.ndim in (2, 3)
    )


def _lengths(column: Any) -> np.ndarray:
    """Time steps of each example's signal."""
    if isinstance(column, Clips):
        return np.diff(column.offsets)
    return np.full(len(column), column.shape[-1], dtype=np.int64)


def _starts(length: int, size: int, hop: int, pad: str) -> np.ndarray:
    """Window starts in a signal of ``length``: every ``hop`` steps while a whole window fits,
    then (``pad="zeros"``) one more, zero-padded, when a tail is left that the next hop reaches."""
    starts = np.arange(0, length - size + 1, hop, dtype=np.int64)  # empty when length < size
    if pad == "none" or length <= 0 or (len(starts) and starts[-1] + size >= length):
        return starts
    tail = starts[-1] + hop if len(starts) else 0
    return np.append(starts, tail) if tail < length else starts


def _zscore(x: np.ndarray, real: np.ndarray) -> np.ndarray:
    """``(M, C, size)`` windows normalised per window and channel over their ``real`` (not
    padded) steps; padding stays zero."""
    x = x.astype(np.float32)
    mask = (np.arange(x.shape[-1]) < real[:, None])[:, None, :]
    n = real[:, None, None].astype(np.float32)
    mean = (x * mask).sum(-1, keepdims=True) / n
    std = np.sqrt((((x - mean) * mask) ** 2).sum(-1, keepdims=True) / n)
    return ((x - mean) / np.where(std > EPS, std, 1.0) * mask).astype(np.float32)


def _cut_tensor(
    column: torch.Tensor | np.ndarray, source: np.ndarray, start: np.ndarray, size: int
) -> np.ndarray:
    """``(M, C, size)`` windows of an ``(N, T)`` or ``(N, C, T)`` column, zero past its end."""
    x = column.detach().cpu().numpy() if isinstance(column, torch.Tensor) else np.asarray(column)
    x = x[:, None, :] if x.ndim == 2 else x
    over = int((start + size).max()) - x.shape[-1]
    if over > 0:
        x = np.pad(x, ((0, 0), (0, 0), (0, over)))
    steps = start[:, None] + np.arange(size)  # (M, size)
    return x[source[:, None, None], np.arange(x.shape[1])[None, :, None], steps[:, None, :]]


def _cut_clips(clips: Clips, source: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
    """``(M, 1, size)`` int16 windows of every sample of each clip, zero past its end."""
    out = np.zeros((len(source), 1, size), dtype=np.int16)
    for j, (i, s) in enumerate(zip(source.tolist(), start.tolist(), strict=True)):
        begin = clips.offsets[i] + s
        part = clips.samples[begin : min(begin + size, clips.offsets[i + 1])]
        out[j, 0, : len(part)] = part
    return out


def _window_column(
    column: Any,
    source: np.ndarray,
    start: np.ndarray,
    real: np.ndarray,
    size: int,
    normalize: str,
) -> Any:
    """A signal column's windows: clips stay clips of ``size`` samples (int16, compact), tensors
    stay tensors of their dtype and rank; ``zscore`` gives float32 tensors."""
    if isinstance(column, Clips):
        x = _cut_clips(column, source, start, size)
        if normalize == "none":
            offsets = np.arange(len(source) + 1, dtype=np.int64) * size
            return Clips(x.reshape(-1), offsets, column.sample_rate, size)
        return torch.from_numpy(_zscore(x.astype(np.float32) / 32768.0, real)[:, 0])
    x = _cut_tensor(column, source, start, size)
    if normalize == "zscore":
        x = _zscore(x, real)
    x = x[:, 0] if column.ndim == 2 else x
    return torch.from_numpy(np.ascontiguousarray(x))


def _repeat(column: Any, source: np.ndarray) -> Any:
    """A column that is not windowed, one entry per window (its source example's)."""
    if isinstance(column, torch.Tensor):
        return column[torch.from_numpy(source)]
    if isinstance(column, np.ndarray):
        return column[source]
    return [column[i] for i in source.tolist()]


def _frame_labels(split: Split, field: str, lengths: np.ndarray, label: str) -> np.ndarray:
    """The ``(N, T)`` int64 per-time-step labels of ``field``, checked against the signals."""
    if field not in split.fields:
        raise DataError(
            f"windows: label {label!r} reads per-time-step labels from field {field!r}, which "
            f"split {split.name!r} does not have; its fields: {sorted(split.fields)}",
            hint="name the field with frame_targets: FIELD, or use label: source (each "
            "example's own target)",
        )
    column = split.fields[field]
    values = column.detach().cpu().numpy() if isinstance(column, torch.Tensor) else column
    if not isinstance(values, np.ndarray) or values.ndim != 2 or values.dtype.kind not in "biu":
        raise DataError(
            f"windows: field {field!r} of {split.name!r} must be integer labels of shape (N, T), "
            f"got {getattr(values, 'dtype', type(values).__name__)} "
            f"{getattr(values, 'shape', '')}"
        )
    bad = np.flatnonzero(lengths != values.shape[1])
    if len(bad):
        raise DataError(
            f"windows: field {field!r} of {split.name!r} has {values.shape[1]} labels per "
            f"example, but example {bad[0]}'s signal has {lengths[bad[0]]} steps",
            hint="give one label per time step of the signal",
        )
    if values.size and values.min() < 0:
        raise DataError(f"windows: field {field!r} holds {values.min()}; classes start at 0")
    return values.astype(np.int64)


def _window_labels(
    frames: np.ndarray,
    source: np.ndarray,
    start: np.ndarray,
    real: np.ndarray,
    size: int,
    label: str,
    classes: int,
) -> torch.Tensor:
    """One label per window: the per-time-step label at its centre (``centre``; the last real
    step when the centre is padding), or the most frequent over its real steps (``majority``;
    a tie goes to the lowest class index)."""
    if label == "centre":
        at = start + np.minimum(size // 2, real - 1)
        return torch.from_numpy(frames[source, at])
    out = np.zeros(len(source), dtype=np.int64)
    eye = np.eye(classes, dtype=np.int32)
    for i in np.unique(source):
        # running counts of each class: a window's counts are two rows' difference
        counts = np.zeros((frames.shape[1] + 1, classes), dtype=np.int32)
        counts[1:] = np.cumsum(eye[frames[i]], axis=0)
        mine = slice(*np.searchsorted(source, (i, i + 1)))  # windows come in source order
        ends = start[mine] + real[mine]
        out[mine] = np.argmax(counts[ends] - counts[start[mine]], axis=1)
    return torch.from_numpy(out)


def _check(size: int, hop: int, pad: str, label: str, normalize: str) -> None:
    if size < 1 or hop < 1:
        raise ConfigError(f"windows: size and hop must be positive, got size={size}, hop={hop}")
    for name, value, valid in (
        ("pad", pad, PADS),
        ("label", label, LABELS),
        ("normalize", normalize, NORMALIZE),
    ):
        if value not in valid:
            raise ConfigError(f"windows: {name} must be one of {list(valid)}, got {value!r}")


def _signals(split: Split, fields: list[str] | None, frame_targets: str) -> list[str]:
    """The fields to cut: ``fields``, each checked to be a signal, or every signal field."""
    names = (
        fields
        if fields is not None
        else [k for k, c in split.fields.items() if k != frame_targets and _is_signal(c)]
    )
    for name in names:
        if name not in split.fields or not _is_signal(split.fields[name]):
            what = type(split.fields[name]).__name__ if name in split.fields else "missing"
            raise DataError(
                f"windows: field {name!r} of {split.name!r} is not a signal ({what})",
                hint=f"{SIGNAL}; its fields: {sorted(split.fields)}",
            )
    if not names:
        raise DataError(
            f"windows: {split.name!r} has no signal to cut; its fields: {sorted(split.fields)}",
            hint=SIGNAL,
        )
    return list(names)


def _common_lengths(split: Split, names: list[str]) -> np.ndarray:
    """Time steps of each example, the same in every signal cut."""
    lengths = _lengths(split.fields[names[0]])
    for name in names[1:]:
        other = _lengths(split.fields[name])
        bad = np.flatnonzero(other != lengths)
        if len(bad):
            raise DataError(
                f"windows: example {bad[0]} of {split.name!r} has {lengths[bad[0]]} steps in "
                f"{names[0]!r} but {other[bad[0]]} in {name!r}",
                hint="the signals cut together must have the same length; name the ones to cut "
                "with fields: [...]",
            )
    return lengths


def _targets(
    split: Split,
    label: str,
    frame_targets: str,
    lengths: np.ndarray,
    cuts: tuple[np.ndarray, np.ndarray, np.ndarray],
    size: int,
) -> tuple[torch.Tensor | None, list[str]]:
    """Each window's target and the class names (see :func:`load`)."""
    source, start, real = cuts
    class_names = list(split.class_names)
    if label == "source":
        if split.targets is None:
            return None, class_names
        targets = _repeat(split.targets, source)
        if not isinstance(targets, torch.Tensor):  # a lazy column: its entries, stacked
            targets = torch.as_tensor(np.asarray(targets))
        return targets, class_names
    frames = _frame_labels(split, frame_targets, lengths, label)
    classes = max(len(class_names), int(frames.max(initial=-1)) + 1)
    if class_names and classes > len(class_names):
        raise DataError(
            f"windows: field {frame_targets!r} holds class {classes - 1}, but {split.name!r} "
            f"names only {len(class_names)} classes"
        )
    names = class_names or [str(k) for k in range(classes)]
    return _window_labels(frames, source, start, real, size, label, classes), names


@DATA_SOURCES.register("windows")
def load(
    split: str,
    source: str | Callable[..., Split],
    size: int,
    params: dict[str, Any] | None = None,
    hop: int | None = None,
    pad: str = "none",
    label: str = "source",
    frame_targets: str = "frame_targets",
    normalize: str = "none",
    fields: list[str] | None = None,
) -> Split:
    """The ``split`` of the data source ``source`` (a registered name or
    ``package.module:Callable``, built with ``params``), each signal cut into windows.

    ``size``: time steps per window; ``hop``: steps from one window's start to the next
    (default ``size``: windows that do not overlap). ``pad``: ``"none"`` drops a tail shorter
    than a window (and a signal shorter than one), ``"zeros"`` pads it with zeros into one last
    window. ``fields``: the signals to cut (default: every audio-clips field and every tensor
    field of shape ``(N, T)`` or ``(N, C, T)``); every signal of one example must have the same
    length. Other fields are repeated for each window of their example.

    ``label``: ``"source"`` — the example's own target; ``"majority"`` — the most frequent of
    the per-time-step labels in field ``frame_targets`` (``(N, T)`` class indices) over the
    window's real steps; ``"centre"`` — the label at the window's centre. The ``frame_targets``
    field itself is not carried over. ``normalize``: ``"zscore"`` standardises each window per
    channel (over its real steps; float32 out), ``"none"`` keeps the values (audio clips stay
    clips of ``size`` samples).

    The windows keep the source's class names and sides; ``groups`` is each window's source
    example index and ``meta`` has ``source_index`` and ``start`` (its first step) besides the
    source's own meta (and ``source_group``, the source's groups, when it has them). A window
    longer than every signal is an error.
    """
    hop = size if hop is None else hop
    _check(size, hop, pad, label, normalize)
    inner = sources.load_source(source, split, **(params or {}))
    names = _signals(inner, fields, frame_targets)
    lengths = _common_lengths(inner, names)
    longest = int(lengths.max(initial=0))
    if size > longest:
        raise DataError(
            f"windows: a window of {size} steps is longer than every signal of {inner.name!r} "
            f"(the longest has {longest} steps)",
            hint=f"choose size <= {longest}",
        )
    starts = [_starts(int(n), size, hop, pad) for n in lengths]
    source_index = np.repeat(np.arange(len(lengths), dtype=np.int64), [len(s) for s in starts])
    start = np.concatenate(starts)
    real = np.minimum(size, lengths[source_index] - start)  # steps before the padding
    targets, class_names = _targets(
        inner, label, frame_targets, lengths, (source_index, start, real), size
    )
    columns = {
        k: _window_column(c, source_index, start, real, size, normalize)
        if k in names
        else _repeat(c, source_index)
        for k, c in inner.fields.items()
        if k != frame_targets or k in names
    }
    meta = {k: _repeat(c, source_index) for k, c in inner.meta.items()}
    if inner.groups is not None:
        meta["source_group"] = _repeat(inner.groups, source_index)
    meta.update(source_index=source_index, start=start)
    return Split(
        columns,
        name=f"windows/{inner.name}",
        targets=targets,
        class_names=class_names,
        sides=inner.sides,
        default_side=inner.default_side,
        groups=source_index,
        meta=meta,
    )
