"""``optax-decoupled``: train with the paper's optimizers, sweep lr x weight decay.

Subcommands ``train``, ``sweep`` and ``schedule`` (see ``--help`` of each).
Every argument is checked before anything is written; a bad one ends the
command with a one-line message and exit status 2. ``--out`` is claimed before
any work (see ``_outputs``): outputs are staged inside it and moved into place
only when complete; Ctrl-C and SIGTERM leave nothing behind.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys

from optax_decoupled.cli import _limits, _outputs

_ADAM_LR, _SGD_LR = 3e-3, 0.05


class _UsageError(ValueError):
  """A bad command line (reported like any ValueError: one line, exit 2)."""


class _Parser(argparse.ArgumentParser):
  """argparse, but errors raise instead of printing usage and exiting."""

  def error(self, message):
    raise _UsageError(message)


# ---------------------------------------------------------------- arguments


def _positive_int(text):
  value = _number(text, int)
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
  return _int32(text, value)


def _non_negative_int(text):
  value = _number(text, int)
  if value < 0:
    raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
  return _int32(text, value)


def _int32(text, value):
  """Steps, counts and seeds reach JAX as int32 (and scikit-learn's seeds)."""
  if value > _limits.INT32_MAX:
    raise argparse.ArgumentTypeError(
      f"{text!r} must be <= 2147483647 (2**31 - 1: steps and seeds are int32)"
    )
  return value


def _depth(text):
  value = _positive_int(text)
  if value > _limits.MAX_DEPTH:
    raise argparse.ArgumentTypeError(
      f"{text!r} must be <= {_limits.MAX_DEPTH} (each layer is unrolled into the "
      "compiled program; deeper ones take minutes to compile)"
    )
  return value


def _positive_float(text):
  value = _number(text, float)
  if not value > 0:
    raise argparse.ArgumentTypeError(f"{text!r} must be a number > 0")
  return value


def _non_negative_float(text):
  value = _number(text, float)
  if not value >= 0:
    raise argparse.ArgumentTypeError(f"{text!r} must be a number >= 0")
  return value


def _fraction(text):
  value = _number(text, float)
  if not 0 <= value < 1:
    raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
  return value


def _number(text, kind):
  try:
    value = kind(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"{text!r} is not a valid {kind.__name__}"
    ) from None
  if kind is float and not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"{text!r} must be finite")
  return value


def _grid(text):
  """``AxL`` (learning rates x weight decays) or ``N`` for N x N."""
  parts = text.lower().split("x")
  if len(parts) > 2:
    raise argparse.ArgumentTypeError(f"{text!r} must be AxL or N")
  sizes = tuple(_positive_int(part.strip()) for part in parts)
  return sizes * 2 if len(sizes) == 1 else sizes


def _budgets(text):
  """Comma-separated run lengths, at least two, each >= 1 and distinct."""
  values = [_positive_int(part.strip()) for part in text.split(",") if part.strip()]
  if len(values) < 2 or len(set(values)) != len(values):
    raise argparse.ArgumentTypeError(
      f"{text!r} must be two or more distinct step counts"
    )
  return sorted(values)


def _range(text):
  """``LO,HI`` with ``0 < LO <= HI``, for a log-spaced axis."""
  parts = text.split(",")
  if len(parts) != 2:
    raise argparse.ArgumentTypeError(f"{text!r} must be LO,HI")
  lo, hi = (_positive_float(p.strip()) for p in parts)
  if lo > hi:
    raise argparse.ArgumentTypeError(f"{text!r}: LO must be <= HI")
  return lo, hi


def _add_data_arguments(p):
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
    type=_fraction,
    help="held-out test share, stratified (digits and --data; default "
    f"{_TEST_FRACTION}); mnist1d has a fixed test set",
  )
  g.add_argument(
    "--train-size",
    type=_positive_int,
    help="train on this many of the non-test examples (default: all)",
  )
  g.add_argument(
    "--label-noise",
    type=_fraction,
    default=0.0,
    help="share of train labels replaced by a wrong class (test labels stay "
    "clean; default %(default)s)",
  )


