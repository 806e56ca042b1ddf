"""Checkpoints: safetensors + JSON, written atomically, checksummed, never holding a frozen teacher.

Layout of ``<run>/checkpoints/epoch-0003/``:

- ``trainable.safetensors`` — student, adapters and loss-module weights
- ``optimizer.safetensors`` — the optimizer's tensors; its structure is in ``state.json``
- ``rng.safetensors`` — torch RNG states (CPU and every CUDA device)
- ``ema_teacher.safetensors`` — only with a momentum teacher: its averaged weights, buffers and
  update count (training makes them, so a resumed run needs them; they are never exported)
- ``state.json`` — epoch, step, scheduler/scaler state, recipe fingerprint, SHA-256 of each file

A checkpoint is written to a temporary folder, fsynced, then renamed: a crash never leaves a
half-written checkpoint under its final name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from crossdistill._util.files import fsync_path, replace_dir, write_errors
from crossdistill._util.hashing import sha256_file as sha256
from crossdistill.errors import CheckpointError

STATE = "state.json"
FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors")
EMA_TEACHER = "ema_teacher.safetensors"  # a momentum teacher's state, when the run has one


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON structure."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict[str, Any]] = {}
    for idx, entries in state["state"].items():
        per_param[str(idx)] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{name}"] = value.detach().contiguous().cpu()
                per_param[str(idx)][name] = {"tensor": f"{idx}.{name}"}
            else:
                per_param[str(idx)][name] = value
    return tensors, {"state": per_param, "param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state = {
        int(idx): {
            name: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for name, v in entries.items()
        }
        for idx, entries in meta["state"].items()
    }
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    directory: Path,
    *,
    trainable: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    state: dict[str, Any],
    rng: dict[str, torch.Tensor] | None = None,
    teacher: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write one checkpoint atomically into ``directory``; ``rng`` defaults to this process's
    RNG states (under DDP the Trainer passes every rank's). ``teacher``: the state of a teacher
    that training changes (a momentum teacher's), kept in ``ema_teacher.safetensors``.

    A full disk or a read-only folder is a :class:`~crossdistill.errors.WriteError` naming the
    checkpoint, the free space and the bytes it needs; the partial copy is removed, and an
    older checkpoint of the same name stays whole."""
    tmp = directory.with_name(directory.name + ".tmp")
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    contents = {
        "trainable.safetensors": {k: v.detach().contiguous().cpu() for k, v in trainable.items()},
        "optimizer.safetensors": opt_tensors,
        "rng.safetensors": rng if rng is not None else rng_state(),
    }
    if teacher is not None:
        contents[EMA_TEACHER] = {k: v.detach().contiguous().cpu() for k, v in teacher.items()}
    needed = sum(t.numel() * t.element_size() for ts in contents.values() for t in ts.values())
    with write_errors(directory, "the checkpoint", needed):
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            for name, tensors in contents.items():
                save_file(tensors, str(tmp / name))
                fsync_path(tmp / name)
            full_state = {
                **state,
                "optimizer": opt_meta,
                "sha256": {name: sha256(tmp / name) for name in contents},
            }
            (tmp / STATE).write_text(json.dumps(full_state, indent=1))
            fsync_path(tmp / STATE)
            replace_dir(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # never left to look like a checkpoint
            raise
    return directory


def load_checkpoint(directory: Path) -> dict[str, Any]:
    """Read and verify a checkpoint; corruption names the file that is wrong. A momentum
    teacher's state, when the checkpoint has one, is ``state["teacher"]``."""
    state_path = directory / STATE
    if not state_path.is_file():
        raise CheckpointError(
            f"checkpoint {directory} has no {STATE}: it is incomplete",
            hint=f"delete {directory} to resume from an earlier checkpoint",
        )
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{state_path} is not valid JSON ({exc})",
            hint=f"delete {directory} to resume from an earlier checkpoint",
        ) from None
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    # the teacher's file is checked whenever state.json lists it: it cannot be dropped unseen
    for name in (*FILES, *([EMA_TEACHER] if EMA_TEACHER in state.get("sha256", {}) else [])):
        path = directory / name
        expected = state.get("sha256", {}).get(name)
        if not path.is_file() or expected is None or sha256(path) != expected:
            raise CheckpointError(
                f"checkpoint file {path} is missing or corrupted (SHA-256 mismatch)",
                hint=f"delete {directory} to resume from an earlier checkpoint",
            )
        try:
            loaded[name] = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(
                f"{path} is not a safetensors file ({exc})",
                hint="checkpoints are read as safetensors only, never unpickled; delete "
                f"{directory} to resume from an earlier checkpoint",
            ) from None
    state["trainable"] = loaded["trainable.safetensors"]
    state["optimizer"] = unflatten_optimizer(loaded["optimizer.safetensors"], state["optimizer"])
    state["rng"] = loaded["rng.safetensors"]
    if EMA_TEACHER in loaded:
        state["teacher"] = loaded[EMA_TEACHER]
    return state


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints in the folder ``root``, oldest first (``*.tmp`` leftovers are
    ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("epoch-*") if p.is_dir() and not p.name.endswith(".tmp"))


def prune_checkpoints(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints in ``root`` (0 keeps all), and remove the ``.tmp``
    folders a killed writer left (called after a save by the run's one writer, so none is
    being written)."""
    for stale in root.glob("epoch-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep <= 0:
        return
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
