"""Reference models: a ResNet-style CNN teacher, small CNN students, a small ViT, an MLP."""

from crossdistill.models.zoo import cnn, mlp, resnet, vit  # noqa: F401  (registers the models)
