"""Data for the command line: mnist1d, scikit-learn's digits, or the user's ``.npz``.

Everything here is checked before any file is written; problems raise
``ValueError`` with a one-line message naming the file and the array.
"""

from __future__ import annotations

import math
import os
import tempfile
import zipfile
from typing import Any, NamedTuple

import numpy as np


class Split(NamedTuple):
  """Train and test arrays: features float32 (N, D), labels int32 (N,)."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

  @property
  def num_classes(self) -> int:
    return int(max(self.y_train.max(), self.y_test.max())) + 1


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits (1797 images, shipped in the wheel), in [0, 1]."""
  from sklearn.datasets import load_digits as sk_load_digits

  x, y = sk_load_digits(return_X_y=True)
  return (np.asarray(x) / 16.0).astype(np.float32), np.asarray(y).astype(np.int32)


_INT32_MAX = 2**31 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)


#: mnist1d's generator settings (its defaults), with 14,000 examples split
#: 4,000 train / 10,000 test: a large test set keeps the sweep's noise low.
MNIST1D_TRAIN, MNIST1D_TEST = 4000, 10000


def mnist1d_cache_path() -> str:
  """Where the generated mnist1d arrays are kept (the user's cache folder)."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(
    os.path.expanduser("~"), ".cache"
  )
  name = f"mnist1d-{MNIST1D_TRAIN}-{MNIST1D_TEST}-v1.npz"
  return os.path.join(root, "optax-decoupled", name)


def generate_mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """mnist1d generated procedurally (no download): ``x, y, x_test, y_test``.

  Uses ``mnist1d.data.make_dataset`` with the package's default arguments
  (seed 42) and 14,000 examples. Never ``mnist1d``'s ``get_dataset``, which
  downloads. The generator seeds NumPy's global random state; it is restored.
  """
  from mnist1d.data import get_dataset_args, make_dataset

  args: Any = get_dataset_args()  # an attribute bag
  args.num_samples = MNIST1D_TRAIN + MNIST1D_TEST
  args.train_split = MNIST1D_TRAIN / args.num_samples
  state = np.random.get_state()
  try:
    data = make_dataset(args)
  finally:
    np.random.set_state(state)
  return tuple(  # type: ignore[return-value]
    np.asarray(data[k], dtype)
    for k, dtype in (
      ("x", np.float32),
      ("y", np.int32),
      ("x_test", np.float32),
      ("y_test", np.int32),
    )
  )


def load_mnist1d() -> Split:
  """mnist1d's fixed 4,000 / 10,000 split, generated once and then cached.

  The cache is written atomically (a temporary file renamed into place); an
  unreadable cache is regenerated.
  """
  path = mnist1d_cache_path()
  try:
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
      return Split(*(npz[k] for k in Split._fields))
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
    pass  # absent, truncated or foreign: generate again
  arrays = Split(*generate_mnist1d())
  tmp = None
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npz")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays._asdict())
    os.replace(tmp, path)
  except OSError:  # a read-only or full cache folder only costs the next run ~4 s
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)
  return arrays


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Arrays ``x`` (N x features, finite) and ``y`` (N integer labels >= 0).

  Returns ``x`` as float32 and ``y`` as int32 classes ``0 .. K-1``: the
  distinct labels present, in increasing order (labels 3, 7, 1000 become 0,
  1, 2), so that the number of classes is the number of labels present and
  label noise draws only among them.
  """
  if not os.path.isfile(path):
    raise ValueError(f"--data {path!r}: no such file")
  what = (
    "not a readable .npz file (a zip archive of .npy arrays, as numpy.savez writes)"
  )
  try:
    with open(path, "rb") as f:
      magic = f.read(6)
  except OSError as error:
    raise ValueError(f"--data {path!r}: cannot be read ({error.strerror})") from None
  if magic == b"\x93NUMPY":
    raise ValueError(f"--data {path!r}: one .npy array, not an .npz archive of x and y")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"--data {path!r}: {what}")
  arrays = {}
  try:
    with np.load(path, allow_pickle=False) as npz:
      names = set(npz.files)
      for name in ("x", "y"):
        if name in names:
          arrays[name] = npz[name]
  except ValueError as error:  # an object array: Python objects, not numbers
    if "allow_pickle" in str(error) or "Object arrays" in str(error):
      raise ValueError(
        f"--data {path!r}: an array holds Python objects, not numbers "
        "(save plain numeric arrays with numpy.savez)"
      ) from None
    raise ValueError(f"--data {path!r}: {what}") from None
  except Exception:  # a damaged archive, a member that is not an .npy, ...
    raise ValueError(f"--data {path!r}: {what}") from None
  missing = sorted({"x", "y"} - names)
  if missing:
    raise ValueError(
      f"--data {path!r}: missing array(s) {', '.join(missing)} (found {sorted(names)})"
    )
  for name, array in arrays.items():
    if not isinstance(array, np.ndarray):  # numpy hands back raw bytes
      raise ValueError(f"--data {path!r}: {name!r} is not an .npy array")
  x, y = arrays["x"], arrays["y"]
  if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
    raise ValueError(f"--data {path!r}: x must be 2-D (N x features), got {x.shape}")
  if y.shape != (x.shape[0],):
    raise ValueError(
      f"--data {path!r}: y must have shape ({x.shape[0]},) to match x, got {y.shape}"
    )
  if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
    raise ValueError(f"--data {path!r}: x must be real numbers, got {x.dtype}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"--data {path!r}: x has NaN or infinite values")
  with np.errstate(over="ignore"):
    x32 = x.astype(np.float32)
  if not np.all(np.isfinite(x32)):
    raise ValueError(
      f"--data {path!r}: x has values beyond float32's range "
      f"(|x| > {_FLOAT32_MAX:.3g}); the model computes in float32"
    )
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(
      f"--data {path!r}: y must be integer class labels >= 0, got dtype {y.dtype}"
    )
  low, high = int(y.min()), int(y.max())  # Python ints: no wrap-around
  if low < 0 or high > _INT32_MAX:
    bad = low if low < 0 else high
    raise ValueError(
      f"--data {path!r}: y must be class labels from 0 to 2147483647 (int32), got {bad}"
    )
  _, classes = np.unique(y, return_inverse=True)
  return x32, classes.reshape(-1).astype(np.int32)


def split(
  x: np.ndarray,
  y: np.ndarray,
  *,
  seed: int,
  test_fraction: float = 0.25,
  train_size: int | None = None,
) -> Split:
  """A seeded, stratified train/test split; optionally a smaller train subset.

  With ``train_size`` the train set is ``train_size`` examples drawn
  (stratified) from the non-test part; the rest of the data is not used.
  """
  from sklearn.model_selection import train_test_split

  classes, counts = np.unique(y, return_counts=True)
  if len(classes) < 2:
    raise ValueError(f"need at least 2 classes, got {len(classes)}")
  stratify = y if counts.min() >= 2 else None
  n = len(y)
  n_test = math.ceil(test_fraction * n)
  floor = len(classes) if stratify is not None else 1
  if n_test < floor or n - n_test < floor:
    raise ValueError(
      f"--test-fraction {test_fraction:g} of {n} examples gives {n_test} test and "
      f"{n - n_test} train examples; each needs at least {floor} (one per class "
      "when split by class)"
    )
  try:
    x_tr, x_te, y_tr, y_te = train_test_split(
      x, y, test_size=test_fraction, random_state=seed, stratify=stratify
    )
    if train_size is not None and train_size < len(y_tr):
      strat = y_tr if stratify is not None else None
      x_tr, _, y_tr, _ = train_test_split(
        x_tr, y_tr, train_size=train_size, random_state=seed, stratify=strat
      )
  except ValueError:
    raise ValueError(
      f"cannot split {len(y)} examples into --test-fraction {test_fraction:g} and "
      f"--train-size {train_size} by class; change either"
    ) from None
  return Split(*(np.asarray(a) for a in (x_tr, y_tr, x_te, y_te)))


def subsample(split_: Split, train_size: int | None, *, seed: int) -> Split:
  """``train_size`` train examples drawn (stratified) from ``split_``'s train set."""
  if train_size is None or train_size >= len(split_.y_train):
    return split_
  classes = len(np.unique(split_.y_train))
  if train_size < classes:
    raise ValueError(
      f"--train-size {train_size} must be >= the {classes} classes (one example "
      "of each, drawn by class)"
    )
  from sklearn.model_selection import train_test_split

  x, _, y, _ = train_test_split(
    split_.x_train,
    split_.y_train,
    train_size=train_size,
    random_state=seed,
    stratify=split_.y_train,
  )
  return split_._replace(x_train=x, y_train=y)


def corrupt_labels(split_: Split, fraction: float, *, seed: int) -> Split:
  """Replaces ``fraction`` of the train labels by a different, random class.

  Label noise makes memorizing the train set hurt the test error, so that
  regularization matters even on a small, easy data set. The test set is clean.
  """
  if fraction == 0:
    return split_
  rng = np.random.default_rng(seed)
  y = split_.y_train.copy()
  flip = rng.choice(len(y), size=round(fraction * len(y)), replace=False)
  shift = rng.integers(1, split_.num_classes, size=len(flip))
  y[flip] = (y[flip] + shift) % split_.num_classes
  return split_._replace(y_train=y.astype(np.int32))
