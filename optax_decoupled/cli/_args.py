"""The command line's shared arguments: number types, data, model, ``--out``.

Each type raises ``argparse.ArgumentTypeError`` naming the value; ``load``
and ``arch`` turn parsed arguments into the data and the model's architecture.
"""

from __future__ import annotations

import argparse
import math

from optax_decoupled.cli import _limits

TEST_FRACTION = 0.25


class UsageError(ValueError):
  """A bad command line (reported like any ValueError: one line, exit 2)."""


class Parser(argparse.ArgumentParser):
  """argparse, but errors raise instead of printing usage and exiting."""

  def error(self, message):
    raise UsageError(message)


# ---------------------------------------------------------------- arguments


def positive_int(text):
  value = number(text, int)
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
  return int32(text, value)


def non_negative_int(text):
  value = number(text, int)
  if value < 0:
    raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
  return int32(text, value)


def int32(text, value):
  """Steps, counts and seeds reach JAX as int32 (and scikit-learn's seeds)."""
  if value > _limits.INT32_MAX:
    raise argparse.ArgumentTypeError(
      f"{text!r} must be <= 2147483647 (2**31 - 1: steps and seeds are int32)"
    )
  return value


def depth(text):
  value = positive_int(text)
  if value > _limits.MAX_DEPTH:
    raise argparse.ArgumentTypeError(
      f"{text!r} must be <= {_limits.MAX_DEPTH} (each layer is unrolled into the "
      "compiled program; deeper ones take minutes to compile)"
    )
  return value


def positive_float(text):
  value = number(text, float)
  if not value > 0:
    raise argparse.ArgumentTypeError(f"{text!r} must be a number > 0")
  return value


def non_negative_float(text):
  value = number(text, float)
  if not value >= 0:
    raise argparse.ArgumentTypeError(f"{text!r} must be a number >= 0")
  return value


def fraction(text):
  value = number(text, float)
  if not 0 <= value < 1:
    raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
  return value


def number(text, kind):
  try:
    value = kind(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"{text!r} is not a valid {kind.__name__}"
    ) from None
  if kind is float and not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"{text!r} must be finite")
  return value


def grid(text):
  """``AxL`` (learning rates x weight decays) or ``N`` for N x N."""
  parts = text.lower().split("x")
  try:
    if len(parts) > 2:
      raise argparse.ArgumentTypeError("too many sizes")
    sizes = tuple(positive_int(part.strip()) for part in parts)
  except argparse.ArgumentTypeError:
    raise argparse.ArgumentTypeError(
      f"{text!r} must be AxL or N, with integers >= 1"
    ) from None
  return sizes * 2 if len(sizes) == 1 else sizes


def budgets(text):
  """Comma-separated run lengths, at least two, each >= 1 and distinct."""
  values = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
  if len(values) < 2 or len(set(values)) != len(values):
    raise argparse.ArgumentTypeError(
      f"{text!r} must be two or more distinct step counts"
    )
  return sorted(values)


def fractions(text):
  """Comma-separated fractions in (0, 1), increasing (step-drop's drops)."""
  values = [number(part.strip(), float) for part in text.split(",") if part.strip()]
  if not values or any(not 0 < v < 1 for v in values) or values != sorted(set(values)):
    raise argparse.ArgumentTypeError(
      f"{text!r} must be increasing fractions in (0, 1), e.g. 0.5,0.75"
    )
  return tuple(values)


def steps_list(text):
  """Comma-separated step counts >= 1, increasing (may be empty)."""
  values = [positive_int(part.strip()) for part in text.split(",") if part.strip()]
  if values != sorted(set(values)):
    raise argparse.ArgumentTypeError(
      f"{text!r} must be increasing steps, e.g. 600,1200"
    )
  return tuple(values)


def unit_fraction(text):
  value = number(text, float)
  if not 0 <= value <= 1:
    raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1]")
  return value


def add_schedule_arguments(p):
  """``--schedule`` and its options, for optimizers without restarts."""
  from optax_decoupled.cli import _train

  g = p.add_argument_group("η_t without restarts (adamw, sgdw, adam_l2, sgd_l2, ...)")
  g.add_argument(
    "--schedule",
    choices=_train.SCHEDULES,
    default="cosine",
    help="cosine: one cosine over the run; constant; step-drop: ×--drop-factor "
    "at --drop-at; wsd: warmup-stable-decay, a --cooldown share of the run "
    "cooled down at the end (and before each --checkpoints step: WSD-S). "
    "Default %(default)s",
  )
  g.add_argument(
    "--drop-at", type=fractions, help="step-drop: fractions of the run (0.5,0.75)"
  )
  g.add_argument(
    "--drop-factor", type=positive_float, help="step-drop: each drop's multiplier (0.1)"
  )
  g.add_argument(
    "--cooldown", type=unit_fraction, help="wsd: the cool-down's share of the run (0.2)"
  )
  g.add_argument(
    "--cooldown-shape", choices=("1-sqrt", "linear", "cosine"), help="wsd (1-sqrt)"
  )
  g.add_argument(
    "--checkpoints",
    type=steps_list,
    help="wsd: steps before the end that get a cool-down of their own (WSD-S)",
  )


#: Which ``--schedule`` each schedule option belongs to.
_SCHEDULE_OPTIONS = {
  "drop_at": "step-drop",
  "drop_factor": "step-drop",
  "cooldown": "wsd",
  "cooldown_shape": "wsd",
  "checkpoints": "wsd",
}


