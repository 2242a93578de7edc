"""The command line as a user runs it: real processes, signals and mounts.

Every case runs ``python -m optax_decoupled`` in a subprocess and checks what
a user sees (exit status, one line on stderr, no traceback) and what is left
on disk: a finished run whole, or nothing at all (no ``--out``, no staging
folder, no parent folders made for the run). Mount cases need root and a
kernel that lets this container mount; they are skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
ENV.pop("XLA_FLAGS", None)  # one host device, as a user has
QUICK = ["--steps", "20", "--quiet", "--hidden", "16"]


def _cli(*argv, timeout=120, **kwargs):
  return subprocess.run(
    [sys.executable, "-m", "optax_decoupled", *map(str, argv)],
    capture_output=True,
    text=True,
    env=ENV,
    cwd=ROOT,
    timeout=timeout,
    **kwargs,
  )


def _start(*argv):
  return subprocess.Popen(
    [sys.executable, "-m", "optax_decoupled", *map(str, argv)],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=ENV,
    cwd=ROOT,
  )


def _refused(proc, *expected, status=2):
  """Exit ``status``, exactly one line on stderr naming the problem."""
  err = proc.stderr
  assert proc.returncode == status, (proc.returncode, proc.stdout, err)
  assert len(err.strip().splitlines()) == 1, err
  assert "Traceback" not in err, err
  for text in expected:
    assert text in err, (text, err)
  return err


def _leftovers(folder):
  """Our hidden staging/lock entries anywhere under ``folder``."""
  found = []
  for where, dirs, files in os.walk(folder):
    found += [os.path.join(where, n) for n in dirs + files if n.startswith(".optax")]
  return found


def _npz(path, **arrays):
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  return str(path)


@pytest.fixture(scope="module")
def digits():
  from sklearn.datasets import load_digits

  data = load_digits()
  return data.data, data.target


# ------------------------------------------------------------ face of the app


def test_version_through_python_m():
  proc = _cli("--version")
  from optax_decoupled import __version__

  assert (
    proc.returncode == 0 and proc.stdout.strip() == f"optax-decoupled {__version__}"
  )


_BLOCK_FLAX = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name == "flax" or name.startswith("flax."):
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["optax-decoupled", *sys.argv[1:]]
runpy.run_module("optax_decoupled", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--steps", "5"]])
def test_without_the_examples_extra_says_which_extra_to_install(argv, tmp_path):
  """flax made unimportable (as when installed without ``[examples]``)."""
  proc = subprocess.run(
    [sys.executable, "-c", _BLOCK_FLAX, *argv, "--out", str(tmp_path / "o")],
    capture_output=True,
    text=True,
    env=ENV,
    cwd=ROOT,
    timeout=60,
  )
  _refused(proc, "pip install -e '.[examples]'", "flax", status=1)
  assert not (tmp_path / "o").exists()


# ------------------------------------------------------------ bounds


@pytest.mark.parametrize(
  "argv, expected",
  [
    (["train", "--steps", "10000000000"], "2**31 - 1"),
    (["train", "--steps", "2147483648"], "2**31 - 1"),
    (["schedule", "--warmup-steps", "2147483648"], "2**31 - 1"),
    (["train", "--seed", "99999999999"], "2**31 - 1"),
    (["train", "--depth", "10000"], "must be <= 64"),
    (["train", "--steps", "2147483647"], "of memory"),
    (["schedule", "--steps", "2147483647"], "of memory"),
    (["sweep", "--hidden", "1000000"], "of memory"),
    (["sweep", "--chunk-size", "0"], "must be an integer >= 1"),
    (["sweep", "--memory", "-1"], "must be a number > 0"),
    (["train", "--hidden", "1000000"], "of memory"),
  ],
)
def test_unbounded_numbers_are_refused_up_front(tmp_path, argv, expected):
  """One line, exit 2, within seconds, nothing created: no run starts."""
  out = tmp_path / "runs" / "out"
  start = time.perf_counter()
  proc = _cli(*argv, "--out", out, timeout=60)
  _refused(proc, expected)
  assert time.perf_counter() - start < 45
  assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


# ------------------------------------------------------------ --data


def _bad_data(tmp_path, x, y):
  text = tmp_path / "notes.npz"
  text.write_text("label,feature\n1,2\n")
  not_npy = tmp_path / "not_npy.npz"
  with zipfile.ZipFile(not_npy, "w") as z:
    z.writestr("x.npy", b"just some bytes, not an array")
    z.writestr("y.npy", b"")
  objects = np.empty(len(y), dtype=object)
  objects[:] = [{"label": int(v)} for v in y]
  huge_x = x.astype(np.float64).copy()
  huge_x[0, 0] = 1e300
  return {
    "uint64 label 2**63+5": (
      _npz(tmp_path / "a.npz", x=x, y=np.where(y == 5, 2**63 + 5, y).astype(np.uint64)),
      "int32",
    ),
    "label 2**31": (
      _npz(tmp_path / "b.npz", x=x, y=np.where(y == 5, 2**31, y)),
      "int32",
    ),
    "x beyond float32": (_npz(tmp_path / "c.npz", x=huge_x, y=y), "float32"),
    "text file": (str(text), "not a readable .npz file"),
    "member not .npy": (str(not_npy), "'x' is not an .npy array"),
    "object array": (_npz(tmp_path / "d.npz", x=x, y=objects), "Python objects"),
  }


@pytest.mark.parametrize(
  "case",
  [
    "uint64 label 2**63+5",
    "label 2**31",
    "x beyond float32",
    "text file",
    "member not .npy",
    "object array",
  ],
)
def test_bad_data_is_refused_in_one_line(tmp_path, digits, case):
  path, expected = _bad_data(tmp_path, *digits)[case]
  out = tmp_path / "out"
  err = _refused(_cli("train", *QUICK, "--data", path, "--out", out), expected)
  assert "pickle" not in err.lower(), err
  assert not out.exists() and not _leftovers(tmp_path)


@pytest.mark.parametrize(
  "argv, expected",
  [
    (
      ["--dataset", "digits", "--test-fraction", "0"],
      "--test-fraction 0 of 1797 examples gives 0 test",
    ),
    (["--dataset", "digits", "--test-fraction", "0.001"], "at least 10"),
    (["--dataset", "digits", "--train-size", "3"], "--train-size 3"),
    (["--train-size", "3"], "--train-size 3 must be >= the 10 classes"),
  ],
)
def test_impossible_splits_are_explained_without_scikit_learn_words(
  tmp_path, argv, expected
):
  err = _refused(_cli("train", *QUICK, *argv, "--out", tmp_path / "o"), expected)
  assert "test_size" not in err and "n_classes" not in err, err


def test_sparse_labels_are_classes_present_and_noise_stays_among_them(tmp_path, digits):
  """Labels {0, 10**9}: two classes (no 10**9-wide output layer), noisy labels
  drawn among them only."""
  x, y = digits
  sparse = np.where(y < 5, 0, 10**9)
  path = _npz(tmp_path / "sparse.npz", x=x, y=sparse)
  out = tmp_path / "out"
  proc = _cli("train", *QUICK, "--label-noise", "0.3", "--data", path, "--out", out)
  assert proc.returncode == 0, proc.stderr
  assert 0 <= json.loads((out / "metrics.json").read_text())["test_accuracy"] <= 1

  from optax_decoupled.cli import _data

  x32, labels = _data.load_npz(path)
  assert x32.dtype == np.float32 and labels.dtype == np.int32
  np.testing.assert_array_equal(labels, (y >= 5).astype(np.int32))
  split = _data.split(x32, labels, seed=0, test_fraction=0.25)
  noisy = _data.corrupt_labels(split, 0.3, seed=0)
  assert set(np.unique(noisy.y_train)) == {0, 1}
  flipped = np.mean(noisy.y_train != split.y_train)
  assert abs(flipped - 0.3) < 0.01, flipped


def test_diverging_run_writes_strict_json_with_null_and_says_so(tmp_path):
  out = tmp_path / "out"
  proc = _cli(
    "train", *QUICK, "--optimizer", "sgdw", "--learning-rate", "1e30", "--out", out
  )
  assert proc.returncode == 0, proc.stderr
  assert "null" in proc.stdout and "diverged" in proc.stdout, proc.stdout

  def refuse(constant):
    raise AssertionError(f"bare {constant} in metrics.json")

  metrics = json.loads((out / "metrics.json").read_text(), parse_constant=refuse)
  assert metrics["train_loss"] is None, metrics


# ------------------------------------------------------------ --out


@pytest.fixture
def mount(tmp_path):
  """Mounts a small tmpfs (``mount("ro")`` read-only); skips where not allowed."""
  mounted = []

  def mount(name, options="rw", size="16m"):
    point = tmp_path / name
    point.mkdir()
    proc = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"{options},size={size}", "tmpfs", str(point)],
      capture_output=True,
    )
    if proc.returncode != 0:
      pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    mounted.append(point)
    return point

  yield mount
  for point in mounted:
    subprocess.run(["umount", "-l", str(point)], check=False)


def test_out_on_another_filesystem_than_its_parent(tmp_path, mount):
  """A tmpfs mount point as --out, and a folder created inside one."""
  point = mount("volume")
  proc = _cli("train", *QUICK, "--out", point)
  assert proc.returncode == 0, proc.stderr
  assert sorted(os.listdir(point)) == ["curves.npz", "metrics.json", "train.png"]
  other = mount("other")
  proc = _cli("schedule", "--steps", "50", "--out", other / "a" / "run")
  assert proc.returncode == 0, proc.stderr
  assert os.listdir(other / "a" / "run") == ["schedule.png"]
  assert not _leftovers(tmp_path)


def test_read_only_out_is_refused_before_any_work(tmp_path, mount):
  point = mount("ro", "ro")
  for out in (point, point / "new" / "run"):
    start = time.perf_counter()
    proc = _cli("sweep", "--out", out, timeout=60)  # the full sweep takes minutes
    _refused(proc, "cannot write there", "Read-only")
    assert time.perf_counter() - start < 30


def test_a_full_disk_leaves_nothing_half_written(tmp_path, mount):
  """A 16 KiB tmpfs: the plot does not fit. One line, and the folder is as
  it was (empty), with no staging folder."""
  point = mount("tiny", size="16k")
  proc = _cli("train", *QUICK, "--out", point)
  _refused(proc, "No space left on device", status=1)
  assert os.listdir(point) == []


def test_immutable_out_is_refused(tmp_path):
  out = tmp_path / "frozen"
  out.mkdir()
  if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode:
    pytest.skip("chattr +i is not available on this filesystem")
  try:
    _refused(_cli("schedule", "--out", out), "cannot write there")
  finally:
    subprocess.run(["chattr", "-i", str(out)], check=False)


def test_impossible_out_is_refused(tmp_path):
  file = tmp_path / "a_file"
  file.write_text("x")
  dangling = tmp_path / "dangling"
  dangling.symlink_to(tmp_path / "nowhere")
  cases = {
    "": "--out must name a folder",
    str(file): "not a folder",
    str(file / "under" / "it"): "not a folder",
    str(dangling): "dangling",
    str(dangling / "run"): "dangling",
  }
  for out, expected in cases.items():
    _refused(_cli("schedule", "--out", out), expected)
  assert sorted(os.listdir(tmp_path)) == ["a_file", "dangling"]


def test_parent_folders_made_for_a_failed_run_are_removed(tmp_path):
  """The data is bad only once the run has claimed --out: all of it goes."""
  bad = tmp_path / "bad.npz"
  bad.write_text("not a zip")
  proc = _cli("train", *QUICK, "--data", bad, "--out", tmp_path / "a" / "b" / "run")
  _refused(proc, "not a readable .npz file")
  assert os.listdir(tmp_path) == ["bad.npz"]


def test_a_second_run_is_refused_unless_overwrite_replaces_the_whole_run(tmp_path):
  out = tmp_path / "out"
  assert _cli("schedule", "--steps", "50", "--out", out).returncode == 0
  png = (out / "schedule.png").read_bytes()
  (out / "notes.txt").write_text("from the first run")

  _refused(_cli("schedule", "--steps", "60", "--out", out), "not empty", "--overwrite")
  assert (out / "schedule.png").read_bytes() == png

  proc = _cli("schedule", "--steps", "60", "--overwrite", "--out", out)
  assert proc.returncode == 0, proc.stderr
  assert os.listdir(out) == ["schedule.png"]  # the old run is gone as a whole
  assert (out / "schedule.png").read_bytes() != png
  assert not _leftovers(tmp_path)


def test_overwrite_refuses_the_working_folder(tmp_path):
  proc = _cli("schedule", "--overwrite", "--out", ".")
  _refused(proc, "--overwrite refuses")


def test_two_concurrent_runs_into_one_out_do_not_both_succeed(tmp_path):
  out = tmp_path / "out"
  argv = ["train", "--steps", "400", "--quiet", "--out", out]
  first, second = _start(*argv), _start(*argv)
  results = [(p.wait(timeout=300), p.communicate()[1]) for p in (first, second)]
  statuses = sorted(status for status, _ in results)
  assert statuses == [0, 2], results
  err = next(e for s, e in results if s == 2)
  assert "another optax-decoupled run" in err or "not empty" in err, err
  assert sorted(os.listdir(out)) == ["curves.npz", "metrics.json", "train.png"]


def _wait_for_lock(proc, out, seconds=60):
  lock = out / ".optax-decoupled-lock"
  deadline = time.time() + seconds
  while not lock.exists():
    assert proc.poll() is None, proc.communicate()
    assert time.time() < deadline, "the run never claimed --out"
    time.sleep(0.1)


@pytest.mark.parametrize(
  "command, sig, status, word",
  [
    ("train", signal.SIGINT, 130, "interrupted"),
    ("train", signal.SIGTERM, 143, "terminated"),
    ("sweep", signal.SIGINT, 130, "interrupted"),
  ],
)
def test_signals_leave_nothing_behind(tmp_path, command, sig, status, word):
  """Mid-run (the sweep inside its one long compiled call): one line, the
  conventional status, no --out, no parent, no staging folder."""
  out = tmp_path / "parent" / "out"
  if command == "train":
    proc = _start("train", "--steps", "1000000", "--quiet", "--out", out)
  else:
    proc = _start("sweep", "--steps", "200000", "--grid", "2", "--out", out)
  _wait_for_lock(proc, out)
  time.sleep(4)  # into the training (the imports are done by now)
  assert proc.poll() is None, proc.communicate()
  sent = time.perf_counter()
  proc.send_signal(sig)
  with contextlib.suppress(subprocess.TimeoutExpired):
    proc.wait(timeout=20)
  if proc.returncode is None:
    proc.kill()
    pytest.fail("no exit within 20 s of the signal")
  assert time.perf_counter() - sent < 20
  _, err = proc.communicate()
  assert proc.returncode == status, (proc.returncode, err)
  lines = err.strip().splitlines()
  assert len(lines) == 1 and word in lines[0] and "nothing was written" in lines[0], err
  assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
