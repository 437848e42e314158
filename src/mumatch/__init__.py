"""mumatch: match single cells across omics modalities.

Namespaces follow scanpy and scvi-tools: ``pp`` (preprocessing), ``tl`` (tools: training and matching), ``pl``
(plots), ``model`` (scvi-tools-style model classes), ``datasets``, ``metrics`` and ``ot`` (solvers on embeddings).
"""

from importlib.metadata import PackageNotFoundError, version

from scanpy import settings  # verbosity and figure settings are shared with scanpy

from . import datasets, metrics, model, ot, pl, pp, tl

try:
    __version__ = version("mumatch")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["datasets", "metrics", "model", "ot", "pl", "pp", "settings", "tl"]