def schedule_options(args, *, restarts: bool) -> dict:
  """The Recipe fields of ``--schedule`` and its options, checked together."""
  given = {
    k: getattr(args, k) for k in _SCHEDULE_OPTIONS if getattr(args, k) is not None
  }
  for key in given:
    if restarts or _SCHEDULE_OPTIONS[key] != args.schedule:
      flag = "--" + key.replace("_", "-")
      raise UsageError(
        f"{flag} applies to --schedule {_SCHEDULE_OPTIONS[key]}"
        + (f", not to {args.optimizer} (it restarts)" if restarts else "")
      )
  if restarts and args.schedule != "cosine":
    raise UsageError(
      f"--schedule {args.schedule}: {args.optimizer} restarts (cosine cycles); "
      "use adamw or sgdw"
    )
  return {"schedule": args.schedule, **given}


def value_range(text):
  """``LO,HI`` with ``0 < LO <= HI``, for a log-spaced axis."""
  parts = text.split(",")
  if len(parts) != 2:
    raise argparse.ArgumentTypeError(f"{text!r} must be LO,HI")
  lo, hi = (positive_float(p.strip()) for p in parts)
  if lo > hi:
    raise argparse.ArgumentTypeError(f"{text!r}: LO must be <= HI")
  return lo, hi


def add_data_arguments(p):
  g = p.add_argument_group("data")
  g.add_argument(
    "--dataset",
    choices=("mnist1d", "digits"),
    default="mnist1d",
    help="mnist1d: generated locally (4,000 train / 10,000 test, 40 features; "
    "cached after the first run); digits: scikit-learn's 8x8 digits (1797 "
    "images, shipped in the wheel). Default %(default)s",
  )
  g.add_argument(
    "--data",
    metavar="FILE.npz",
    help="your own arrays x (N x features) and y (N int labels), instead of --dataset",
  )
  g.add_argument(
    "--test-fraction",
    type=fraction,
    help="held-out test share, stratified (digits and --data; default "
    f"{TEST_FRACTION}); mnist1d has a fixed test set",
  )
  g.add_argument(
    "--train-size",
    type=positive_int,
    help="train on this many of the non-test examples (default: all)",
  )
  g.add_argument(
    "--label-noise",
    type=fraction,
    default=0.0,
    help="share of train labels replaced by a wrong class (test labels stay "
    "clean; default %(default)s)",
  )


def add_model_arguments(p, *, hidden, batch_size, steps):
  from optax_decoupled.cli import _models

  g = p.add_argument_group("model and run")
  g.add_argument("--steps", type=positive_int, default=steps, help="(%(default)s)")
  g.add_argument(
    "--batch-size", type=positive_int, default=batch_size, help="(%(default)s)"
  )
  g.add_argument(
    "--hidden", type=positive_int, default=hidden, help="MLP width (%(default)s)"
  )
  g.add_argument("--depth", type=depth, default=2, help="hidden layers (%(default)s)")
  g.add_argument(
    "--model",
    choices=_models.MODELS,
    default="bn",
    help="bn: BatchNorm without affine after each hidden kernel (no bias), so "
    "the hidden kernels are scale-invariant, as in the paper's networks; ln: "
    "the same with LayerNorm; mlp: no normalization, the control. Decayed: "
    "the hidden kernels (bn, ln), every kernel (mlp). Default %(default)s",
  )
  add_precision_arguments(g)


def add_precision_arguments(g):
  from optax_decoupled.cli import _models

  g.add_argument(
    "--param-dtype",
    choices=_models.PARAM_DTYPES,
    default="float32",
    help="dtype of the parameters, the optimizer's moments and the model's "
    "arithmetic (the softmax is float32). Default %(default)s",
  )
  g.add_argument(
    "--compensation",
    choices=COMPENSATIONS,
    default="auto",
    help="how updates survive rounding to low-precision parameters: auto "
    "(Kahan on bfloat16 leaves, nothing on float32), kahan, stochastic "
    "(stochastic rounding) or none (updates below half an ulp are lost). "
    "Default %(default)s",
  )


#: ``--compensation`` values, and the library's ``compensation=`` for each.
COMPENSATIONS = ("auto", "kahan", "stochastic", "none")


def compensation(args) -> str | None:
  return None if args.compensation == "none" else args.compensation


def add_overwrite(p):
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace the run already in --out (without it, a non-empty --out is refused)",
  )


def load(args, *, seed):
  from optax_decoupled.cli import _data

  if args.data is None and args.dataset == "mnist1d":
    if args.test_fraction is not None:
      raise UsageError("--test-fraction: mnist1d has a fixed 10,000-example test set")
    split = _data.subsample(_data.load_mnist1d(), args.train_size, seed=seed)
  else:
    x, y = _data.load_npz(args.data) if args.data else _data.load_digits()
    fraction = TEST_FRACTION if args.test_fraction is None else args.test_fraction
    split = _data.split(
      x, y, seed=seed, test_fraction=fraction, train_size=args.train_size
    )
  if args.batch_size > len(split.y_train):
    raise ValueError(
      f"--batch-size {args.batch_size} must be <= the {len(split.y_train)} "
      "train examples"
    )
  parts = _limits.run_bytes(
    args,
    features=split.x_train.shape[1],
    classes=split.num_classes,
    train=len(split.y_train),
    test=len(split.y_test),
  )
  knobs = "--grid, --seeds, --steps" if args.command != "train" else "--steps"
  _limits.check(parts, f"{knobs}, --hidden, --batch-size or the data's size")
  return _data.corrupt_labels(split, args.label_noise, seed=seed)


def arch(args):
  from optax_decoupled.cli import _models

  return _models.Architecture(args.model, args.hidden, args.depth, args.param_dtype)
