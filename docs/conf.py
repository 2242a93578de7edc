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
  "sphinx-mathjax-offline",  # MathJax from the build, not a CDN: offline
  "sphinx.ext.viewcode",
  "myst_parser",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath", "html_image"]
myst_heading_anchors = 3

autodoc_default_options = {"members": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = f"optax-decoupled {release}"


def _check_generated_blocks(app):
  """Fails the build (a warning, an error under -W) when a page's generated
  numbers differ from what docs/render.py makes of the committed JSON."""
  import importlib.util

  from sphinx.util import logging

  spec = importlib.util.spec_from_file_location(
    "render_docs", os.path.join(os.path.dirname(__file__), "render.py")
  )
  render = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(render)
  try:
    tables = render.rendered()
  except ModuleNotFoundError as error:  # the examples extra is not installed
    logging.getLogger(__name__).info(f"generated blocks not checked: {error}")
    return
  for page in render.pages():
    with open(page, encoding="utf-8") as f:
      text = f.read()
    for study, name, body in render.blocks(text):
      if body != tables.get(study, {}).get(name):
        logging.getLogger(__name__).warning(
          f"{os.path.relpath(page)}: the block {study}:{name} is not what "
          "docs/render.py makes of the committed JSON; run python docs/render.py"
        )


def _type_aliases():
  """The aliases the signatures use, by the name to show."""
  import jax
  import optax

  return {
    "jax.typing.ArrayLike": jax.typing.ArrayLike,
    "jax.typing.DTypeLike": jax.typing.DTypeLike,
    "optax.ScalarOrSchedule": optax.ScalarOrSchedule,
    "optax.Schedule": optax.Schedule,
  }


def _alias_typehints(app, what, name, obj, options, signature, return_annotation):
  """Shows ``jax.typing.ArrayLike`` and ``optax.ScalarOrSchedule`` as written.

  The annotations are real objects (optax and users read them at run time),
  so Sphinx would print the unions they stand for; this rewrites the type
  hints autodoc recorded for ``name`` (it runs after autodoc's own handler).
  """
  from sphinx.util.typing import stringify_annotation

  recorded = (
    app.env.current_document.autodoc_annotations.get(name)
    if hasattr(app.env, "current_document")
    and hasattr(app.env.current_document, "autodoc_annotations")
    else (app.env.temp_data.get("annotations", {}).get(name))
  )
  if not recorded:
    return
  # Longest expansions first: ScalarOrSchedule contains ArrayLike's parts.
  expansions = sorted(
    (
      (stringify_annotation(value, mode), alias)
      for alias, value in _type_aliases().items()
      for mode in ("fully-qualified-except-typing", "smart")
    ),
    key=lambda pair: -len(pair[0]),
  )
  for key, text in recorded.items():
    for expansion, alias in expansions:
      text = text.replace(expansion, alias)
    recorded[key] = text


def setup(app):
  app.connect("builder-inited", _check_generated_blocks)
  app.connect("autodoc-process-signature", _alias_typehints, priority=600)
