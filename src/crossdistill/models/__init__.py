"""Models: the model registry, the reference zoo, real pretrained teachers (``hub``), and weights
loading. Importing this package registers the zoo and the hub models."""

from crossdistill.models import hub, zoo  # noqa: F401  (registers the built-in models)
