"""Logit losses: one registered loss per module."""
