"""Evaluation: metrics for distilled students."""

from crossdistill.evaluate.metrics import (
    MetricAccumulator,
    accuracy,
    agreement,
    classification_metrics,
    expected_calibration_error,
    kl_divergence,
    topk_accuracy,
)

__all__ = [
    "MetricAccumulator",
    "accuracy",
    "agreement",
    "classification_metrics",
    "expected_calibration_error",
    "kl_divergence",
    "topk_accuracy",
]
