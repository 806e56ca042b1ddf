"""The vision domain (see ``crossdistill.domains``); importing it registers its plug-ins."""

from crossdistill.registry import import_submodules

import_submodules(__name__, __path__)
