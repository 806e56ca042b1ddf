"""Teachers that run in an inference runtime rather than as PyTorch code: an ONNX graph in
onnxruntime (``onnx_file``) or a TorchScript archive (``torchscript_file``); importing this
registers them. ``crossdistill cache --runtime onnx`` turns a PyTorch teacher into an
``onnx_file`` one for the store pass (see :mod:`crossdistill.models.runtime._convert`).

onnxruntime is imported only when a graph is loaded, so registering costs nothing.
"""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
