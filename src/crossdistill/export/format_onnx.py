"""ONNX: ``model.onnx`` (one file, opset 18) with a dynamic batch axis, pipeline in the graph.

Exporter, chosen per model: the TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``) first, kept only where it works and is exact: onnxruntime on up to 32 real
inputs (a batch of another size than the traced one, so a batch size baked into the graph shows)
matches PyTorch within ``rtol=1e-4, atol=1e-5``. Otherwise (or where it fails, or where a future
torch no longer offers it) the torch.export-based exporter (``dynamo=True``, the default since
torch 2.9) writes the file. On the 6k-parameter Fashion-MNIST student, in a fresh process on 2
cores, the first took 1.6 s with its check (0.6 s a second time) and dynamo 10.4 s (2.7 s)
(benchmarks/throughput_parts/export.py). torch 2.13 marks the TorchScript-based exporter
deprecated; its deprecation warnings are silenced here only. ``preprocessing.json`` records
which exporter wrote the file, the seconds each one tried took and, for a rejected one, why.
The parity check of ``export_run`` then runs on every parity example whichever exporter wrote
it.

int8: static quantization with onnxruntime (QDQ format, int8 weights per output channel, int8
activations with ranges calibrated (MinMax) on real *training* examples), keeping the final
classifier layer in float. Dynamic quantization (``onnxruntime.quantization.quantize_dynamic``,
ConvInteger/MatMulInteger with per-tensor activation ranges computed per batch) was measured
first and loses more: on the Fashion-MNIST KD student (CNN width 8) top-1 agreement with the
float student was 98.6% dynamic vs 99.1% static per-channel and 99.3% with the classifier float.
Weights use 7 bits (``reduce_range``) so that CPUs without VNNI instructions do not overflow.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill.export.base import (
    EXPORTERS,
    Exporter,
    ExportError,
    ExportInputs,
    Runner,
    example_shape,
    input_comment,
)

OPSET = 18
INPUT = "input"
# the TorchScript-based export is kept only this close to PyTorch (np.allclose's terms)
EXACT_RTOL, EXACT_ATOL = 1e-4, 1e-5
CHECK_EXAMPLES = 32  # real inputs the choice is checked on (the traced example has 2)
# torch 2.13's deprecation notices of the TorchScript-based exporter (the messages, so that any
# other warning still shows)
LEGACY_WARNINGS = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
)


def _reason(exc: BaseException) -> str:
    """The unsupported op and the first line of the cause, from a torch.onnx error."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    op = re.search(r"target=torch\.ops\.([\w.]+)", text)
    summary = text.split("## Exception summary", 1)[-1].strip().splitlines()
    first = summary[0] if summary and summary[0] else text.strip().splitlines()[0]
    first = first.replace("<class '", "").replace("'>", "")
    return (f"operator {op.group(1)}: " if op else "") + first[:300]


def export_float(graph: torch.nn.Module, example: torch.Tensor, path: Path, outputs: list[str]):
    """``graph`` to ONNX at ``path`` by the dynamo exporter, with a dynamic batch axis;
    torch.onnx errors → ExportError."""
    batch = torch.export.Dim("batch")
    quiet = io.StringIO()
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "torchvision is not installed" notices
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[INPUT],
                output_names=outputs,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"x": {0: batch}},
                verbose=False,
            )
    except Exception as exc:  # torch.onnx raises many types; all mean "this graph cannot go"
        raise ExportError(
            f"ONNX export of the student failed: {_reason(exc)}",
            hint="replace that operation in the model with ONNX-exportable ones, or export with "
            "--format torchscript or --format safetensors",
        ) from exc
    finally:
        logger.setLevel(level)


def export_torchscript_based(
    graph: torch.nn.Module, example: torch.Tensor, path: Path, outputs: list[str]
) -> None:
    """``graph`` to ONNX at ``path`` by the TorchScript-based exporter (a trace of
    ``example``), batch axis dynamic; raises whatever torch.onnx raises."""
    axes = {name: {0: "batch"} for name in [INPUT, *outputs]}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        for message in LEGACY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        # Python branches on shapes are traced as taken; the exactness check on another batch
        # size is what decides whether the trace holds
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # an optimisation it skips (strided slices, e.g. in an STFT front end), not a problem
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        with torch.no_grad():
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[INPUT],
                output_names=outputs,
                opset_version=OPSET,
                dynamo=False,
                dynamic_axes=axes,
            )


def _mismatch(path: Path, graph: torch.nn.Module, check: torch.Tensor) -> str | None:
    """Why the ONNX file at ``path`` is not exact on ``check`` (None when it is): onnxruntime
    against ``graph`` in PyTorch."""
    import onnxruntime as ort

    with torch.no_grad():
        out = graph(check)
    reference = [o.float().numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: check.numpy()})
    if len(got) != len(reference):
        return f"{len(got)} outputs where PyTorch gives {len(reference)}"
    for i, (r, g) in enumerate(zip(reference, got, strict=True)):
        if r.shape != g.shape:
            return f"output {i} has shape {list(g.shape)} where PyTorch gives {list(r.shape)}"
        if not np.allclose(g, r, rtol=EXACT_RTOL, atol=EXACT_ATOL):
            return f"output {i} differs from PyTorch by up to {float(np.abs(g - r).max()):.3g}"
    return None


