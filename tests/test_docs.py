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
  for requirement in ("flax", "orbax", "torch"):
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
  rendered = render.rendered()
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


def test_docs_build_offline_with_type_hints_as_written(tmp_path):
  """The site's math is MathJax copied into the build (no CDN), and the API
  page shows ``jax.typing.ArrayLike`` and ``optax.ScalarOrSchedule`` as the
  signatures say, not the unions they stand for."""
  pytest.importorskip("sphinx")
  pytest.importorskip("myst_parser")
  import importlib.util

  if importlib.util.find_spec("sphinx-mathjax-offline") is None:
    pytest.skip("the docs extra is not installed")
  out = tmp_path / "html"
  proc = subprocess.run(
    [sys.executable, "-m", "sphinx", "-q", "-b", "html", "docs", str(out)],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  html = (out / "api.html").read_text(encoding="utf-8")
  scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', html)
  assert scripts == ["_static/mathjax/tex-chtml.js"], scripts
  assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()
  start = html.index('id="optax_decoupled.adamw"')
  adamw = html[start : html.index('id="optax_decoupled.', start + 30)]
  assert "jax.typing.ArrayLike" in adamw and "optax.ScalarOrSchedule" in adamw
  assert "ndarray" not in adamw and "Union" not in adamw


_SHELL = re.compile(r"^```(?:bash|sh|console)?\n(.*?)^```\n", re.M | re.S)


def _commands():
  """Every ``optax-decoupled ...`` line of a shell block, with its page."""
  for name in FILES:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
      text = f.read()
    for match in _SHELL.finditer(text):
      for line in match.group(1).splitlines():
        for part in line.split(" #")[0].split("&&"):
          command = part.strip()
          if command.startswith("optax-decoupled"):
            yield pytest.param(command, id=f"{name}: {command}")


COMMANDS = list(_commands())


def test_the_docs_have_commands():
  assert len(COMMANDS) >= 14, [c.id for c in COMMANDS]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_documented_command_is_accepted(command):
  """Each command line in the docs parses as written: its subcommand, flags and
  values exist (the expensive ones are not run here; the cheap ones are, below)."""
  import shlex

  pytest.importorskip("flax")
  from optax_decoupled.cli import _main

  args = _main._parser().parse_args(shlex.split(command)[1:])
  assert args.command in _main._COMMANDS


@pytest.mark.parametrize(
  "command",
  [
    c
    for c in COMMANDS
    if " schedule" in c.values[0] or c.values[0] == "optax-decoupled"
  ],
)
def test_cheap_documented_commands_run_as_written(tmp_path, command):
  """The commands that take seconds run for real, in a scratch folder."""
  import shlex

  pytest.importorskip("flax")
  argv = shlex.split(command)[1:]
  proc = subprocess.run(
    [sys.executable, "-m", "optax_decoupled", *argv],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    env={**os.environ, "PYTHONPATH": ROOT},
    timeout=300,
  )
  assert proc.returncode == (2 if not argv else 0), proc.stderr[-2000:]


def test_regeneration_check_finds_an_edited_number():
  """``docs/render.py --check`` compares a regenerated JSON with the committed
  one number by number: one edited number is a difference, the timing fields
  are not, and a tolerance is relative."""
  import json

  render = _render_module()
  with open(os.path.join(ROOT, "docs", "sweep", "sweep.json"), encoding="utf-8") as f:
    committed = json.load(f)
  regenerated = json.loads(json.dumps(committed))
  assert render.differences(regenerated, committed) == []
  regenerated["time"] = {"wall_seconds": 1.0}  # another machine's clock
  regenerated["timing"]["adamw"]["vmapped_seconds"] += 7.0
  assert render.differences(regenerated, committed) == []
  row = regenerated["rows"][5]
  row["test_error"] += 1e-4
  found = render.differences(regenerated, committed)
  assert found == [
    f".rows[5].test_error: {row['test_error']!r}, committed "
    f"{committed['rows'][5]['test_error']!r}"
  ]
  assert render.differences(regenerated, committed, tolerance=1e-3) == []
  regenerated["rows"].pop()
  assert any("entries" in d for d in render.differences(regenerated, committed))
