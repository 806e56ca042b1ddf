"""A recipe is checked end to end before any expensive work (issue 22, "fail before expensive
work"): data, teacher weights, the knowledge store (present, for this recipe) and the losses'
needs fail before a static student's token table is built with a teacher (``init_from``), and
``cache`` checks every store's plan before its first teacher pass.

The expensive steps are replaced by spies that raise ``expensive step reached``: a test that
gets that error instead of the clear one has found a check that runs too late.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import crossdistill.domains.text.static_embedding as static_embedding
import crossdistill.domains.text.text_file  # registers text_file
import crossdistill.domains.text.tiny_transformer  # noqa: F401  (registers tiny_transformer)
import crossdistill.pipeline as pipeline
from crossdistill.config import Recipe, load_recipe
from crossdistill.errors import CrossDistillError, DataError, StoreError
from crossdistill.models.registry import build_model
from crossdistill.pipeline import cache_recipe, run_recipe

tokenizers = pytest.importorskip("tokenizers")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
SENTENCES = ["the cat sat on the mat", "a dog ran", "the dog sat", "a cat ran on a mat"] * 4


class Reached(RuntimeError):
    """Raised by a spy: the expensive step it stands for was reached."""


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny word-level tokenizer.json with BERT-style special tokens, built offline."""
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = tokenizers.Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture
def table_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The token-table build (a teacher pass over the vocabulary) replaced by a spy that
    records its call and raises :class:`Reached`."""
    calls: list[str] = []

    def spy(*args: Any, **kwargs: Any) -> None:
        calls.append("token table")
        raise Reached("expensive step reached: the token table")

    monkeypatch.setattr(static_embedding, "init_from_teacher", spy)
    return calls


def text_recipe(tmp_path: Path, tokenizer: Path, **changes: Any) -> Recipe:
    """A tiny text recipe whose static student starts from a teacher-built token table."""
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("\n".join(SENTENCES))
    test.write_text("\n".join(SENTENCES[:4]))
    teacher_params = {"tokenizer": str(tokenizer), "layers": 1, "dim": 8, "heads": 2}
    raw: dict[str, Any] = {
        "name": "fail_early",
        "seed": 0,
        "data": {
            "source": "text_file",
            "params": {"path": {"train": str(train), "test": str(test)}},
            "batch_size": 4,
            "eval_batch_size": 4,
        },
        "teacher": {
            "model": "tiny_transformer",
            "params": {**teacher_params, "init_from": None},
            "outputs": ["embedding"],
        },
        "student": {
            "model": "static_embedding",
            "params": {
                "tokenizer": str(tokenizer),
                "dim": 4,
                "out_dim": None,
                "init_from": "tiny_transformer",
                "init_params": {**teacher_params, "init_from": None},
            },
            "outputs": ["embedding"],
        },
        "losses": [{"name": "cosine", "adapter": "linear"}],
        "train": {"epochs": 1, "device": "cpu", "progress": False},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_recipe(path)


def assert_fails_first(recipe: Recipe, error: type[Exception], match: str, calls: list) -> None:
    with pytest.raises(error, match=match) as info:
        run_recipe(recipe)
    assert not isinstance(info.value, Reached)
    assert calls == [], "the token table was built before the check"
    assert not recipe.run_dir.exists(), "the run folder was touched"


# ------------------------------------------------------------------------------------- run


def test_token_table_is_built_after_every_check(
    tmp_path: Path, tokenizer: Path, table_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A good recipe reaches the token table, after preflight and before the run folder."""
    order: list[str] = table_calls
    checked = pipeline.preflight

    def preflight(*args: Any, **kwargs: Any) -> None:
        checked(*args, **kwargs)
        order.append("preflight")

    monkeypatch.setattr(pipeline, "preflight", preflight)
    recipe = text_recipe(tmp_path, tokenizer)
    with pytest.raises(Reached):
        run_recipe(recipe)
    assert order == ["preflight", "token table"]
    assert not recipe.run_dir.exists()


def test_outside_run_the_table_is_built_at_once(tokenizer: Path, table_calls: list[str]) -> None:
    """Building the model directly (Python API, reopening a run) still initialises it."""
    with pytest.raises(Reached):
        static_embedding.StaticEmbedding(str(tokenizer), dim=4, out_dim=None, init_from="x")
    assert table_calls == ["token table"]


def test_losses_needs_fail_before_the_token_table(
    tmp_path: Path, tokenizer: Path, table_calls: list[str]
) -> None:
    """kd needs logits, which neither model emits: Distiller.check on a real batch says so."""
    recipe = text_recipe(tmp_path, tokenizer, losses=[{"name": "kd"}])
    assert_fails_first(recipe, CrossDistillError, "logits", table_calls)


