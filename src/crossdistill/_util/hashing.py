"""Content hashes: of files, of JSON-able settings, of model weights, of data columns."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest(*parts: Any) -> str:
    """A short SHA-256 of JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def weights_digest(module: torch.nn.Module) -> str:
    """A SHA-256 of every tensor in ``module``'s state dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def update_with(h: Any, value: Any, where: str = "value") -> None:
    """Feed ``value``'s contents into the hash ``h``.

    Tensors and arrays give their raw bytes; a list of strings their NUL-joined UTF-8; an object
    with a ``fingerprint()`` method its fingerprint; other sequences and mappings each item in
    turn. Anything else is a TypeError naming ``where``: its contents cannot be hashed reliably.
    """
    if isinstance(value, torch.Tensor):
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, np.ndarray) and value.dtype != object:
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, str):
        h.update(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, (bytes, bool, int, float)) or value is None:
        h.update(repr(value).encode() if not isinstance(value, bytes) else value)
    elif callable(getattr(value, "fingerprint", None)):
        h.update(str(value.fingerprint()).encode())
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            h.update(f"\x01{key}\x02".encode())
            update_with(h, value[key], f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        h.update("\x00".join(value).encode("utf-8", "surrogatepass"))
    elif isinstance(value, (list, tuple, range)) or hasattr(value, "__getitem__"):
        for i in range(len(value)):
            h.update(b"\x03")
            update_with(h, value[i], f"{where}[{i}]")
    else:
        raise TypeError(
            f"{where}: cannot fingerprint a {type(value).__name__}; give it a fingerprint() "
            "method returning a string that changes whenever its contents do"
        )
