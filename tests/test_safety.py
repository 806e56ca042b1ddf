"""Nothing crossdistill writes is a pickle: checkpoints (mid-epoch ones too), knowledge stores,
run outputs and safetensors/ONNX exports are safetensors, JSON, YAML or ONNX protobuf, formats
whose readers never execute what they read. (A TorchScript export, written only when asked
for, is a zip archive in TorchScript's own format and is the documented exception.)"""

from __future__ import annotations

import io
import pickletools
from pathlib import Path

import pytest
import yaml

from conftest import DIGITS
from crossdistill.config import validate_recipe
from crossdistill.export import export_run
from crossdistill.pipeline import cache_recipe, run_recipe

PICKLE_PROTOCOL = b"\x80"  # protocol 2+ pickles start with PROTO (0x80) and a version byte
ZIP = b"PK\x03\x04"  # torch.save's default container holds a data.pkl


def is_pickle(data: bytes) -> bool:
    if data[:1] == PICKLE_PROTOCOL and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        try:
            pickletools.dis(data, out=io.StringIO())  # parses opcodes, never executes them
            return True
        except Exception:
            return False
    return data[:4] == ZIP


def test_is_pickle_recognises_pickles(tmp_path: Path) -> None:
    import pickle

    import torch

    assert is_pickle(pickle.dumps({"a": 1}))
    torch.save({"w": torch.zeros(2)}, tmp_path / "x.pt")
    assert is_pickle((tmp_path / "x.pt").read_bytes())
    assert not is_pickle(b'{"json": true}')


def test_no_file_written_is_a_pickle(tmp_path: Path, teacher_weights: Path) -> None:
    pytest.importorskip("onnxruntime")
    raw = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    raw["teacher"]["weights"] = str(teacher_weights)
    raw["data"].update(augment={"name": "crop_flip"}, augment_slots=2, limit_train=256)
    raw["train"].update(epochs=2, progress=False, device="cpu", checkpoint_every_steps=3)
    raw["output"] = {"dir": str(tmp_path / "runs")}
    raw["store"] = {"path": str(tmp_path / "store"), "shard_size": 100}
    recipe = validate_recipe(raw)
    cache_recipe(recipe, progress=False)
    run_dir = run_recipe(recipe).run_dir
    for fmt in ("safetensors", "onnx"):
        export_run(run_dir, fmt, out=tmp_path / "exports" / fmt)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert names >= {"manifest.json", "trainable.safetensors", "student.safetensors"}
    assert any("step" in p.parent.name for p in files)  # a mid-epoch checkpoint was written
    pickles = [str(p.relative_to(tmp_path)) for p in files if is_pickle(p.read_bytes())]
    assert not pickles
