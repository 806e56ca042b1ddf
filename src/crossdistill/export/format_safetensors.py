"""safetensors: the student's weights alone plus ``model.json`` saying how to rebuild it.

The architecture is code, so rebuilding needs the factory named in ``model.json`` (``model``: a
zoo name or ``module:callable``, called with ``params``; ``class`` is the class it returned) —
crossdistill's zoo or the user's own module; reading the weights needs only ``safetensors``.
The input pipeline is not in the weights: ``preprocessing.json`` lists its steps with their
parameters. For a model that runs without any Python class, use torchscript or onnx.

An export folder is data: :func:`rebuild` validates ``model.json`` (:class:`ModelJson`), checks
``model.safetensors`` against its ``sha256``, and builds a model named by import path only
inside the packages the user allows (``--allow-import PKG``; ``allow_import=`` in Python).

int8: the Linear layers are quantized dynamically (per output channel); their weights are stored
as ``<layer>.weight.int8`` + ``.weight.scale`` + ``.weight.zero_point`` (axis 0) and the float
bias, everything else stays float32.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydantic
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from crossdistill._util.hashing import sha256_file
from crossdistill._util.validation import format_validation_error
from crossdistill.config import PluginSpec
from crossdistill.data.steps import build_pipeline
from crossdistill.errors import CheckpointError
from crossdistill.export.base import (
    EXPORTERS,
    TENSOR,
    TEXT,
    Exporter,
    ExportInputs,
    Runner,
    StudentGraph,
    linear_int8,
    torch_runner,
)
from crossdistill.models.registry import build_model
from crossdistill.registry import untrusted

META = "model.json"


class ModelJson(pydantic.BaseModel):
    """The schema of an export's ``model.json``: the factory (registered name or import path)
    and its params, the class it returned, the outputs, the pipeline steps, whether the weights
    are int8, and the SHA-256 of ``model.safetensors``."""

    model_config = pydantic.ConfigDict(
        extra="forbid", strict=True, populate_by_name=True, protected_namespaces=()
    )

    model: str
    class_: str = pydantic.Field(alias="class")
    params: dict[str, Any]
    outputs: list[str] | dict[str, str]
    pipeline: list[PluginSpec]
    int8: bool
    sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$")


def _factory(model: nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}:{cls.__qualname__}"


def _quantized_linears(model: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, DynamicLinear)}


def int8_state(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """A safetensors-storable state of a dynamically quantized model."""
    qlinears = _quantized_linears(qmodel)
    state = {
        k: v
        for k, v in qmodel.state_dict().items()
        if isinstance(v, torch.Tensor) and not any(k.startswith(f"{n}.") for n in qlinears)
    }
    for name, module in qlinears.items():
        weight, bias = module._weight_bias()
        state[f"{name}.weight.int8"] = weight.int_repr()
        state[f"{name}.weight.scale"] = weight.q_per_channel_scales().float()
        state[f"{name}.weight.zero_point"] = weight.q_per_channel_zero_points().to(torch.int64)
        if bias is not None:
            state[f"{name}.bias"] = bias
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def load_int8_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Inverse of :func:`int8_state`: a float ``model`` loaded and quantized like the export."""
    # quantized modules cannot take a partial state dict, so load the float parts first
    float_keys = set(model.state_dict())
    model.load_state_dict({k: v for k, v in state.items() if k in float_keys}, strict=False)
    qmodel = linear_int8(model)
    for name, module in _quantized_linears(qmodel).items():
        weight = torch._make_per_channel_quantized_tensor(
            state[f"{name}.weight.int8"],
            state[f"{name}.weight.scale"].double(),
            state[f"{name}.weight.zero_point"],
            0,
        )
        module.set_weight_bias(weight, state.get(f"{name}.bias"))
    return qmodel