def _check_batch(inputs: ExportInputs) -> torch.Tensor:
    """Real inputs for the exactness check, in a batch of another size than the traced one."""
    check = inputs.check if isinstance(inputs.check, torch.Tensor) else inputs.example
    check = check[:CHECK_EXAMPLES]
    if len(check) == len(inputs.example):  # another batch size: a baked-in one shows
        check = torch.cat([check, check[:1]])
    return check.contiguous()


def export_chosen(inputs: ExportInputs, path: Path) -> dict[str, Any]:
    """The student's float graph to ONNX at ``path``: TorchScript-based where it works and is
    exact, else dynamo. Returns what ran (``exporter``), and each attempt with its seconds."""
    graph, example, outputs = inputs.graph, inputs.example, inputs.output_names
    attempts: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        export_torchscript_based(graph, example, path, outputs)
        problem = _mismatch(path, graph, _check_batch(inputs))
    except Exception as exc:  # anything torch.onnx or onnxruntime raises: dynamo's turn
        problem = f"failed: {_reason(exc)}"
    attempts.append(
        {"exporter": "torchscript", "seconds": round(time.perf_counter() - start, 3)}
        | ({"rejected": problem} if problem else {})
    )
    if problem is None:
        return {"exporter": "torchscript", "attempts": attempts}
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    export_float(graph, example, path, outputs)
    attempts.append({"exporter": "dynamo", "seconds": round(time.perf_counter() - start, 3)})
    return {"exporter": "dynamo", "attempts": attempts}


def quantize_static_int8(src: Path, dst: Path, calibration: np.ndarray, tmp: Path) -> None:
    """Static QDQ int8 of ``src`` with activation ranges from ``calibration`` examples."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(src), str(prepared))
    nodes = onnx.load(str(prepared)).graph.node
    weighted = [n.name for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul")]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                {INPUT: calibration[i : i + 64]} for i in range(0, len(calibration), 64)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(prepared),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QInt8,
        # 7-bit weights: x86 CPUs without VNNI multiply uint8 x int8 pairs into saturating int16
        # sums, which full 8-bit weights can overflow: on an AVX2-only EPYC the digits KD
        # student's top-1 agreement with its float self was 96.7% with 8 bits, 100% with 7
        reduce_range=True,
        # the classifier is a few hundred weights; float there keeps close decisions intact
        nodes_to_exclude=weighted[-1:],
    )
    prepared.unlink()
    for extra in tmp.glob("*.data"):
        extra.unlink()


@EXPORTERS.register("onnx")
class OnnxExporter(Exporter):
    filename = "model.onnx"
    description = (
        "torch.onnx (TorchScript-based where exact, else dynamo) of pipeline + student; "
        "int8: onnxruntime static QDQ"
    )

    def export(self, inputs: ExportInputs, folder: Path) -> dict[str, Any]:
        target = folder / self.filename
        if not inputs.int8:
            chosen = export_chosen(inputs, target)
        else:
            work = folder / "_work"
            work.mkdir()
            chosen = export_chosen(inputs, work / "float.onnx")
            quantize_static_int8(work / "float.onnx", target, inputs.calibration.numpy(), work)
            shutil.rmtree(work)
        dynamo = chosen["exporter"] == "dynamo"
        info: dict[str, Any] = {
            "exporter": f"torch.onnx.export(dynamo={dynamo}, opset {OPSET}): the "
            f"{'torch.export' if dynamo else 'TorchScript'}-based exporter, torch "
            f"{torch.__version__}",
            "onnx_exporter": chosen,
            "pipeline_in_graph": True,
            "load": "onnxruntime.InferenceSession('model.onnx').run(None, {'input': x})",
        }
        if inputs.int8:
            info["quantization"] = {
                "method": "onnxruntime.quantization.quantize_static (QDQ, MinMax calibration)",
                "weights": "int8, per output channel",
                "activations": "int8, ranges calibrated on "
                f"{len(inputs.calibration)} unaugmented training examples",
                "float_layers": "the last Conv/Gemm/MatMul (the classifier)",
            }
        return info

    def usage(self, pre: dict[str, Any]) -> str:
        return "\n".join(
            [
                "import numpy as np",
                "import onnxruntime as ort",
                "",
                f'session = ort.InferenceSession("{self.filename}", '
                'providers=["CPUExecutionProvider"])',
                input_comment(pre),
                f"x = np.zeros({example_shape(pre)}, dtype=np.float32)",
                "names = [o.name for o in session.get_outputs()]",
                f'outputs = dict(zip(names, session.run(None, {{"{INPUT}": x}})))',
                "print({name: value.shape for name, value in outputs.items()})",
            ]
        )

    def load(self, folder: Path, threads: int = 1) -> Runner:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(folder / self.filename), options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name

        def run(x: np.ndarray) -> list[np.ndarray]:
            return list(session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)}))

        return run