def _add_model_arguments(p, *, hidden, batch_size, steps):
  from optax_decoupled.cli import _models

  g = p.add_argument_group("model and run")
  g.add_argument("--steps", type=_positive_int, default=steps, help="(%(default)s)")
  g.add_argument(
    "--batch-size", type=_positive_int, default=batch_size, help="(%(default)s)"
  )
  g.add_argument(
    "--hidden", type=_positive_int, default=hidden, help="MLP width (%(default)s)"
  )
  g.add_argument("--depth", type=_depth, default=2, help="hidden layers (%(default)s)")
  g.add_argument(
    "--model",
    choices=_models.MODELS,
    default="bn",
    help="bn: BatchNorm without affine after each hidden kernel (no bias), so "
    "the hidden kernels are scale-invariant, as in the paper's networks; ln: "
    "the same with LayerNorm; mlp: no normalization, the control. Decayed: "
    "the hidden kernels (bn, ln), every kernel (mlp). Default %(default)s",
  )


def _parser():
  from optax_decoupled.cli import _sweep, _train

  parser = _Parser(
    prog="optax-decoupled",
    description="Decoupled weight decay (Loshchilov & Hutter): train a small "
    "MLP, reproduce the paper's learning-rate x weight-decay heatmaps, plot "
    "SGDR schedules.",
  )
  parser.add_argument("--version", action="version", version=_version())
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

  p = sub.add_parser(
    "train",
    help="train an MLP with one optimizer",
    description="Train a small Flax NNX MLP with one of the paper's "
    "optimizers; write metrics.json and train.png to --out. Optimizers "
    "without restarts anneal η_t by one cosine over the run; adamwr/sgdwr "
    "restart (cycles of --first-cycle-steps, growing by --cycle-mult).",
  )
  p.add_argument("--optimizer", choices=_train.OPTIMIZERS, default="adamwr")
  p.add_argument(
    "--learning-rate",
    type=_non_negative_float,
    help=f"α (default {_ADAM_LR} for Adam-type, {_SGD_LR} for SGD-type)",
  )
  decay = p.add_mutually_exclusive_group()
  decay.add_argument(
    "--weight-decay",
    type=_non_negative_float,
    help="λ: the paper's decoupled decay (not multiplied by α), or the L2 "
    "coefficient for adam_l2/sgd_l2 (default 1e-4)",
  )
  decay.add_argument(
    "--normalized-weight-decay",
    type=_non_negative_float,
    metavar="LAMBDA_NORM",
    help="λ_norm: λ = λ_norm sqrt(b / (B T)), per cycle for adamwr/sgdwr",
  )
  p.add_argument(
    "--first-cycle-steps",
    type=_positive_int,
    help="adamwr/sgdwr: first cycle (default: ceil(steps / 7), so that with "
    "--cycle-mult 2 the run ends with the third cycle)",
  )
  p.add_argument(
    "--cycle-mult", type=_positive_int, help="adamwr/sgdwr: T_mult (default 2)"
  )
  p.add_argument("--seed", type=_non_negative_int, default=0, help="(%(default)s)")
  p.add_argument("--out", default="runs/train", help="output folder (%(default)s)")
  _add_overwrite(p)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  _add_model_arguments(p, hidden=64, batch_size=64, steps=1000)
  _add_data_arguments(p)

  p = sub.add_parser(
    "sweep",
    help="test error over a learning-rate x weight-decay grid",
    description="The paper's Figure 2 at small scale, on a scale-invariant "
    "network: for each optimizer, train a log-spaced (learning rate, weight "
    "decay) grid times --seeds seeds in ONE vmapped program; write "
    "sweep.json, heatmap.png and angular.png, and print how far the best "
    "weight decay moves with the learning rate. η_t is one cosine over the "
    "run. With --budgets: AdamW over λ at one α for several run lengths "
    "instead (budgets.json, budgets.png).",
  )
  p.add_argument(
    "--optimizers",
    default="adam_l2,adamw",
    help=f"comma list of {','.join(_sweep.SWEEP_OPTIMIZERS)} (%(default)s)",
  )
  p.add_argument(
    "--grid",
    type=_grid,
    default=(7, 11),
    metavar="AxL",
    help="learning rates x weight decays, e.g. 7x11, or N for N x N (7x11)",
  )
  p.add_argument(
    "--lr-range",
    type=_range,
    help="LO,HI (default {:g},{:g} for Adam, {:g},{:g} for SGD)".format(
      *_LR_RANGES["adam"], *_LR_RANGES["sgd"]
    ),
  )
  p.add_argument(
    "--wd-range",
    type=_range,
    help=f"LO,HI for every optimizer (default {_WD_RANGE[0]:g},{_WD_RANGE[1]:g}); "
    "the decoupled λ is not multiplied by α, unlike the L2 coefficient",
  )
  p.add_argument(
    "--seeds", type=_positive_int, default=2, help="seeds per cell (%(default)s)"
  )
  p.add_argument(
    "--sequential-configs",
    type=_non_negative_int,
    default=0,
    help="also time this many configs one at a time, to compare with the "
    "vmapped grid (%(default)s: no comparison)",
  )
  p.add_argument(
    "--budgets",
    type=_budgets,
    metavar="STEPS,STEPS,...",
    help="run lengths for the budget study, e.g. 750,1500,3000,6000: AdamW over "
    "the λ grid at --budget-lr, instead of the learning-rate x decay grid",
  )
  p.add_argument(
    "--budget-lr",
    type=_positive_float,
    default=_BUDGET_LR,
    help="α of the budget study (%(default)s)",
  )
  p.add_argument("--out", default="runs/sweep", help="output folder (%(default)s)")
  _add_overwrite(p)
  _add_model_arguments(p, hidden=64, batch_size=64, steps=3000)
  _add_data_arguments(p)

  p = sub.add_parser(
    "schedule",
    help="plot SGDR's η_t and the restart-normalized decay",
    description="Plot odx.cosine_warm_restarts(...) and λ_norm / sqrt(T_i) "
    "over --steps steps to --out/schedule.png; print the restart steps.",
  )
  p.add_argument("--first-cycle-steps", type=_positive_int, default=100)
  p.add_argument("--cycle-mult", type=_positive_float, default=2.0)
  p.add_argument("--min-value", type=_non_negative_float, default=0.0)
  p.add_argument("--max-value", type=_non_negative_float, default=1.0)
  p.add_argument("--cycle-decay", type=_positive_float, default=1.0)
  p.add_argument("--warmup-steps", type=_non_negative_int, default=0)
  p.add_argument("--normalized-weight-decay", type=_non_negative_float, default=0.05)
  p.add_argument("--steps", type=_positive_int, default=700)
  p.add_argument("--out", default="runs/schedule", help="output folder (%(default)s)")
  _add_overwrite(p)
  return parser