@EXPORTERS.register("safetensors")
class SafetensorsExporter(Exporter):
    filename = "model.safetensors"
    description = "weights + model.json (model, params); pipeline listed in preprocessing.json"
    inputs = (TENSOR, TEXT)  # the model class rebuilds its own tokenizer from model.json

    def export(self, inputs: ExportInputs, folder: Path) -> dict[str, Any]:
        model = inputs.model
        if inputs.int8:
            state = int8_state(linear_int8(model))
        else:
            state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(folder / self.filename))
        meta = {
            "model": inputs.meta["model"],  # a zoo name or "module:callable", called with params
            "class": _factory(model),
            "params": inputs.meta["params"],
            "outputs": inputs.meta["outputs"],
            "pipeline": inputs.meta["pipeline"],
            "int8": inputs.int8,
            "sha256": sha256_file(folder / self.filename),  # rebuild() checks it
        }
        (folder / META).write_text(json.dumps(meta, indent=1))
        info: dict[str, Any] = {
            "exporter": "safetensors.torch.save_file of the student's state_dict",
            "pipeline_in_graph": False,
            "load": "model = <model>(**params); model.load_state_dict(safetensors.torch."
            "load_file('model.safetensors')); apply the pipeline steps first",
        }
        if inputs.int8:
            info["quantization"] = {
                "method": "torch.ao.quantization.quantize_dynamic (per-channel qint8), stored "
                "as int8 + scale + zero_point per Linear weight",
                "layers": "nn.Linear",
                "float_layers": "convolutions and everything else",
            }
        return info

    def usage(self, pre: dict[str, Any]) -> str:
        steps = ", ".join(f"{s['name']}({s.get('params', {})})" for s in pre.get("pipeline", []))
        lines = [
            "import json",
            "",
            "from safetensors.torch import load_file",
            "",
            f'state = load_file("{self.filename}")  # the weights: needs safetensors + torch only',
            f'spec = json.load(open("{META}"))  # the architecture: a class and its arguments',
            'print(spec["class"], spec["params"])',
            "# the architecture is Python code: with that class importable (copy its file, or",
            "# pip install crossdistill and use crossdistill.export.format_safetensors.rebuild):",
            '#   model = TheClass(**spec["params"]); model.load_state_dict(state); model.eval()',
        ]
        if pre.get("int8"):
            lines.append(
                "# int8: each Linear weight is <layer>.weight.int8 + .weight.scale + "
                ".weight.zero_point (per output channel, axis 0); dequantize before loading"
            )
        if steps:
            lines.append(f"# then apply the pipeline to the inputs yourself, first: {steps}")
        return "\n".join(lines)

    def load(self, folder: Path, threads: int = 1) -> Runner:
        return torch_runner(rebuild(folder), threads)


def read_meta(folder: str | Path) -> ModelJson:
    """``model.json`` of the export in ``folder``, validated; a CheckpointError naming the file
    and the field when it is missing or malformed."""
    path = Path(folder) / META
    hint = "export the run again: `crossdistill export RUN_DIR --format safetensors`"
    try:
        return ModelJson.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}", hint=hint) from None
    except pydantic.ValidationError as exc:
        raise CheckpointError(
            f"{path} does not describe a safetensors export:\n"
            + format_validation_error(exc, model=ModelJson),
            hint=hint,
        ) from None


def rebuild(folder: str | Path, allow_import: Iterable[str] = ()) -> nn.Module:
    """The model of a safetensors export (pipeline in front), rebuilt only from its files: the
    weights' SHA-256 checked, what model.json names built by registered name or by an import
    path inside ``allow_import`` (or the user's standing allow-list)."""
    folder = Path(folder)
    meta = read_meta(folder)
    weights = folder / SafetensorsExporter.filename
    if not weights.is_file() or sha256_file(weights) != meta.sha256:
        raise CheckpointError(
            f"{weights} is {'corrupted' if weights.is_file() else 'missing'}: its SHA-256 "
            f"differs from the one in {META}",
            hint="export the run again: `crossdistill export RUN_DIR --format safetensors`",
        )
    where = str(folder / META)
    with untrusted(where, allow_import):
        model = build_model(meta.model, meta.params, where=where)
        pipeline = build_pipeline(meta.pipeline, f"{where}: pipeline")
    state = load_file(str(weights))
    try:
        if meta.int8:
            model = load_int8_state(model, state)
        else:
            model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as exc:  # params edited after export: other shapes
        raise CheckpointError(
            f"{weights} does not fit the model {where} names ({meta.model!r} with its params): "
            f"{str(exc).splitlines()[0]}",
            hint="export the run again: `crossdistill export RUN_DIR --format safetensors`",
        ) from None
    return StudentGraph(pipeline, model, meta.outputs).eval()
