"""Adapters: small trainable modules that map a student tensor to the teacher's shape and space.

One registered adapter per module (importing this package registers them all); :func:`build_adapter`
builds one by name, or picks one from the two tensors' shapes and layouts (``adapter: auto``).
Adapters are trained and checkpointed with the student and are never part of the exported student.
"""

from crossdistill.core.adapters.base import ADAPTERS, Adapter, auto_adapter, build_adapter
from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["ADAPTERS", "Adapter", "auto_adapter", "build_adapter"]
