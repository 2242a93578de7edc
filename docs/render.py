"""Rewrites the generated blocks of the docs and the README from the studies' JSON.

A block is ``<!-- STUDY:NAME -->`` ... ``<!-- /STUDY -->`` in ``README.md`` or
``docs/*.md``; its body is what the study's renderer makes of the committed
JSON, never typed by hand. ``python docs/render.py`` rewrites every block (and
``precision.png``); ``tests/test_docs.py`` fails when one differs.

Regenerate the JSON first: ``optax-decoupled restarts --out docs/restarts
--overwrite`` and ``python benchmarks/precision.py``.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
from collections.abc import Callable

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)


def _precision_module():
  path = os.path.join(ROOT, "benchmarks", "precision.py")
  spec = importlib.util.spec_from_file_location("precision_study", path)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _load(path: str) -> dict:
  with open(os.path.join(DOCS, path), encoding="utf-8") as f:
    return json.load(f)


def _restarts() -> dict[str, str]:
  from optax_decoupled.cli import _restarts

  return _restarts.render(_load("restarts/restarts.json"))


def _precision() -> dict[str, str]:
  module = _precision_module()
  return module.render(_load("precision.json"), module.load_sweeps(DOCS))


#: Each study's blocks, by name, from its committed JSON.
STUDIES: dict[str, Callable[[], dict[str, str]]] = {
  "restarts": _restarts,
  "precision": _precision,
}


def pages() -> list[str]:
  return [
    os.path.join(ROOT, "README.md"),
    *sorted(glob.glob(os.path.join(DOCS, "*.md"))),
  ]


#: A block's body: lines without a comment marker, or nothing (a new block).
_BODY = r"(?:((?:(?!<!--).)*?)\n)?"


def blocks(text: str) -> list[tuple[str, str, str]]:
  """``(study, name, body)`` of every generated block in ``text``."""
  pattern = re.compile(rf"<!-- (\w+):([\w-]+) -->\n{_BODY}<!-- /\1 -->", re.S)
  return [(m[1], m[2], m[3] or "") for m in pattern.finditer(text)]


def rewrite(text: str, study: str, tables: dict[str, str]) -> str:
  """``text`` with every block of ``study`` replaced by its table; a block
  whose name the study does not render is a KeyError."""

  def body(match):
    return f"<!-- {study}:{match[1]} -->\n{tables[match[1]]}\n<!-- /{study} -->"

  pattern = re.compile(rf"<!-- {study}:([\w-]+) -->\n{_BODY}<!-- /{study} -->", re.S)
  return pattern.sub(body, text)


def main() -> None:
  rendered = {study: make() for study, make in STUDIES.items()}
  for page in pages():
    with open(page, encoding="utf-8") as f:
      text = f.read()
    new = text
    for study, tables in rendered.items():
      new = rewrite(new, study, tables)
    if new != text:
      with open(page, "w", encoding="utf-8") as f:
        f.write(new)
      print(f"rewrote {os.path.relpath(page, ROOT)}")
  module = _precision_module()
  module.figure(os.path.join(DOCS, "precision.png"), _load("precision.json")["curves"])


if __name__ == "__main__":
  main()
