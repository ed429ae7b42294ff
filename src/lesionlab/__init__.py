"""lesionlab: dermoscopic skin-lesion classifiers; `load`, `train` and `evaluate` are the Python API."""

from importlib.metadata import version

from lesionlab.api import Model, Result, cross_validate, evaluate, load, train

__all__ = ["Model", "Result", "cross_validate", "evaluate", "load", "train"]
__version__ = version("lesionlab")
