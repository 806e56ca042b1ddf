"""Reference models: a ResNet-style CNN teacher, small CNN students, a small ViT and an MLP.
Importing this registers them (one file each); the text, ranking and speech students live in
their domains (``crossdistill.domains``)."""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
