"""Training: the loop, checkpoints, runtime (seeds, device, AMP)."""