def _add_overwrite(p):
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace the run already in --out (without it, a non-empty --out is refused)",
  )


def _version():
  from optax_decoupled import __version__

  return f"%(prog)s {__version__}"


#: Default grids (mnist1d, the BatchNorm MLP, 3000 steps): wide enough that
#: every α row's best λ lies inside for both conventions (Adam+L2's optimum
#: reaches λ ≈ 0.3 at small α; AdamW's sits near 3e-3 for every α).
_LR_RANGES = {"adam": (1e-4, 1e-1), "sgd": (1e-3, 1.0)}
_WD_RANGE = (1e-5, 1.0)
#: α of the budget study: inside AdamW's good rows of the default grid.
_BUDGET_LR = 1e-2
_TEST_FRACTION = 0.25


def _load(args, *, seed):
  from optax_decoupled.cli import _data

  if args.data is None and args.dataset == "mnist1d":
    if args.test_fraction is not None:
      raise _UsageError("--test-fraction: mnist1d has a fixed 10,000-example test set")
    split = _data.subsample(_data.load_mnist1d(), args.train_size, seed=seed)
  else:
    x, y = _data.load_npz(args.data) if args.data else _data.load_digits()
    fraction = _TEST_FRACTION if args.test_fraction is None else args.test_fraction
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
  knobs = "--grid, --seeds, --steps" if args.command == "sweep" else "--steps"
  _limits.check(parts, f"{knobs}, --hidden, --batch-size or the data's size")
  return _data.corrupt_labels(split, args.label_noise, seed=seed)


def _arch(args):
  from optax_decoupled.cli import _models

  return _models.Architecture(args.model, args.hidden, args.depth)


# ---------------------------------------------------------------- commands


