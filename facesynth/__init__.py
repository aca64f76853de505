"""facesynth: a YAML recipe in, a synthetic face-recognition training dataset out."""

__version__ = "0.1.0"

from facesynth.api import regenerate, run  # noqa: E402
from facesynth.recipe import Recipe, load_recipe  # noqa: E402

__all__ = ["Recipe", "__version__", "load_recipe", "regenerate", "run"]
