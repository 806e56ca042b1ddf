"""crossdistill: knowledge distillation across architectures and modalities."""

__version__ = "0.1.0"