def test_missing_data_fails_before_the_token_table(
    tmp_path: Path, tokenizer: Path, table_calls: list[str]
) -> None:
    missing = {"train": str(tmp_path / "absent.txt"), "test": str(tmp_path / "absent.txt")}
    recipe = text_recipe(tmp_path, tokenizer, **{"data.params": {"path": missing}})
    assert_fails_first(recipe, DataError, "absent.txt", table_calls)


def test_missing_teacher_weights_fail_before_the_token_table(
    tmp_path: Path, tokenizer: Path, table_calls: list[str]
) -> None:
    weights = tmp_path / "teacher.safetensors"
    recipe = text_recipe(tmp_path, tokenizer, **{"teacher.weights": str(weights)})
    assert_fails_first(recipe, CrossDistillError, "teacher.safetensors", table_calls)


def test_teacher_weights_of_another_shape_fail_before_the_token_table(
    tmp_path: Path, tokenizer: Path, table_calls: list[str]
) -> None:
    from safetensors.torch import save_model

    params = {"tokenizer": str(tokenizer), "layers": 1, "dim": 16, "heads": 2, "init_from": None}
    weights = tmp_path / "teacher16.safetensors"
    save_model(build_model("tiny_transformer", params), str(weights))
    recipe = text_recipe(tmp_path, tokenizer, **{"teacher.weights": str(weights)})
    assert_fails_first(recipe, CrossDistillError, "teacher16.safetensors", table_calls)


def test_missing_store_fails_before_anything_is_built(
    tmp_path: Path, tokenizer: Path, table_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: `there is no knowledge store` came after the token table."""

    def build_distiller(recipe: Recipe) -> None:
        raise Reached("expensive step reached: the models")

    monkeypatch.setattr(pipeline, "build_distiller", build_distiller)
    recipe = text_recipe(tmp_path, tokenizer, store={"path": str(tmp_path / "no_store")})
    assert_fails_first(recipe, StoreError, "there is no knowledge store", table_calls)


# ----------------------------------------------------------------------------------- cache


@pytest.fixture
def cached(tmp_path: Path, tokenizer: Path, table_calls: list[str]) -> Recipe:
    """A recipe whose training and evaluation stores are written (without a token table:
    ``cache`` needs only the teacher)."""
    store = {"path": str(tmp_path / "store"), "eval_path": str(tmp_path / "eval_store")}
    recipe = text_recipe(tmp_path, tokenizer, store=store)
    cache_recipe(recipe, progress=False)
    assert table_calls == [], "cache built the student's token table"
    return recipe


def test_store_for_another_teacher_fails_before_anything_is_built(
    tmp_path: Path,
    tokenizer: Path,
    cached: Recipe,
    table_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def build_distiller(recipe: Recipe) -> None:
        raise Reached("expensive step reached: the models")

    monkeypatch.setattr(pipeline, "build_distiller", build_distiller)
    params = {"tokenizer": str(tokenizer), "layers": 2, "dim": 8, "heads": 2, "init_from": None}
    store = cached.store.model_dump(mode="json")  # type: ignore[union-attr]
    other = text_recipe(tmp_path, tokenizer, store=store, **{"teacher.params": params})
    assert_fails_first(other, StoreError, "another recipe", table_calls)


def test_cache_checks_every_store_before_a_teacher_pass(
    tmp_path: Path, tokenizer: Path, cached: Recipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluation store belongs to another teacher: refused before the training store
    (now absent) is written, not after."""
    import shutil

    shutil.rmtree(cached.store.path)  # type: ignore[union-attr]

    def write_store(*args: Any, **kwargs: Any) -> None:
        raise Reached("expensive step reached: a teacher pass")

    monkeypatch.setattr(pipeline, "write_store", write_store)
    params = {"tokenizer": str(tokenizer), "layers": 2, "dim": 8, "heads": 2, "init_from": None}
    store = cached.store.model_dump(mode="json")  # type: ignore[union-attr]
    other = text_recipe(tmp_path, tokenizer, store=store, **{"teacher.params": params})
    with pytest.raises(StoreError, match=r"eval_store.*another recipe"):
        cache_recipe(other, progress=False)
    assert not cached.store.path.exists()  # type: ignore[union-attr]


def test_a_good_recipe_builds_its_table_and_trains(
    tmp_path: Path, tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without spies: the postponed table is built (into the cache) and the run finishes."""
    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    recipe = text_recipe(tmp_path, tokenizer)
    result = run_recipe(recipe)
    assert result.run.finished
    assert len(list((tmp_path / "cache" / "static_init").glob("*.safetensors"))) == 1
