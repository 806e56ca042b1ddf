"""Logit losses: one registered loss per module."""

from crossdistill.losses.logit import ce, dist, dkd, kd, logit_std_kd, nkd, ofa  # noqa: F401
