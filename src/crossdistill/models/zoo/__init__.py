"""Reference models: a ResNet-style CNN teacher, small CNN students, a small ViT, an MLP, and
two text students (a static-embedding table, a tiny transformer), a dual encoder over any
text tower, and a speech encoder (alone, or beside a text tower)."""

from crossdistill.models.zoo import (  # noqa: F401  (registers the models)
    cnn,
    dual_encoder,
    mlp,
    resnet,
    speech_encoder,
    speech_text_towers,
    static_embedding,
    tiny_transformer,
    vit,
)
