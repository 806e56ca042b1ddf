"""Weights trained elsewhere: PyTorch state dicts (plain, nested, prefixed) load into a model
through ``weights_only=True`` only, keys mapped by ``strip_prefix``/``rename``; pickled objects
and anything else that is not tensors are refused naming the file; ``convert-weights`` writes
the same tensors as safetensors."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from crossdistill.build import build_wrapper
from crossdistill.config import ModelSpec, TeacherSpec, WeightsSpec
from crossdistill.core.wrappers import Teacher
from crossdistill.errors import CheckpointError
from crossdistill.models.registry import build_model, load_weights, read_state_dict

PARAMS = {"width": 4}


@pytest.fixture
def cli(forked_cli: Callable) -> Callable:
    """``python -m crossdistill`` forked from conftest's warm server: the process boundary
    (exit code, output) without importing torch again for each command."""
    return forked_cli


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("cnn", PARAMS)
    # BatchNorm running statistics start equal in every model: make them differ too
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and "running" in name:
            tensor.uniform_(0.5, 1.5)
    return model


def _equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def source() -> nn.Module:
    return _model(0)


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # a backbone/head split, as other code bases name the same modules
    out = {}
    for key, value in state.items():
        out[key.replace("block", "stage", 1) if key.startswith("block") else "head." + key] = value
    return out


CASES: dict[str, tuple[Callable[[dict], object], dict]] = {
    "plain": (lambda s: s, {}),
    "nested-state_dict": (lambda s: {"state_dict": s, "epoch": 3, "lr": 0.1}, {}),
    "nested-model_state_dict": (lambda s: {"model_state_dict": s, "optimizer": {}}, {}),
    "dataparallel": (lambda s: _prefixed(s, "module."), {"strip_prefix": "module."}),
    "lightning": (
        lambda s: {"state_dict": _prefixed(s, "model."), "global_step": 7},
        {"strip_prefix": "model"},  # the trailing dot is optional
    ),
    "renamed": (
        _renamed,
        {"rename": {"stage1": "block1", "stage2": "block2", "stage3": "block3", "head.fc": "fc"}},
    ),
    "prefixed-and-renamed": (
        lambda s: _prefixed(_renamed(s), "module."),
        {
            "strip_prefix": "module.",
            "rename": {"stage1.": "block1.", "stage2": "block2", "stage3": "block3", "head": ""},
        },
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_pytorch_state_dict_loads_into_an_equal_model(
    source: nn.Module, tmp_path: Path, case: str
) -> None:
    layout, options = CASES[case]
    path = tmp_path / "teacher.pth"
    torch.save(layout(source.state_dict()), path)
    target = _model(1)
    assert not _equal(source, target)
    load_weights(target, WeightsSpec(path=path, **options), where="teacher.weights")
    assert _equal(source, target)
    # the run records the spec, so that it builds the same model again
    assert target.plugin_spec["weights"] == {"path": str(path), **options}
    rebuilt = ModelSpec(model="cnn", params=PARAMS, weights=target.plugin_spec["weights"])
    again = build_wrapper(Teacher, rebuilt, "teacher")
    assert _equal(source, again.model)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ""])
def test_a_plain_path_loads_and_is_recorded_as_a_path(
    source: nn.Module, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"weights{suffix}"
    torch.save(source.state_dict(), path)
    target = _model(1)
    load_weights(target, path)
    assert _equal(source, target)
    assert target.plugin_spec["weights"] == str(path)


def test_safetensors_under_another_name_is_read_as_safetensors(
    source: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "model.bin"  # as some hubs name either format
    save_file(source.state_dict(), str(path))
    target = _model(1)
    load_weights(target, path)
    assert _equal(source, target)


def test_the_key_used_is_reported(source: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "ema": {"decay": 0.999}}, path)
    state, used = read_state_dict(path)
    assert used == "model" and state.keys() == source.state_dict().keys()
    state, used = read_state_dict(path, key="model")
    assert used == "model"
    with pytest.raises(CheckpointError, match="has no key 'weights'") as info:
        read_state_dict(path, key="weights")
    assert "ema" in (info.value.hint or "")


def test_not_strict_loads_what_fits_and_keeps_the_rest(source: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "backbone.pth"
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"teacher.weights: .*2 missing .*fc\.bias"):
        load_weights(_model(1), path, where="teacher.weights")
    for strict_from in ("argument", "spec"):
        target = _model(1)
        head = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("fc.")}
        if strict_from == "argument":
            load_weights(target, path, strict=False)
        else:
            load_weights(target, WeightsSpec(path=path, strict=False))
        now = target.state_dict()
        assert all(torch.equal(now[k], v) for k, v in state.items())
        assert all(torch.equal(now[k], v) for k, v in head.items())  # the head is untouched
        # a rebuild must not be strict either: the record says so
        assert target.plugin_spec["weights"] == {"path": str(path), "strict": False}


def test_not_strict_still_refuses_a_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    torch.save(build_model("cnn", {"width": 8}).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape mismatch: block1\.0\.0\.weight"):
        load_weights(_model(1), path, strict=False)


def test_a_pickled_model_is_refused_with_how_to_save_a_state_dict(
    source: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "whole_model.pt"
    torch.save(source, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(_model(1), path, where="teacher.weights")
    message = str(info.value)
    assert message.startswith(f"teacher.weights: {path} holds a pickled object")
    assert "SmallCNN" in message and "not a state dict" in message
    assert "torch.save(model.state_dict(), path)" in (info.value.hint or "")


class _Payload:
    """Unpickling this creates ``marker``: the proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (str(self.marker), "w"))


