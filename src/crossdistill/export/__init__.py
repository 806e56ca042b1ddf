"""Ship the student: export a run's student alone (safetensors, TorchScript, ONNX, int8) with a
parity check, and benchmark it against the teacher.

Each format is one registered :class:`Exporter` in its own ``format_*.py`` file.
"""

from crossdistill.export.base import EXPORTERS, Exporter, ExportError
from crossdistill.export.export import export_run
from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)  # registers the format_* exporters

__all__ = ["EXPORTERS", "ExportError", "Exporter", "export_run"]
