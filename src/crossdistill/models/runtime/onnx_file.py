"""A teacher that is an ONNX graph, run by onnxruntime: ``model: onnx_file``.

The module's forward feeds its inputs to the graph (a tensor, positional tensors, or a dict by
input name) and returns every graph output by name, so the teacher's ``outputs:`` mapping picks
the Knowledge names, and what a tap would capture in PyTorch is simply another graph output::

    teacher:
      model: onnx_file
      params: {path: teacher.onnx, threads: 2}
      outputs: {logits: logits, features/h3: block3_out}

The teacher is frozen by construction (there is nothing to train). The graph file's SHA-256
is a persistent buffer (``graph_sha256``), so the store fingerprint's ``teacher_weights``,
which hashes the state dict, changes whenever the graph does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossdistill._util.hashing import sha256_file
from crossdistill.errors import CheckpointError, ConfigError, KnowledgeError, ShapeError, require
from crossdistill.models.registry import MODELS

ONNX_HINT = "pip install onnxruntime  (or: pip install 'crossdistill[onnx]')"
CPU = "CPUExecutionProvider"
# ONNX element types (as onnxruntime names them) and the NumPy dtypes that feed them
DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def sha_buffer(path: Path) -> torch.Tensor:
    """A file's SHA-256 as 32 uint8 values: a buffer that puts the file into the state dict."""
    return torch.tensor(list(bytes.fromhex(sha256_file(path))), dtype=torch.uint8)


def check_file(path: Path, what: str) -> Path:
    """``path`` as a Path, or a CheckpointError when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{what} {str(path)!r} " + ("is a folder" if path.is_dir() else "does not exist"),
            hint="check `teacher.params.path` (relative paths are read from the working folder)",
        )
    return path


class OnnxModel(nn.Module):
    """An onnxruntime ``InferenceSession`` as a module: ``forward(inputs) -> {output: tensor}``.

    ``threads``: onnxruntime's intra-op threads (default: torch's ``get_num_threads()``);
    ``providers``: its execution providers, in order of preference (default CPU;
    ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` on a GPU where onnxruntime-gpu is
    installed). CPU inputs reach the graph without a copy where their dtype is the graph's;
    outputs come back as tensors on the first input's device.
    """

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.path = check_file(Path(path), "ONNX graph")
        self.threads = int(threads) if threads else torch.get_num_threads()
        self.providers = list(providers) if providers else [CPU]
        self.register_buffer("graph_sha256", sha_buffer(self.path))
        self._open()

    def _open(self) -> None:
        ort = require("onnxruntime", "an ONNX teacher (onnx_file)", ONNX_HINT)
        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise ConfigError(
                f"onnx_file: execution providers {missing} are not available in this "
                f"onnxruntime ({ort.__version__})",
                hint=f"available here: {available}; CUDAExecutionProvider needs the "
                "onnxruntime-gpu package and a GPU",
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:  # InvalidProtobuf, Fail, NotImplemented...: all "cannot load"
            first = (str(exc).strip().splitlines() or ["no detail"])[0][:300]
            raise CheckpointError(
                f"ONNX graph {self.path} cannot be loaded by onnxruntime: {first}",
                hint="the file is damaged, not an ONNX model, or uses operators this "
                "onnxruntime lacks; export it again (torch.onnx.export) or update onnxruntime",
            ) from None
        self.inputs = [(i.name, i.shape, i.type) for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("session", None)  # a session cannot be pickled: it is opened again
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def check_outputs(self, outputs: Sequence[str] | Mapping[str, str], where: str) -> None:
        """Refuse, before any data is read, an ``outputs:`` that names no output of the graph."""
        wanted = list(outputs.values()) if isinstance(outputs, Mapping) else list(outputs)
        missing = [name for name in wanted if name not in self.output_names]
        if missing:
            raise KnowledgeError(
                f"{where}.outputs names {missing}, which the ONNX graph {self.path.name} does "
                f"not output; its outputs are {self.output_names}",
                hint="map Knowledge names to graph outputs, e.g. `outputs: {logits: "
                f"{self.output_names[0]!r}}}`",
            )

    def _feeds(self, args: tuple[Any, ...]) -> tuple[dict[str, np.ndarray], torch.device]:
        names = [name for name, _, _ in self.inputs]
        if len(args) == 1 and isinstance(args[0], Mapping):
            given = dict(args[0])
            if set(given) != set(names):
                raise ShapeError(
                    f"ONNX graph {self.path.name} takes inputs {names}, got {sorted(given)}",
                    hint="give the teacher's view as a dict with exactly the graph's input names",
                )
        else:
            if len(args) == 1 and isinstance(args[0], (tuple, list)):
                args = tuple(args[0])
            if len(args) != len(names):
                raise ShapeError(
                    f"ONNX graph {self.path.name} takes {len(names)} inputs {names}, got "
                    f"{len(args)}",
                    hint="give one tensor per graph input, in order, or a dict by input name",
                )
            given = dict(zip(names, args, strict=True))
        feeds: dict[str, np.ndarray] = {}
        device = torch.device("cpu")
        for name, shape, kind in self.inputs:
            value = given[name]
            if isinstance(value, torch.Tensor):
                device = value.device
                value = value.detach().cpu().contiguous().numpy()  # a view, not a copy, on CPU
            value = np.asarray(value)
            fixed = [d if isinstance(d, int) else None for d in shape]
            if value.ndim != len(fixed) or any(
                d is not None and d != n for d, n in zip(fixed, value.shape, strict=True)
            ):
                axes = ["?" if d is None else d for d in fixed]
                raise ShapeError(
                    f"ONNX graph {self.path.name}: input {name!r} has shape {axes} "
                    f"('?' = any), got {list(value.shape)}",
                    hint="check the teacher's pipeline (resize, channels) and the data's view",
                )
            dtype = DTYPES.get(kind)
            feeds[name] = value if dtype is None else value.astype(dtype, copy=False)
        return feeds, device

    def forward(self, *args: Any) -> dict[str, torch.Tensor]:
        feeds, device = self._feeds(args)
        outs = self.session.run(self.output_names, feeds)
        return {
            name: torch.from_numpy(np.asarray(out)).to(device)
            for name, out in zip(self.output_names, outs, strict=True)
        }

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, threads={self.threads}, providers={self.providers}"


@MODELS.register("onnx_file")
def onnx_file(
    path: str, threads: int | None = None, providers: list[str] | None = None
) -> nn.Module:
    """An ONNX graph run by onnxruntime (the ``onnx`` extra): inputs -> ``{output_name: tensor}``.

    Map Knowledge names to graph outputs with the teacher's ``outputs: {logits: OUTPUT}``;
    ``threads`` sets onnxruntime's intra-op threads, ``providers`` its execution providers
    (default ``[CPUExecutionProvider]``).
    """
    return OnnxModel(path, threads, providers)
