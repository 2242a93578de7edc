"""Every ```python block of the README and the docs runs as written.

Each block runs alone in a fresh interpreter (so it must carry its own
imports and data), without the suite's ``XLA_FLAGS``: a block that needs 8
devices sets them itself, as a reader trying it on one machine would. A block
followed directly by a bare ``` block must print exactly that block. The
multi-host block says it is not run and is skipped.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ["README.md", *sorted(glob.glob("docs/*.md", root_dir=ROOT))]
SKIP = "not run by the docs tests"
_FENCE = re.compile(r"^```python\n(.*?)^```\n(?:\n?```\n(.*?)^```\n)?", re.M | re.S)


def _blocks():
  for name in FILES:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
      text = f.read()
    for match in _FENCE.finditer(text):
      line = text[: match.start()].count("\n") + 1
      yield pytest.param(match.group(1), match.group(2), id=f"{name}:{line}")


BLOCKS = list(_blocks())


def test_the_docs_have_python_blocks():
  assert len(BLOCKS) >= 12, [b.id for b in BLOCKS]


@pytest.mark.parametrize("code, output", BLOCKS)
def test_block_runs_as_written(tmp_path, code, output):
  if SKIP in code:
    pytest.skip("needs several hosts")
  for requirement in ("flax", "orbax"):
    if re.search(rf"^\s*(import|from) {requirement}\b", code, re.M):
      pytest.importorskip(requirement)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    env=env,
    cwd=tmp_path,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  if output is not None:
    assert proc.stdout.strip() == output.strip(), proc.stdout


def test_readme_pictures_have_absolute_urls():
  """PyPI shows the README without the repository: relative paths break."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    targets = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", f.read())
  assert targets, "the README has a picture"
  for target in targets:
    assert target.startswith("https://"), target


def _render_module():
  import importlib.util

  path = os.path.join(ROOT, "docs", "render.py")
  spec = importlib.util.spec_from_file_location("render_docs", path)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_generated_blocks_come_from_the_committed_json():
  """Every ``<!-- STUDY:NAME -->`` block of the README and the docs is what
  ``docs/render.py`` renders from the committed JSON (regenerate the study,
  then ``python docs/render.py``): a number edited by hand in a page, or a
  JSON edited without re-rendering, fails here."""
  render = _render_module()
  rendered = {study: make() for study, make in render.STUDIES.items()}
  found = set()
  for page in render.pages():
    with open(page, encoding="utf-8") as f:
      text = f.read()
    for study, name, body in render.blocks(text):
      assert study in rendered, (page, study)
      assert body == rendered[study][name], (page, study, name)
      found.add((study, name))
  # Every table the studies render is shown somewhere.
  assert found == {(s, n) for s, tables in rendered.items() for n in tables}


def test_render_rewrites_exactly_the_blocks():
  render = _render_module()
  text = (
    "a\n<!-- x:one -->\nold 1\n<!-- /x -->\nb 3.5 %\n<!-- x:two -->\nold\n<!-- /x -->\n"
  )
  new = render.rewrite(text, "x", {"one": "| 1 |", "two": "| 2 |"})
  assert (
    new
    == "a\n<!-- x:one -->\n| 1 |\n<!-- /x -->\nb 3.5 %\n<!-- x:two -->\n| 2 |\n<!-- /x -->\n"
  )
  assert render.blocks(new) == [("x", "one", "| 1 |"), ("x", "two", "| 2 |")]
  # New, empty blocks side by side are filled one by one, not merged.
  empty = "<!-- x:one -->\n<!-- /x -->\n\ntext\n<!-- x:two -->\n<!-- /x -->\n"
  assert render.blocks(empty) == [("x", "one", ""), ("x", "two", "")]
  filled = render.rewrite(empty, "x", {"one": "| 1 |", "two": "| 2 |"})
  assert (
    filled
    == "<!-- x:one -->\n| 1 |\n<!-- /x -->\n\ntext\n<!-- x:two -->\n| 2 |\n<!-- /x -->\n"
  )
