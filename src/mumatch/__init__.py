"""mumatch: match single cells across omics modalities.

Namespaces follow scanpy and scvi-tools: ``pp`` (preprocessing), ``tl`` (tools: training and matching), ``pl``
(plots), ``model`` (scvi-tools-style model classes), ``datasets``, ``metrics`` and ``ot`` (solvers on embeddings).
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from scanpy import settings  # verbosity and figure settings are shared with scanpy

try:
    __version__ = version("mumatch")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

# Namespaces are imported on first use (PEP 562): preprocessing alone then never loads torch, scvi-tools and
# Lightning, whose imports weigh ~300 MB of resident memory, as much as the data of a 10k-cell multiome set.
_NAMESPACES = ("datasets", "metrics", "model", "ot", "pl", "pp", "tl")

__all__ = [*_NAMESPACES, "settings"]


def __getattr__(name: str) -> ModuleType:
    if name in _NAMESPACES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # The namespaces (imported or not), settings and the module's dunders: not the helpers this file imports.
    return sorted({*(name for name in globals() if name.startswith("__")), *__all__})
