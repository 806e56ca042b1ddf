"""Evaluation of an image tower trained into a text encoder's space (``fashion_text`` runs).

The tower was never shown the held-out classes; it can still name them when their images land
near the teacher's embedding of their prompt. Metrics, all on the Fashion-MNIST test images:

- ``zero_shot_heldout_acc``: held-out images, classified among the held-out prompts only
  (chance ``1 / len(held_out)``, 0.5 for two);
- ``zero_shot_all10_acc``: the same images among all ten prompts (chance 0.1): a held-out
  image must beat the seen classes the tower was trained on;
- ``zero_shot_seen_acc``: seen-class images among the seen prompts;
- ``linear_probe_acc``: logistic regression on the frozen, L2-normalised embeddings, fitted on
  the ``probe`` split (training images of the held-out classes) and scored on the held-out test
  images: what the features allow with labels, the upper bound of the zero-shot task;
- ``teacher_cosine``: mean cosine between a seen-class image's embedding and the teacher's
  embedding of its paired text;
- ``params`` of the tower and its throughput ``images_per_s`` (batch 256, CPU, one process).

From the shell: ``crossdistill eval --suite image-text runs/NAME [--no-probe]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydantic

from crossdistill.domains.text.suite.encoders import load_encoder
from crossdistill.domains.vision.fashion_text import CLASS_PROMPTS, held_out_ids
from crossdistill.errors import ConfigError
from crossdistill.evaluate.embeddings import paired_cosine, unit_rows
from crossdistill.evaluate.paired import Embedding, Items, embed_batches, zero_shot
from crossdistill.runs import Run
from crossdistill.suites import SUITES, Suite

SOURCE = "fashion_text"


def image_text_metrics(
    images: np.ndarray,
    targets: np.ndarray,
    prompts: np.ndarray,
    held_out: Sequence[int],
    paired_teacher: np.ndarray | None = None,
    probe_images: np.ndarray | None = None,
    probe_targets: np.ndarray | None = None,
) -> dict[str, float]:
    """The zero-shot, probe and agreement metrics from embeddings.

    ``images`` ``(N, D)``: test image embeddings with class ids ``targets``; ``prompts``
    ``(C, D)``: the teacher's embedding of each class prompt; ``held_out``: class ids never
    trained on; ``paired_teacher`` ``(N, D)``: the teacher's embedding of each image's text;
    ``probe_*``: embeddings and labels of held-out-class images to fit the linear probe on.
    """
    targets = np.asarray(targets)
    held = np.array(sorted(set(int(c) for c in held_out)), dtype=np.int64)
    seen = np.setdiff1d(np.arange(len(prompts)), held)
    is_held = np.isin(targets, held)
    if not is_held.any() or is_held.all():
        raise ConfigError("image-text evaluation needs test images of held-out and seen classes")
    h_images, h_targets = images[is_held], targets[is_held]
    s_images, s_targets = images[~is_held], targets[~is_held]
    out = {
        "zero_shot_heldout_acc": _acc(held[zero_shot(h_images, prompts[held])], h_targets),
        "zero_shot_all10_acc": _acc(zero_shot(h_images, prompts), h_targets),
        "zero_shot_seen_acc": _acc(seen[zero_shot(s_images, prompts[seen])], s_targets),
    }
    if paired_teacher is not None:
        cos = paired_cosine(s_images, paired_teacher[~is_held])
        out["teacher_cosine"] = float(cos.mean())
    if probe_images is not None and probe_targets is not None:
        out["linear_probe_acc"] = linear_probe(probe_images, probe_targets, h_images, h_targets)
    return out


def _acc(predicted: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(targets)))


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    """Accuracy of a logistic regression on L2-normalised features (sklearn, default C)."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(train_y)) < 2:
        raise ConfigError("the linear probe needs at least two classes in its training split")
    probe = LogisticRegression(max_iter=2000)
    probe.fit(unit_rows(train_x), np.asarray(train_y))
    return _acc(probe.predict(unit_rows(test_x)), test_y)


def evaluate_image_run(
    run_dir: str | Path,
    probe: bool = True,
    teacher: str = "minilm",
    batch_size: int = 256,
) -> dict[str, Any]:
    """Every metric of the module docstring for a finished ``fashion_text`` run.

    The data (held-out classes, text pools) are the run's recipe's; ``teacher`` (a registered
    text encoder or a model directory) embeds the class prompts and the paired texts, and must
    be the teacher the run distilled. ``probe=False`` skips the linear probe (12,000 images).
    """
    run = Run.open(run_dir)
    recipe = run.config
    if recipe.data.source != SOURCE:
        raise ConfigError(
            f"{run.path}: data source {recipe.data.source!r} is not {SOURCE!r}",
            hint="image-text evaluation reads Fashion-MNIST images paired with class texts",
        )
    params = recipe.data.params
    test = run.split("test")
    held = held_out_ids(params.get("held_out", ("Trouser", "Sneaker")))
    tower = Embedding(run.student(), run.path)
    start = time.perf_counter()
    images = embed_batches(tower, Items(test.modalities["image"]), batch_size)
    seconds = time.perf_counter() - start
    encoder = load_encoder(teacher)
    prompts = encoder.encode(list(CLASS_PROMPTS))
    # each distinct text once (about a hundred), then one row per image
    _, first, text_of = np.unique(test.meta["text_id"], return_index=True, return_inverse=True)
    paired = encoder.encode([test.texts[i] for i in first])[text_of]
    probe_images = probe_targets = None
    if probe:
        probe_split = run.split("probe")
        probe_images = embed_batches(tower, Items(probe_split.modalities["image"]), batch_size)
        probe_targets = probe_split.targets.numpy()
    targets = test.targets.numpy()
    result: dict[str, Any] = image_text_metrics(
        images, targets, prompts, held, paired, probe_images, probe_targets
    )
    result.update(
        held_out=[test.class_names[c] for c in held],
        zero_shot_heldout_chance=1.0 / len(held),
        zero_shot_all10_chance=1.0 / len(prompts),
        params=sum(p.numel() for p in tower.parameters()),
        images_per_s=len(images) / seconds,
    )
    return result


class ImageTextOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    teacher: str = "minilm"  # the text encoder of the prompts: the teacher the run distilled
    probe: bool = True  # the linear-probe upper bound (12,000 images)


@SUITES.register("image-text")
class ImageTextSuite(Suite):
    """Zero-shot classification of held-out Fashion-MNIST classes by their names in the text
    teacher's space, seen-class and all-class zero-shot, teacher cosine, a linear probe."""

    Options = ImageTextOptions

    def run(self, target: str, options: ImageTextOptions) -> dict[str, Any]:
        return evaluate_image_run(target, probe=options.probe, teacher=options.teacher)
