"""Sphinx configuration of the mumatch documentation (myst-nb pages, autosummary API, sphinx-book-theme).

Notebook execution is controlled by ``MUMATCH_DOCS_EXECUTE``: ``cache`` (default, used by ``make docs``) executes the
tutorials once and re-uses their outputs until a notebook changes; ``off`` renders the committed notebooks (stripped
of outputs) as they are, which is what the fast docs test in CI does to check pages and references in seconds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import mumatch  # noqa: E402

project = "mumatch"
author = "mumatch developers"
copyright = "mumatch developers"  # noqa: A001
release = version = mumatch.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
# .rst first: autosummary writes its stub pages with the first reStructuredText suffix.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"

# API reference: autosummary pages from the numpydoc docstrings; signatures carry the type hints.

autodoc_typehints = "signature"
autodoc_member_order = "groupwise"
autodoc_mock_imports: list[str] = []
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Markdown and notebooks.
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist", "substitution"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("MUMATCH_DOCS_EXECUTE", "cache")
nb_execution_timeout = int(os.environ.get("MUMATCH_DOCS_TIMEOUT", "1800"))
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_execution_excludepatterns: list[str] = []

html_theme = "sphinx_book_theme"
html_title = "mumatch"
html_static_path = ["_static"]
html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}
html_show_sourcelink = False

# The API reference lists every public name of each namespace (its ``__all__``), so that a function added to a
# namespace appears in the docs without editing api.md: ``<!-- autosummary: NAMESPACE -->`` lines of api.md become
# autosummary tables when the page is read, and the same tables, written to generated/_api.rst, tell autosummary which
# stub pages to generate.
API_NAMESPACES = ("pp", "tl", "pl", "model", "datasets", "metrics", "ot")
API_MARKER = "<!-- autosummary: {} -->"


def _autosummary(namespace: str, toctree: str) -> str:
    module = getattr(mumatch, namespace)
    names = "\n".join(f"   {namespace}.{name}" for name in module.__all__)
    return f".. currentmodule:: mumatch\n\n.. autosummary::\n   :toctree: {toctree}\n   :nosignatures:\n\n{names}\n"


GENERATED = HERE / "generated"
GENERATED.mkdir(exist_ok=True)
(GENERATED / "_api.rst").write_text(
    ":orphan:\n\n" + "\n".join(_autosummary(namespace, ".") for namespace in API_NAMESPACES)
)
autosummary_generate = ["generated/_api.rst"]
exclude_patterns.append("generated/_api.rst")


def _expand_api(app, docname: str, source: list[str]) -> None:
    if docname != "api":
        return
    for namespace in API_NAMESPACES:
        # The module target lets pages link a whole namespace ({mod}`mumatch.pl`) to its section.
        target = f".. module:: mumatch.{namespace}\n\n"
        block = "```{eval-rst}\n" + target + _autosummary(namespace, "generated") + "```"
        source[0] = source[0].replace(API_MARKER.format(namespace), block)


# Pages that other parts of the project add (each written with its feature) join the index's toctrees when they exist
# (add a new page's name here, not to index.md):
# ``<!-- pages: NAME -->`` lines of index.md become the existing pages of OPTIONAL_PAGES[NAME], in this order. An
# explicit toctree entry would fail the build while a page is missing; a glob would warn.
OPTIONAL_PAGES = {
    "method": ("preprocessing", "models", "clue", "method_ot"),
    "reference": ("benchmarks",),
}
PAGES_MARKER = "<!-- pages: {} -->"


def _expand_index(app, docname: str, source: list[str]) -> None:
    if docname != "index":
        return
    for name, pages in OPTIONAL_PAGES.items():
        present = [page for page in pages if (HERE / f"{page}.md").exists()]
        source[0] = source[0].replace(PAGES_MARKER.format(name), "\n".join(present))


def _expand_tutorials(app, docname: str, source: list[str]) -> None:
    if docname != "tutorials/index":
        return
    notebooks = sorted(path.stem for path in (HERE / "tutorials").glob("*.ipynb"))
    source[0] = source[0].replace("<!-- notebooks -->", "\n".join(notebooks))


def setup(app) -> None:  # noqa: D103
    app.connect("source-read", _expand_api)
    app.connect("source-read", _expand_index)
    app.connect("source-read", _expand_tutorials)


# Broken references to mumatch's own objects fail the build; references to other packages' objects (type hints such
# as MuData or Axes) are left unresolved, since the build must work offline (no intersphinx inventories).
nitpicky = True
# Private classes (a documented class's private base, a private module) have no page either.
nitpick_ignore_regex = [(r"py:.*", r"^(?!mumatch\b).*"), (r"py:.*", r"^mumatch\..*\._[A-Za-z].*")]
