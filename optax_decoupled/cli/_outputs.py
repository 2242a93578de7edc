"""Where the command line writes: a run's folder appears whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile


def check_out(out):
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--out {out!r} exists and is not a folder")


@contextlib.contextmanager
def staging(out):
  """A temporary folder whose files move into ``out`` only on success."""
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".optax-decoupled-", dir=parent)
  try:
    yield tmp
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(tmp):
      os.replace(os.path.join(tmp, name), os.path.join(out, name))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def write_json(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