def test_a_pickle_payload_is_never_run(source: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "trojan.pth"
    marker = tmp_path / "PWNED"
    torch.save({"state_dict": source.state_dict(), "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="holds a pickled object"):
        load_weights(_model(1), path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ({"fc.weight": torch.zeros(10, 16), "note": "trained on CIFAR"}, "key 'note' holds a str"),
        (
            {"state_dict": {"fc.bias": torch.zeros(10), "steps": 3}},
            "under 'state_dict': key 'steps'",
        ),
        ({"net": {"fc.bias": torch.zeros(10)}, "epoch": 1}, "no state dict under state_dict"),
        ([torch.zeros(3)], "holds a list, not a state dict"),
        ({}, "holds no tensors"),
    ],
)
def test_what_is_not_a_state_dict_of_tensors_is_refused(
    tmp_path: Path, content: object, phrase: str
) -> None:
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=re.escape(f"teacher.weights: {path}")) as info:
        load_weights(_model(1), path, where="teacher.weights")
    assert phrase in str(info.value)


@pytest.mark.parametrize(
    ("name", "data", "phrase"),
    [
        ("garbage.pth", b"this is not a checkpoint\n" * 20, "is not a readable PyTorch state dict"),
        ("empty.pt", b"", "is not a readable PyTorch state dict"),
        ("garbage.safetensors", b"\x00" * 64, "is not a readable safetensors file"),
    ],
)
def test_a_garbage_file_is_named_in_the_error(
    tmp_path: Path, name: str, data: bytes, phrase: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_weights(_model(1), path, where="teacher.weights")
    assert str(info.value).startswith(f"teacher.weights: {path} {phrase}")


def test_a_torch_file_named_safetensors_gets_a_hint(source: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "teacher.safetensors"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointError, match="is not a readable safetensors file") as info:
        load_weights(_model(1), path)
    assert "written by torch.save" in (info.value.hint or "")


def test_missing_and_folder_paths(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"teacher\.weights: '.*none\.pth' does not exist"):
        load_weights(_model(1), tmp_path / "none.pth", where="teacher.weights")
    with pytest.raises(CheckpointError, match="is a folder, not a weights file"):
        load_weights(_model(1), tmp_path)


def test_a_prefix_mismatch_hints_at_strip_prefix(source: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "dp.pth"
    torch.save(_prefixed(source.state_dict(), "module."), path)
    with pytest.raises(CheckpointError, match="do not fit SmallCNN") as info:
        load_weights(_model(1), path)
    assert 'strip_prefix: "module."' in (info.value.hint or "")


def test_prefixes_match_whole_module_names(source: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    # "block" is no module name here: it neither renames block1.* nor matches anything
    with pytest.raises(CheckpointError, match="rename 'block' matches no key"):
        read_state_dict(WeightsSpec(path=path, rename={"block": "stage"}))
    with pytest.raises(CheckpointError, match=r"no key in .* starts with 'module\.'"):
        read_state_dict(WeightsSpec(path=path, strip_prefix="module."))
    with pytest.raises(CheckpointError, match=r"both become 'fc\.weight'"):
        read_state_dict(WeightsSpec(path=path, rename={"block1.0.0": "fc"}))
    state, _ = read_state_dict(WeightsSpec(path=path, rename={"": "net"}))
    assert set(state) == {f"net.{k}" for k in source.state_dict()}


def test_a_recipe_teacher_with_a_weights_spec_builds(source: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    torch.save({"state_dict": _prefixed(source.state_dict(), "module.")}, path)
    spec = TeacherSpec.model_validate(
        {
            "model": "cnn",
            "params": PARAMS,
            "weights": {"path": str(path), "strip_prefix": "module."},
        }
    )
    assert isinstance(spec.weights, WeightsSpec)
    teacher = build_wrapper(Teacher, spec.as_model_spec(), "teacher")
    assert isinstance(teacher, Teacher)
    assert _equal(source, teacher.model)


def test_convert_weights_writes_the_same_tensors(
    source: nn.Module, tmp_path: Path, cli: Callable
) -> None:
    original = tmp_path / "dp.pth"
    torch.save({"model_state_dict": _prefixed(_renamed(source.state_dict()), "module.")}, original)
    out = tmp_path / "teacher.safetensors"
    renames = ["stage1=block1", "stage2=block2", "stage3=block3", "head="]
    args = ["convert-weights", str(original), str(out), "--strip-prefix", "module."]
    args += [a for r in renames for a in ("--rename", r)]
    done = cli(args, tmp_path)
    assert done.returncode == 0, done.stderr
    n = len(source.state_dict())
    assert f"{out}: {n} tensors, {out.stat().st_size:,} bytes" in done.stdout
    assert "'model_state_dict'" in done.stderr  # which key held the state dict
    state = load_file(str(out))
    assert state.keys() == source.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())
    target = _model(1)
    load_weights(target, out)
    assert _equal(source, target)

    # OUT exists: refused unless --force, and left as it was
    before = out.read_bytes()
    torch.save(_model(2).state_dict(), original)
    refused = cli(["convert-weights", str(original), str(out)], tmp_path)
    assert refused.returncode == 2
    assert f"{out} already exists" in refused.stderr and "--force" in refused.stderr
    assert out.read_bytes() == before
    forced = cli(["convert-weights", str(original), str(out), "--force"], tmp_path)
    assert forced.returncode == 0, forced.stderr
    load_weights(target, out)
    assert _equal(_model(2), target)


def test_convert_weights_keeps_tied_weights(tmp_path: Path, cli: Callable) -> None:
    # tied embeddings share one tensor: safetensors refuses shared memory unless each is copied
    embedding = nn.Embedding(5, 3)
    state = {"embed.weight": embedding.weight.data, "out.weight": embedding.weight.data}
    torch.save(state, tmp_path / "tied.pt")
    out = tmp_path / "tied.safetensors"
    done = cli(["convert-weights", str(tmp_path / "tied.pt"), str(out)], tmp_path)
    assert done.returncode == 0, done.stderr
    loaded = load_file(str(out))
    assert torch.equal(loaded["embed.weight"], loaded["out.weight"])

    full = tmp_path / "full.pt"
    torch.save(embedding, full)
    refused = cli(["convert-weights", str(full), str(tmp_path / "full.safetensors")], tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{full} holds a pickled object" in refused.stderr
    assert not (tmp_path / "full.safetensors").exists()
