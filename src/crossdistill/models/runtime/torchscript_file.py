"""A teacher that is a TorchScript archive (``torch.jit.save``): ``model: torchscript_file``.

Trust: a TorchScript archive is a program, not only weights. Its code runs in the TorchScript
interpreter, not in Python (it cannot import Python modules), but it may call any operator
registered in the process; its data is unpickled by TorchScript's restricted unpickler. Load
only archives you trust, as you would a module a recipe imports.

Taps do not reach inside a scripted model (its submodules run compiled, without hooks): have
the archive's forward return what you want to distil, as a tuple or a dict, and name it with
the teacher's ``outputs:``. The archive's SHA-256 is a persistent buffer (``archive_sha256``),
so the store fingerprint changes whenever the file does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from crossdistill.errors import CheckpointError, ShapeError
from crossdistill.models.registry import MODELS
from crossdistill.models.runtime.onnx_file import check_file, sha_buffer


def _shapes(args: tuple[Any, ...]) -> str:
    return ", ".join(
        str(tuple(a.shape)) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args
    )


class TorchScriptModel(nn.Module):
    """A loaded TorchScript archive (``module``) whose forward is the archive's forward."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = check_file(Path(path), "TorchScript archive")
        try:
            self.module = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError, ValueError, ... on foreign bytes
            first = (str(exc).strip().splitlines() or ["no detail"])[0][:300]
            raise CheckpointError(
                f"TorchScript archive {self.path} cannot be loaded: {first}",
                hint="the file is damaged or not a TorchScript archive (torch.jit.save); a "
                "state dict loads with `model: <architecture>` and `weights:` instead",
            ) from None
        self.register_buffer("archive_sha256", sha_buffer(self.path))

    def forward(self, *args: Any) -> Any:
        try:
            return self.module(*args)
        except RuntimeError as exc:  # TorchScript's own message is a long interpreter trace
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise ShapeError(
                f"TorchScript archive {self.path.name} cannot run on inputs of shape "
                f"{_shapes(args)}: {(lines[-1] if lines else 'no detail')[:300]}",
                hint="check the teacher's pipeline (resize, channels) and the data's view",
            ) from None

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}"


@MODELS.register("torchscript_file")
def torchscript_file(path: str) -> nn.Module:
    """A TorchScript archive (``torch.jit.save``): its forward, as written. The archive is code
    run by the TorchScript interpreter: load only files you trust."""
    return TorchScriptModel(path)
