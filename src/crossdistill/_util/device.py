"""Devices and precision: choosing a device, moving nested batches to it, autocast."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from crossdistill.errors import ConfigError


def available_devices() -> list[str]:
    """The devices this machine has: ``cpu``, ``cuda:0`` … ``cuda:N-1``, ``mps``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; a device this machine lacks (or a name that
    is no device) is a clear error listing the devices it has.

    Under torchrun a plain ``cuda`` (or ``auto`` on a CUDA machine) is this process's GPU,
    ``cuda:$LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    have = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):  # "tpu9": not even a device type torch knows
        device = None
    if device is None or _label(device) not in have:
        raise ConfigError(
            f"train.device is {name!r}, which is not available on this machine; it has: "
            f"{', '.join(have)}",
            hint=f"use device: auto, or one of {', '.join(have)}",
        )
    return device


def _label(device: torch.device) -> str:
    """How :func:`available_devices` names ``device`` (``cuda`` is ``cuda:0``)."""
    return f"cuda:{device.index or 0}" if device.type == "cuda" else device.type


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None = full precision)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor in a nested dict/list batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        moved = {k: to_device(v, device, non_blocking) for k, v in batch.items()}
        return type(batch)(moved) if type(batch) is not dict else moved
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch
