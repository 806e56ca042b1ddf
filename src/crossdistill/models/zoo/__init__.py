"""Reference models: a ResNet-style CNN teacher, small CNN students, a small ViT, an MLP, a
static-embedding text student."""

from crossdistill.models.zoo import (  # noqa: F401  (registers the models)
    cnn,
    mlp,
    resnet,
    static_embedding,
    vit,
)
