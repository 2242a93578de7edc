"""Regenerates the studies behind the docs, and renders their numbers into the pages.

``python docs/render.py --regenerate`` reruns every study of :data:`COMMANDS`
into its folder under ``docs/`` (its JSON next to its pictures; about 45
minutes on 2 cores), then rewrites the pages. ``python docs/render.py`` only
rewrites the pages from the committed JSON. ``--regenerate NAME ...`` reruns
some. ``--check`` compares the regenerated JSON with the committed one
(``git show HEAD:...``), cell by cell; ``.ci/regenerate`` runs both.

A generated block is ``<!-- STUDY:NAME -->`` ... ``<!-- /STUDY -->`` in
``README.md`` or ``docs/*.md``; its body is what the study's renderer makes of
the committed JSON, never typed by hand, and ``tests/test_docs.py`` fails when
one differs.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)


def _load(path: str) -> dict:
  with open(os.path.join(DOCS, path), encoding="utf-8") as f:
    return json.load(f)


def _restarts() -> dict[str, str]:
  from optax_decoupled.cli import _restarts

  return _restarts.render(_load("restarts/restarts.json"))


def _benchmark(name: str):
  path = os.path.join(ROOT, "benchmarks", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"{name}_study", path)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _precision() -> dict[str, str]:
  module = _benchmark("precision")
  return module.render(_load("precision.json"), module.load_sweeps(DOCS))


def rendered() -> dict[str, dict[str, str]]:
  """Every study's blocks, by study and name, from the committed JSON."""
  from optax_decoupled.cli import _reports

  return {
    **_reports.render_all(_load),
    "restarts": _restarts(),
    "precision": _precision(),
    "sweep-devices": _benchmark("sweep_devices").render(
      _load("sweep-devices/devices.json")
    ),
  }


_CLI = [sys.executable, "-m", "optax_decoupled"]
#: How each study is regenerated, in order (the precision study reads the
#: sweeps), and the JSON files it writes under docs/.
COMMANDS: dict[str, tuple[list[str], list[str]]] = {
  "sweep": ([*_CLI, "sweep"], ["sweep/sweep.json"]),
  "sweep-mlp": ([*_CLI, "sweep", "--model", "mlp"], ["sweep-mlp/sweep.json"]),
  "sweep-sgd": (
    [*_CLI, "sweep", "--optimizers", "sgd_l2,sgdw"],
    ["sweep-sgd/sweep.json"],
  ),
  "sweep-cautious": (
    [*_CLI, "sweep", "--optimizers", "adamw,adamw_cautious"],
    ["sweep-cautious/sweep.json"],
  ),
  "budgets": (
    [*_CLI, "sweep", "--budgets", "750,1500,3000,6000"],
    ["budgets/budgets.json"],
  ),
  "sweep-bf16": (
    [*_CLI, "sweep", "--param-dtype", "bfloat16"],
    ["sweep-bf16/sweep.json"],
  ),
  "sweep-bf16-none": (
    [*_CLI, "sweep", "--param-dtype", "bfloat16", "--compensation", "none"],
    ["sweep-bf16-none/sweep.json"],
  ),
  "restarts": ([*_CLI, "restarts"], ["restarts/restarts.json"]),
  "sweep-cnn": (
    [
      sys.executable,
      os.path.join("examples", "sweep_digits_cnn.py"),
      "--out",
      "docs/sweep-cnn",
    ],
    ["sweep-cnn/bn.json", "sweep-cnn/plain.json"],
  ),
  "sweep-devices": (
    [
      sys.executable,
      os.path.join("benchmarks", "sweep_devices.py"),
      "--out",
      "docs/sweep-devices",
    ],
    ["sweep-devices/devices.json"],
  ),
  "corrected": (
    [sys.executable, os.path.join("examples", "corrected_decay.py")],
    ["corrected/corrected.json"],
  ),
  "precision": (
    [sys.executable, os.path.join("benchmarks", "precision.py"), "--out", "docs"],
    ["precision.json"],
  ),
}


def regenerate(names: list[str]) -> None:
  for name in names:
    command, _ = COMMANDS[name]
    if name != "precision":
      # A relative --out: the JSON records it, the same in every clone.
      command = [*command, "--out", os.path.join("docs", name)]
      command += ["--overwrite"] if command[1] == "-m" else []
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


#: Keys that describe the machine or the installed versions, not the study's
#: results: not compared by --check.
TIMING_KEYS = {
  "versions",
  "time",
  "timing",
  "seconds",
  "wall_seconds",
  "cpu_seconds",
  "load_average",
  "vmapped_seconds",
  "elapsed_seconds",
  "hardware",
  "per_process",
  "grid_seconds",
  "one_piece_seconds",
  "extrapolated_seconds",
  "compile_seconds",
}


