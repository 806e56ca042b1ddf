"""Reference models: a ResNet-style CNN teacher, small CNN students, a small ViT, an MLP, and
two text students: a static-embedding table and a tiny transformer."""

from crossdistill.models.zoo import (  # noqa: F401  (registers the models)
    cnn,
    mlp,
    resnet,
    static_embedding,
    tiny_transformer,
    vit,
)