def _train_command(args):
  import numpy as np

  from optax_decoupled.cli import _plots, _train

  restarts = args.optimizer in _train.RESTARTS
  if not restarts and (args.first_cycle_steps or args.cycle_mult):
    raise _UsageError(
      f"--first-cycle-steps/--cycle-mult apply to adamwr/sgdwr, not {args.optimizer}"
    )
  _outputs.check_out(args.out, overwrite=args.overwrite)
  data = _load(args, seed=args.seed)
  arch = _arch(args)
  adam = args.optimizer in _train.ADAM_TYPE
  normalized = args.normalized_weight_decay is not None
  recipe = _train.Recipe(
    optimizer=args.optimizer,
    learning_rate=args.learning_rate
    if args.learning_rate is not None
    else (_ADAM_LR if adam else _SGD_LR),
    weight_decay=args.normalized_weight_decay
    if normalized
    else (args.weight_decay if args.weight_decay is not None else 1e-4),
    steps=args.steps,
    batch_size=args.batch_size,
    num_examples=len(data.y_train),
    normalized=normalized,
    first_cycle_steps=(args.first_cycle_steps or -(-args.steps // 7))
    if restarts
    else None,
    cycle_mult=args.cycle_mult or 2,
    mask=arch.decay_mask(),
  )
  recipe.tx()  # builds the optimizer: the library's ValueErrors come out here
  with _outputs.staging(args.out) as tmp:
    result = _train.train(
      recipe, data, arch=arch, seed=args.seed, progress=not args.quiet
    )
    curves = result.pop("curves")
    decoupled = args.optimizer in _train.DECOUPLED
    curves["decay_label"] = (
      "decay per step η_t λ_t" if decoupled else "α η_t λ (L2, before Adam's scaling)"
    )
    hyper = {k: v for k, v in vars(args).items() if k not in ("command", "quiet")}
    hyper.update(
      learning_rate=recipe.learning_rate,
      weight_decay=None if normalized else recipe.weight_decay,
      first_cycle_steps=recipe.first_cycle_steps,
      cycle_mult=recipe.cycle_mult if restarts else None,
      train_examples=len(data.y_train),
      test_examples=len(data.y_test),
    )
    metrics = {**result, "hyperparameters": hyper, "steps": args.steps}
    window = _train.angle_window(args.steps)
    for key in ("angular_update", "equilibrium_angular_update"):
      if key in curves:
        metrics[f"{key}_middle_mean"] = float(np.mean(curves[key][window]))
    # Gradient norm of the hidden kernels in the last tenth of the run over
    # its middle half: above 1 when it rises as η_t anneals (AdamC's point).
    end = curves["grad_norm"][-max(1, args.steps // 10) :]
    metrics["grad_norm_end_over_middle"] = float(
      np.mean(end) / np.mean(curves["grad_norm"][window])
    )
    arrays = {k: v for k, v in curves.items() if isinstance(v, np.ndarray)}
    np.savez(os.path.join(tmp, "curves.npz"), **arrays)  # pyright: ignore[reportArgumentType]
    if normalized and not restarts:
      metrics["weight_decay_from_normalized"] = float(recipe.lam())  # type: ignore[arg-type]
    _outputs.write_json(os.path.join(tmp, "metrics.json"), metrics)
    title = (
      f"{args.optimizer}: α={recipe.learning_rate:g}, test accuracy "
      f"{result['test_accuracy']:.3f}"
    )
    _plots.train_curves(os.path.join(tmp, "train.png"), curves, title)
  print(
    f"test accuracy {result['test_accuracy']:.4f}  train loss "
    f"{result['train_loss']:.4f}  ({result['elapsed_seconds']:.1f} s, "
    f"{args.steps} steps) -> {args.out}"
  )
  return 0


def _sweep_command(args):
  from optax_decoupled.cli import _studies, _sweep

  names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
  bad = [n for n in names if n not in _sweep.SWEEP_OPTIMIZERS]
  if not names or bad:
    raise _UsageError(
      f"--optimizers {args.optimizers!r}: unknown {bad or 'empty list'}; "
      f"choose from {','.join(_sweep.SWEEP_OPTIMIZERS)}"
    )
  if len(set(names)) != len(names):
    raise _UsageError(f"--optimizers {args.optimizers!r} repeats a name")
  _outputs.check_out(args.out, overwrite=args.overwrite)
  data = _load(args, seed=0)
  arch = _arch(args)
  seeds = list(range(args.seeds))
  settings = {k: v for k, v in vars(args).items() if k != "command"}
  settings.update(
    train_examples=len(data.y_train), test_examples=len(data.y_test), seeds=seeds
  )
  n_lr, n_wd = args.grid
  wd_range: tuple[float, float] = args.wd_range or _WD_RANGE
  if args.budgets:
    study = _studies.budgets(
      args.budgets,
      args.budget_lr,
      _sweep.log_grid(wd_range[0], wd_range[1], n_wd),
      data,
      arch,
      seeds=seeds,
      batch_size=args.batch_size,
      settings=settings,
    )
  else:
    ranges = {}
    for name in names:
      family = "adam" if name.startswith("adam") else "sgd"
      lr_range: tuple[float, float] = args.lr_range or _LR_RANGES[family]
      ranges[name] = (
        _sweep.log_grid(lr_range[0], lr_range[1], n_lr),
        _sweep.log_grid(wd_range[0], wd_range[1], n_wd),
      )
    study = _studies.grid(
      names,
      ranges,
      data,
      arch,
      seeds=seeds,
      steps=args.steps,
      batch_size=args.batch_size,
      sequential_configs=args.sequential_configs,
      settings=settings,
    )
  with _outputs.staging(args.out) as tmp:
    study.write(tmp, _outputs.write_json)
  print(f"-> {args.out}")
  return 0


def _schedule_command(args):
  import numpy as np

  import optax_decoupled as odx
  from optax_decoupled._schedules import cycle_position
  from optax_decoupled.cli import _plots
  from optax_decoupled.cli._train import schedule_values

  eta = odx.cosine_warm_restarts(
    args.first_cycle_steps,
    args.cycle_mult,
    args.min_value,
    args.max_value,
    args.cycle_decay,
    args.warmup_steps,
  )
  lam = odx.restart_normalized_weight_decay(
    args.normalized_weight_decay,
    first_cycle_steps=args.first_cycle_steps,
    cycle_mult=args.cycle_mult,
    warmup_steps=args.warmup_steps,
  )
  _outputs.check_out(args.out, overwrite=args.overwrite)
  _limits.check(_limits.schedule_bytes(args.steps), "--steps")
  steps = np.arange(args.steps)
  eta_t, lam_t = schedule_values(eta, steps), schedule_values(lam, steps)
  cycle = schedule_values(
    lambda t: cycle_position(
      t - args.warmup_steps, args.first_cycle_steps, args.cycle_mult
    )[0],
    steps,
  )
  restarts = [int(t) for t in np.flatnonzero(np.diff(cycle) > 0) + 1]
  with _outputs.staging(args.out) as tmp:
    title = (
      f"cosine_warm_restarts(first_cycle_steps={args.first_cycle_steps}, "
      f"cycle_mult={args.cycle_mult:g}, warmup_steps={args.warmup_steps})"
    )
    _plots.schedule(
      os.path.join(tmp, "schedule.png"), steps, eta_t, lam_t, restarts, title
    )
  print("restart steps:", ", ".join(map(str, restarts)) or "none")
  print(f"-> {os.path.join(args.out, 'schedule.png')}")
  return 0


_COMMANDS = {
  "train": _train_command,
  "sweep": _sweep_command,
  "schedule": _schedule_command,
}


#: What the ``examples`` extra installs, by import name.
_EXTRA = ("flax", "sklearn", "matplotlib", "tqdm")


def main(argv=None) -> int:
  """Runs the command line; returns the exit status.

  0 on success; 2 with one line on stderr for bad input or an ``--out`` that
  cannot be used; 1 with one line when the ``examples`` extra is missing; 130
  (Ctrl-C) and 143 (SIGTERM), with nothing left behind.
  """
  as_program = argv is None  # not called from Python: own the signals
  argv = sys.argv[1:] if argv is None else list(argv)
  command = next((a for a in argv if a in _COMMANDS), None)
  prog = "optax-decoupled" + (f" {command}" if command else "")
  signals = _outputs.on_signals(prog) if as_program else contextlib.nullcontext()
  with signals:
    try:
      args = _parser().parse_args(argv)
      return _COMMANDS[args.command](args)
    except ValueError as error:
      message = " ".join(str(error).split())
      print(f"{prog}: error: {message}", file=sys.stderr)
      return 2
    except ModuleNotFoundError as error:
      if (error.name or "").split(".")[0] not in _EXTRA:
        raise
      print(
        f"{prog}: error: the command line needs the 'examples' extra "
        f"({error.name} is not installed): "
        "pip install 'optax-decoupled[examples]'",
        file=sys.stderr,
      )
      return 1
    except OSError as error:  # e.g. the disk filled up: nothing half-written stays
      print(f"{prog}: error: {error}; nothing was written", file=sys.stderr)
      return 1
    except KeyboardInterrupt:  # a signal handler other than ours was active
      print(f"{prog}: interrupted (Ctrl-C); nothing was written", file=sys.stderr)
      return 130
    finally:
      _outputs.release()
