"""TorchScript: ``model.pt`` from ``torch.jit.trace``, the input pipeline baked into the graph.

Loading needs only torch: ``torch.jit.load("model.pt")(x)`` with ``x`` as preprocessing.json says
(raw float32 inputs in the value range; normalization/resize happen inside the graph).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from crossdistill._util.files import write_atomic
from crossdistill.export.base import (
    EXPORTERS,
    Exporter,
    ExportInputs,
    Runner,
    example_shape,
    input_comment,
    linear_int8,
    torch_runner,
)


@EXPORTERS.register("torchscript")
class TorchScriptExporter(Exporter):
    filename = "model.pt"
    description = "torch.jit.trace of pipeline + student; int8: dynamic int8 Linear layers"

    def export(self, inputs: ExportInputs, folder: Path) -> dict[str, Any]:
        graph = linear_int8(inputs.graph) if inputs.int8 else inputs.graph
        with torch.no_grad(), warnings.catch_warnings():
            # tracer warnings about Python branches (e.g. resize's same-size shortcut) are
            # expected: the traced input size is the one preprocessing.json declares
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # torch 2.13 marks TorchScript deprecated (for torch.export) but it is the format
            # that runs with torch alone, from C++ too
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(graph, (inputs.example,), check_trace=False)
            traced = torch.jit.freeze(traced) if not inputs.int8 else traced
        # through memory: torch's own file writer aborts the process on a full disk
        write_atomic(folder / self.filename, traced.save_to_buffer())
        info: dict[str, Any] = {
            "exporter": f"torch.jit.trace (torch {torch.__version__})",
            "pipeline_in_graph": True,
            "load": "torch.jit.load('model.pt')(x)",
        }
        if inputs.int8:
            info["quantization"] = {
                "method": "torch.ao.quantization.quantize_dynamic",
                "dtype": "qint8",
                "layers": "nn.Linear (weights per output channel; activations quantized per "
                "batch at run time)",
                "float_layers": "convolutions and everything else: torch has no dynamic int8 "
                "Conv2d",
            }
        return info

    def usage(self, pre: dict[str, Any]) -> str:
        return "\n".join(
            [
                "import torch",
                "",
                f'model = torch.jit.load("{self.filename}", map_location="cpu").eval()',
                input_comment(pre),
                f"x = torch.zeros{example_shape(pre)}",
                "with torch.no_grad():",
                "    outputs = model(x)  # one tensor, or a tuple in preprocessing.json's order",
                "print(outputs.shape if torch.is_tensor(outputs) else [o.shape for o in outputs])",
            ]
        )

    def load(self, folder: Path, threads: int = 1) -> Runner:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(folder / self.filename), map_location="cpu")
        module.eval()
        return torch_runner(module, threads)
