"""Reference models: a ResNet-style CNN teacher, small CNN students, a small ViT, an MLP, and
two text students (a static-embedding table, a tiny transformer) and a dual encoder over any
text tower."""

from crossdistill.models.zoo import (  # noqa: F401  (registers the models)
    cnn,
    dual_encoder,
    mlp,
    resnet,
    static_embedding,
    tiny_transformer,
    vit,
)
