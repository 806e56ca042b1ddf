"""Reference models: a ResNet-style CNN teacher, small CNN students, an MLP."""

from crossdistill.models.zoo import cnn, mlp, resnet  # noqa: F401  (registers the models)
