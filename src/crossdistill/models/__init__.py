"""Models: the model registry, the reference zoo, real pretrained teachers (``hub``), and weights
loading. Importing this package registers the zoo and the hub models."""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)  # the zoo and the hub register their models
