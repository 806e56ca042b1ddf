"""Evaluation: batch metric accumulators and evaluators (a student over a loader -> metrics),
and latency timing. Nothing here knows a run directory; suites (``crossdistill.suites``)
evaluate runs through these."""

from crossdistill.evaluate.evaluators import (
    check_evaluable,
    evaluate_classification,
    evaluate_embeddings,
    evaluate_student,
)
from crossdistill.evaluate.metrics import (
    MetricAccumulator,
    accuracy,
    agreement,
    binary_metrics,
    classification_metrics,
    expected_calibration_error,
    kl_divergence,
    topk_accuracy,
)

__all__ = [
    "MetricAccumulator",
    "accuracy",
    "agreement",
    "binary_metrics",
    "check_evaluable",
    "classification_metrics",
    "evaluate_classification",
    "evaluate_embeddings",
    "evaluate_student",
    "expected_calibration_error",
    "kl_divergence",
    "topk_accuracy",
]
