"""The ONNX exporter chosen per model: the TorchScript-based exporter where it works and is exact
(checked with onnxruntime on a batch of another size), the dynamo exporter otherwise or where
the first fails or is gone; which one ran and its seconds are recorded; torch's deprecation
notices of the first do not leak."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from crossdistill.export import EXPORTERS, format_onnx
from crossdistill.export.base import ExportInputs

ort = pytest.importorskip("onnxruntime", reason="pip install crossdistill[onnx]")


class SmallCnn(nn.Module):
    """A Fashion-MNIST-sized student: conv, batch norm, pooling, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


class RmsNormed(nn.Module):
    """A layer the TorchScript-based exporter has no conversion for (``aten::rms_norm`` at
    opset 18) and the dynamo exporter decomposes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.rms_norm(self.fc(x), (3,))


class BakedBatch(nn.Module):
    """A model whose trace bakes in the batch size (``int()`` of a shape): the TorchScript-based
    export runs but is wrong on any other batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * int(x.shape[0])


def _export(model: nn.Module, x: torch.Tensor, folder: Path, int8: bool = False) -> dict:
    model.eval()
    inputs = ExportInputs(model, model, {}, ["logits"], x[:2].clone(), x, int8, check=x)
    return EXPORTERS.build("onnx").export(inputs, folder)


def _onnx_matches(path: Path, model: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, atol=atol)


def test_the_torchscript_based_exporter_is_kept_where_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = SmallCnn().eval(), torch.rand(40, 1, 28, 28)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = _export(model, x, tmp_path)
    leaked = [str(w.message) for w in caught if "TorchScript-based" in str(w.message)]
    assert not leaked and not [w for w in caught if "feature will be removed" in str(w.message)]
    chosen = info["onnx_exporter"]
    assert chosen["exporter"] == "torchscript" and "dynamo=False" in info["exporter"]
    assert [a["exporter"] for a in chosen["attempts"]] == ["torchscript"]
    assert chosen["attempts"][0]["seconds"] >= 0 and "rejected" not in chosen["attempts"][0]
    _onnx_matches(tmp_path / "model.onnx", model, x[:5])  # the batch axis is dynamic
    _onnx_matches(tmp_path / "model.onnx", model, x[:1])


def test_int8_quantizes_the_chosen_export(tmp_path: Path) -> None:
    import onnx

    torch.manual_seed(0)
    model, x = SmallCnn().eval(), torch.rand(64, 1, 28, 28)
    info = _export(model, x, tmp_path, int8=True)
    assert info["onnx_exporter"]["exporter"] == "torchscript" and info["quantization"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no work files left


def _stub_dynamo(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the (slow, ~10 s) dynamo exporter by a stand-in that records its calls."""
    calls: list[int] = []

    def dynamo(graph, example, path, outputs):
        calls.append(len(example))
        path.write_bytes(b"written by the dynamo exporter")

    monkeypatch.setattr(format_onnx, "export_float", dynamo)
    return calls


def test_a_baked_batch_size_is_caught_and_dynamo_takes_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _stub_dynamo(monkeypatch)
    model = BakedBatch().eval()
    torch.manual_seed(0)
    info = _export(model, torch.randn(40, 4), tmp_path)
    chosen = info["onnx_exporter"]
    assert chosen["exporter"] == "dynamo" and calls == [2]
    first = chosen["attempts"][0]
    assert first["exporter"] == "torchscript" and "differs from PyTorch" in first["rejected"]
    assert "dynamo=True" in info["exporter"]


def test_an_operator_the_first_cannot_convert_goes_to_dynamo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _stub_dynamo(monkeypatch)
    info = _export(RmsNormed(), torch.randn(8, 4), tmp_path)
    chosen = info["onnx_exporter"]
    assert chosen["exporter"] == "dynamo" and calls == [2]
    assert "aten::rms_norm" in chosen["attempts"][0]["rejected"]
    assert (tmp_path / "model.onnx").read_bytes() == b"written by the dynamo exporter"


def test_a_torch_without_the_torchscript_based_exporter_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _stub_dynamo(monkeypatch)

    def newer_torch(*args, **kwargs):  # what torch.onnx.export says once dynamo=False is gone
        raise TypeError("export() got an unexpected keyword argument 'dynamo'")

    monkeypatch.setattr(format_onnx, "export_torchscript_based", newer_torch)
    model = SmallCnn().eval()
    info = _export(model, torch.rand(8, 1, 28, 28), tmp_path)
    chosen = info["onnx_exporter"]
    assert chosen["exporter"] == "dynamo" and calls == [2]
    assert "unexpected keyword argument 'dynamo'" in chosen["attempts"][0]["rejected"]


@pytest.mark.slow
def test_the_real_dynamo_fallback_is_exact(tmp_path: Path) -> None:
    """The fast test above with the real dynamo exporter (about 10 s)."""
    torch.manual_seed(0)
    model, x = RmsNormed().eval(), torch.randn(40, 4)
    info = _export(model, x, tmp_path)
    assert info["onnx_exporter"]["exporter"] == "dynamo"
    assert "aten::rms_norm" in info["onnx_exporter"]["attempts"][0]["rejected"]
    _onnx_matches(tmp_path / "model.onnx", model, x[:7], atol=1e-5)
