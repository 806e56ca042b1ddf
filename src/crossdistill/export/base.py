"""What every export format provides: a registered :class:`Exporter` per format file.

An exporter writes the student's graph into a folder and can load it back as a plain
``numpy -> numpy`` runner (``list[str] -> numpy`` for a text student; used by the parity check
and by ``crossdistill bench``), without crossdistill's model wrappers in the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossdistill.errors import CrossDistillError
from crossdistill.registry import Registry

Runner = Callable[[Any], list[np.ndarray]]  # a float32 batch, or a list of str for text
TENSOR, TEXT = "tensor", "text"  # the kinds of student input an exporter may accept


class ExportError(CrossDistillError):
    """A student that cannot be exported, or an export that does not match the student."""


@dataclass
class ExportInputs:
    """Everything an exporter needs besides the output folder.

    ``graph`` is the student's model with its input pipeline in front (eval mode, CPU) returning
    one tensor per name in ``output_names``; ``model`` is the bare model and ``pipeline`` the
    recipe's pipeline steps, for formats that store them separately. ``example`` is a small batch
    of real inputs (for tracing), ``calibration`` real training inputs (for static int8); for a
    text student both are lists of strings. ``half``: store float weights as float16.
    ``card``: facts for a format that writes its own model card (see ``export/card.py``).
    ``check``: real inputs (the parity examples) a format may run to choose between ways of
    writing the file (the ONNX exporters); the parity check runs on all of them afterwards.
    """

    graph: nn.Module
    model: nn.Module
    meta: dict[str, Any]  # student.json of the run: model, params, outputs, pipeline
    output_names: list[str]
    example: torch.Tensor | list[str]
    calibration: torch.Tensor | list[str]
    int8: bool
    half: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # filled by the exporter
    # for a format's own model card: model_name, train/eval data (name, size, losses), tags
    card: dict[str, Any] = field(default_factory=dict)
    check: torch.Tensor | list[str] | None = None


class Exporter:
    """One export format, registered with ``@EXPORTERS.register("name")``. Subclasses set
    ``filename`` and implement ``export`` and ``load``; ``usage`` (the model card's "how to load
    it without crossdistill" code) is optional.

    ``inputs`` names the kinds of student input the format can hold: ``"tensor"`` (a float
    batch) and/or ``"text"`` (raw strings, tokenized by the student itself). ``half`` says
    whether it can store the weights as float16 (``--half``).
    """

    filename: str = ""
    description: str = ""
    inputs: tuple[str, ...] = (TENSOR,)
    half: bool = False

    def export(self, inputs: ExportInputs, folder: Path) -> dict[str, Any]:
        """Write the model file(s) into ``folder``; return what preprocessing.json should add
        (how the pipeline is handled, the quantization applied, the exporter used)."""
        raise NotImplementedError

    def load(self, folder: Path, threads: int = 1) -> Runner:
        """A callable running the exported model on a float32 batch (``N, ...``) or, for a text
        student, on a list of strings."""
        raise NotImplementedError

    def usage(self, pre: dict[str, Any]) -> str:
        """Python code that loads the export without crossdistill and runs it, for the model
        card; ``pre`` is the export's preprocessing.json. Run from the export folder."""
        return f"# {pre.get('load', 'see preprocessing.json')}"


def example_shape(pre: dict[str, Any], batch: int = 2) -> tuple[int, ...]:
    """A concrete input shape from preprocessing.json's ``[None, ...]`` (a free axis is 16)."""
    shape = (pre.get("input") or {}).get("shape") or [None]
    return (batch, *(16 if d is None else int(d) for d in shape[1:]))


def input_comment(pre: dict[str, Any]) -> str:
    """One comment line saying what the input holds (preprocessing.json's shape and range)."""
    inp = pre.get("input") or {}
    where = "inside the model" if pre.get("pipeline_in_graph") else "before the model: do it"
    return (
        f"# raw {inp.get('dtype', 'float32')} inputs, shape {inp.get('shape')}, values in "
        f"{inp.get('value_range')}; the pipeline runs {where}"
    )


EXPORTERS: Registry[type[Exporter]] = Registry("export format", base=Exporter, returns=Exporter)


def torch_runner(module: Callable[[Any], Any], threads: int) -> Runner:
    """A numpy runner around a torch callable returning a tensor or a tuple of tensors; a list
    of strings (a text batch) is passed through as it is."""

    @torch.no_grad()
    def run(x: Any) -> list[np.ndarray]:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = module(x if isinstance(x, list) else torch.from_numpy(np.ascontiguousarray(x)))
        finally:
            torch.set_num_threads(previous)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().float().numpy() for o in outs]

    return run


def linear_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the Linear layers of ``model`` (a copy), per output channel.

    torch's dynamic quantization covers Linear (and RNN) layers only: there is no dynamic
    quantized Conv2d, so convolutions stay float32 in the torch-based int8 formats. Per-channel
    weight scales keep top-1 agreement higher than the per-tensor default (measured on the
    Fashion-MNIST KD student: 99.6% vs 99.3%).
    """
    import copy
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao eager quantization is deprecated in favour of torchao, which is not a
        # dependency here; it still works in torch 2.13.
        warnings.simplefilter("ignore")
        return quantize_dynamic(
            copy.deepcopy(model), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
        )


class StudentGraph(nn.Module):
    """The student as a plain graph: its input pipeline, its model, and the outputs the recipe
    names (``outputs: [logits]`` or ``{embedding: key}``) as one tensor or a tuple of tensors."""

    def __init__(self, pipeline: nn.Module, model: nn.Module, outputs: Any) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.model = model
        self.keys = list(outputs.values()) if isinstance(outputs, dict) else None
        self.count = len(outputs)

    def forward(self, x: torch.Tensor) -> Any:
        out = self.model(self.pipeline(x))
        if self.keys is not None:
            picked = tuple(out[k] for k in self.keys)
        elif isinstance(out, (tuple, list)):
            picked = tuple(out[: self.count])
        else:
            return out
        return picked[0] if len(picked) == 1 else picked