def differences(new, old, path="", tolerance=0.0) -> list[str]:
  """Where two JSON values differ: every number compared, beyond ``tolerance``
  (relative), every key and list length; timing keys skipped."""
  if isinstance(new, dict) and isinstance(old, dict):
    out = []
    for key in sorted(set(new) | set(old)):
      if key in TIMING_KEYS:
        continue
      if key not in new or key not in old:
        out.append(
          f"{path}.{key}: only in {'the new' if key in new else 'the committed'} file"
        )
      else:
        out += differences(new[key], old[key], f"{path}.{key}", tolerance)
    return out
  if isinstance(new, list) and isinstance(old, list):
    if len(new) != len(old):
      return [f"{path}: {len(new)} entries, committed {len(old)}"]
    return [
      d
      for i, (a, b) in enumerate(zip(new, old, strict=True))
      for d in differences(a, b, f"{path}[{i}]", tolerance)
    ]
  numbers = (int, float)
  if (
    isinstance(new, numbers) and isinstance(old, numbers) and not isinstance(new, bool)
  ):
    if abs(new - old) <= tolerance * max(abs(new), abs(old)):
      return []
  elif new == old:
    return []
  return [f"{path}: {new!r}, committed {old!r}"]


def check(names: list[str], tolerance: float) -> int:
  """Compares each regenerated JSON with its committed version; the count of
  files that differ."""
  failed = 0
  for name in names:
    for path in COMMANDS[name][1]:
      committed = subprocess.run(
        ["git", "show", f"HEAD:docs/{path}"], capture_output=True, text=True, cwd=ROOT
      )
      if committed.returncode != 0:
        print(f"{path}: not committed")
        failed += 1
        continue
      found = differences(
        _load(path), json.loads(committed.stdout), tolerance=tolerance
      )
      print(f"{path}: {'the same' if not found else f'{len(found)} differences'}")
      for line in found[:20]:
        print("  " + line)
      failed += bool(found)
  return failed


def pages() -> list[str]:
  return [
    os.path.join(ROOT, "README.md"),
    *sorted(glob.glob(os.path.join(DOCS, "*.md"))),
  ]


#: A block's body: lines without a comment marker, or nothing (a new block).
_BODY = r"(?:((?:(?!<!--).)*?)\n)?"


def blocks(text: str) -> list[tuple[str, str, str]]:
  """``(study, name, body)`` of every generated block in ``text``."""
  pattern = re.compile(rf"<!-- ([\w-]+):([\w-]+) -->\n{_BODY}<!-- /\1 -->", re.S)
  return [(m[1], m[2], m[3] or "") for m in pattern.finditer(text)]


def rewrite(text: str, study: str, tables: dict[str, str]) -> str:
  """``text`` with every block of ``study`` replaced by its table; a block
  whose name the study does not render is a KeyError."""

  def body(match):
    return f"<!-- {study}:{match[1]} -->\n{tables[match[1]]}\n<!-- /{study} -->"

  name = re.escape(study)
  pattern = re.compile(rf"<!-- {name}:([\w-]+) -->\n{_BODY}<!-- /{name} -->", re.S)
  return pattern.sub(body, text)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--regenerate",
    nargs="*",
    metavar="NAME",
    help=f"rerun these studies ({', '.join(COMMANDS)}; none named: all) first",
  )
  parser.add_argument(
    "--check",
    action="store_true",
    help="compare the regenerated JSON with the committed one",
  )
  parser.add_argument(
    "--tolerance", type=float, default=0.0, help="relative, for --check (0: exactly)"
  )
  args = parser.parse_args()
  names = list(COMMANDS) if args.regenerate == [] else args.regenerate or []
  unknown = [n for n in names if n not in COMMANDS]
  if unknown:
    parser.error(f"unknown studies {unknown}; choose from {', '.join(COMMANDS)}")
  regenerate(names)
  if args.check:
    sys.exit(1 if check(names or list(COMMANDS), args.tolerance) else 0)
  render_pages()


def render_pages() -> None:
  blocks_by_study = rendered()
  for page in pages():
    with open(page, encoding="utf-8") as f:
      text = f.read()
    new = text
    for study, tables in blocks_by_study.items():
      new = rewrite(new, study, tables)
    if new != text:
      with open(page, "w", encoding="utf-8") as f:
        f.write(new)
      print(f"rewrote {os.path.relpath(page, ROOT)}")
  module = _benchmark("precision")
  module.figure(os.path.join(DOCS, "precision.png"), _load("precision.json")["curves"])


if __name__ == "__main__":
  main()
