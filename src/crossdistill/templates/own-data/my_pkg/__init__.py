"""Your own code: the data source that recipe.yaml names as ``my_pkg.data:load``."""
