"""``speech-text``: a student of paired data (speech, or another modality, with text) on a split
of its recipe's paired source: retrieval to and from text (R@1/5/10, MRR), zero-shot
classification against "a kind of {class}", and agreement with the text teacher.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pydantic

from crossdistill.domains.text.suite.encoders import load_encoder
from crossdistill.errors import ConfigError
from crossdistill.evaluate.paired import Embedding, Items, chance, embed_batches, paired_suite
from crossdistill.runs import Run
from crossdistill.suites import SUITES, Suite

PROMPT = "a kind of {}"


def run_paired_suite(
    run_dir: str | Path,
    split: str = "test",
    modality: str | None = None,
    teacher: str = "minilm",
    limit: int | None = None,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Evaluate a finished run's student on ``split`` of its recipe's paired data source.

    The student's tower for ``modality`` (default: the split's other modality) embeds every
    example; texts are embedded by the student's own text tower when it has one
    (``speech_text_towers``), otherwise by ``teacher`` (a registered text encoder or a path;
    the space a distilled student was trained into). Class names enter as ``PROMPT``.
    """
    run = Run.open(run_dir)
    data = run.split(split)
    if "text" not in data.fields or len(data.fields) < 2:
        raise ConfigError(
            f"{run.path}: data source {run.config.data.source!r} is not paired data (text and "
            f"another modality); its fields: {sorted(data.fields)}",
            hint="--suite speech-text evaluates students of paired sources (speech_text, "
            "fashion_text)",
        )
    texts_of_split = data.fields["text"]
    modality = modality or next(m for m in data.fields if m != "text")
    keep = np.arange(len(data)) if limit is None else np.arange(min(limit, len(data)))
    all_ids = data.meta.get("text_id", np.arange(len(data)))
    text_of = {int(all_ids[i]): texts_of_split[i] for i in keep}
    distinct, text_id = np.unique(all_ids[keep], return_inverse=True)
    texts = [text_of[int(t)] for t in distinct]
    wrapper = run.student()
    # a two-tower student's tower of that modality; else the whole student, input pipeline
    # included (e.g. an image student's normalisation)
    tower = getattr(wrapper.model, modality, None) or Embedding(wrapper, run.path)
    own_text = getattr(wrapper.model, "text", None)
    items = Items(data.fields[modality])
    start = time.perf_counter()
    student = embed_batches(tower, [items[int(i)] for i in keep], batch_size)
    seconds = time.perf_counter() - start
    encoder = load_encoder(teacher)
    prompts = [PROMPT.format(c) for c in data.class_names]
    teacher_texts, teacher_classes = encoder.encode(texts), encoder.encode(prompts)
    if own_text is not None:
        student_texts = embed_batches(own_text, texts, batch_size)
        student_classes = embed_batches(own_text, prompts, batch_size)
        teacher_of_example = None
    else:
        student_texts, student_classes = teacher_texts, teacher_classes
        teacher_of_example = teacher_texts[text_id]
    targets = None if data.targets is None else data.targets.numpy()[keep]
    result = paired_suite(
        student,
        student_texts,
        teacher_texts,
        text_id,
        targets,
        student_classes,
        teacher_classes,
        teacher_of_example,
    )
    result.update(
        set=data.name,
        modality=modality,
        chance=chance(text_id, len(texts)),
        zero_shot_chance=1.0 / max(1, data.num_classes),
        embeddings_per_s=len(keep) / seconds,
        params=sum(p.numel() for p in tower.parameters()),
    )
    return result


QUICK_PAIRS = 200  # --quick: the split's first examples


class SpeechTextOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    split: str = "test"
    teacher: str = "minilm"  # the text encoder of the space (a registered name or a folder)
    quick: bool = False


@SUITES.register("speech-text")
class SpeechTextSuite(Suite):
    """Retrieval between the student's modality and text both ways, zero-shot classification
    and teacher agreement, on a split of the run's paired data."""

    Options = SpeechTextOptions

    def run(self, target: str, options: SpeechTextOptions) -> dict[str, Any]:
        limit = QUICK_PAIRS if options.quick else None
        return run_paired_suite(target, options.split, teacher=options.teacher, limit=limit)

    def result_name(self, target: str, options: SpeechTextOptions) -> str:
        return f"speech-text-{options.split}"
