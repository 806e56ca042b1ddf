"""Agreement with the teacher: how well the model's embeddings predict the teacher's."""

from __future__ import annotations

from typing import Any

import numpy as np

from crossdistill.domains.text.sentences import DEFAULT_ROOT
from crossdistill.domains.text.suite.base import TEXT_TASKS, TextTask, every_nth
from crossdistill.domains.text.suite.tasks._wordnet import sentences
from crossdistill.errors import ConfigError
from crossdistill.evaluate.embeddings import paired_cosine

SIZES = {False: (5000, 2000), True: (500, 200)}  # quick -> (fit, eval) sentences


def fit_linear_map(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Ridge least squares ``y ~ [x, 1] @ W``: ``(d_x + 1, d_y)``, the bias last and not
    penalised; the penalty is ``ridge`` times the mean eigenvalue of the centred Gram matrix,
    so it does not depend on the scale of ``x``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    penalty = ridge * max(np.trace(gram) / len(gram), 1e-12)
    weights = np.linalg.solve(gram + penalty * np.eye(len(gram)), xc.T @ yc)
    return np.vstack([weights, my - mx @ weights])


def apply_linear_map(x: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """``[x, 1] @ mapping``."""
    return np.asarray(x, dtype=np.float64) @ mapping[:-1] + mapping[-1]


@TEXT_TASKS.register("agreement")
class Agreement(TextTask):
    """Mean cosine between the teacher's embedding of a held-out sentence and the model's
    embedding mapped into the teacher's space by a ridge linear map (with bias) fitted on
    training sentences (the "mean cosine after projection" of a distilled student; the map
    makes students of any width comparable). Fit on 5,000 train-split WordNet sentences spread
    evenly over the split, evaluated on 2,000 test-split ones (``quick``: 500 and 200).
    ``agreement_raw`` is the plain mean cosine, when the widths are equal. Not in the suite's
    average: it measures faithfulness to the teacher, not quality."""

    name = "agreement"
    headline = "agreement"
    needs_teacher = True
    in_average = False

    def __init__(self, teacher: Any = None, root: str = DEFAULT_ROOT) -> None:
        if teacher is None:
            raise ConfigError(
                "the agreement task needs a teacher encoder",
                hint="pass teacher= to run_text_suite (CLI: --teacher minilm)",
            )
        self.teacher = teacher
        self.root = root

    def run(self, encoder: Any, quick: bool = False) -> dict[str, Any]:
        n_fit, n_eval = SIZES[bool(quick)]
        train, test = sentences(str(self.root))["train"], sentences(str(self.root))["test"]
        fit = [train[i] for i in every_nth(len(train), n_fit)]
        held = [test[i] for i in every_nth(len(test), n_eval)]
        student_fit, student_eval = encoder.encode(fit), encoder.encode(held)
        teacher_fit, teacher_eval = self.teacher.encode(fit), self.teacher.encode(held)
        mapping = fit_linear_map(student_fit, teacher_fit)
        mapped = apply_linear_map(student_eval, mapping)
        result: dict[str, Any] = {
            "agreement": float(np.mean(paired_cosine(mapped, teacher_eval))),
            "fit_sentences": len(fit),
            "eval_sentences": len(held),
            "teacher": getattr(self.teacher, "name", type(self.teacher).__name__),
        }
        if student_eval.shape[1] == teacher_eval.shape[1]:
            result["agreement_raw"] = float(np.mean(paired_cosine(student_eval, teacher_eval)))
        return result
