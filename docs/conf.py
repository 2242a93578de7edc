"""Sphinx configuration: Markdown pages (MyST) and the API from the docstrings.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import optax_decoupled  # noqa: E402

project = "optax-decoupled"
author = "optax-decoupled developers"
copyright = "optax-decoupled developers"  # noqa: A001
release = version = optax_decoupled.__version__

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "myst_parser",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_default_options = {"members": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = f"optax-decoupled {release}"
