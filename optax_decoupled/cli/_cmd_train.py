"""``optax-decoupled train``: one run with one of the paper's optimizers."""

from __future__ import annotations

import os

from optax_decoupled.cli import _args, _outputs

_ADAM_LR, _SGD_LR = 3e-3, 0.05


def add_parser(sub) -> None:
  from optax_decoupled.cli import _train

  p = sub.add_parser(
    "train",
    help="train an MLP with one optimizer",
    description="Train a small Flax NNX MLP with one of the paper's "
    "optimizers; write metrics.json, curves.npz and train.png to --out. Optimizers "
    "without restarts follow --schedule (one cosine over the run by default); "
    "adamwr/sgdwr restart (cycles of --first-cycle-steps, growing by "
    "--cycle-mult).",
  )
  p.add_argument("--optimizer", choices=_train.OPTIMIZERS, default="adamwr")
  p.add_argument(
    "--learning-rate",
    type=_args.non_negative_float,
    help=f"α (default {_ADAM_LR} for Adam-type, {_SGD_LR} for SGD-type)",
  )
  decay = p.add_mutually_exclusive_group()
  decay.add_argument(
    "--weight-decay",
    type=_args.non_negative_float,
    help="λ: the paper's decoupled decay (not multiplied by α), or the L2 "
    "coefficient for adam_l2/sgd_l2 (default 1e-4)",
  )
  decay.add_argument(
    "--normalized-weight-decay",
    type=_args.non_negative_float,
    metavar="LAMBDA_NORM",
    help="λ_norm: λ = λ_norm sqrt(b / (B T)), per cycle for adamwr/sgdwr",
  )
  p.add_argument(
    "--first-cycle-steps",
    type=_args.positive_int,
    help="adamwr/sgdwr: first cycle (default: ceil(steps / 7), so that with "
    "--cycle-mult 2 the run ends with the third cycle)",
  )
  p.add_argument(
    "--cycle-mult", type=_args.positive_int, help="adamwr/sgdwr: T_mult (default 2)"
  )
  _args.add_schedule_arguments(p)
  p.add_argument("--seed", type=_args.non_negative_int, default=0, help="(%(default)s)")
  p.add_argument("--out", default="runs/train", help="output folder (%(default)s)")
  _args.add_overwrite(p)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  _args.add_model_arguments(p, hidden=64, batch_size=64, steps=1000)
  _args.add_data_arguments(p)


def run(args):
  import numpy as np

  from optax_decoupled.cli import _clock, _plots, _train
  from optax_decoupled.sweep import _engine

  restarts = args.optimizer in _train.RESTARTS
  if not restarts and (args.first_cycle_steps or args.cycle_mult):
    raise _args.UsageError(
      f"--first-cycle-steps/--cycle-mult apply to adamwr/sgdwr, not {args.optimizer}"
    )
  schedule = _args.schedule_options(args, restarts=restarts)
  _outputs.check_out(args.out, overwrite=args.overwrite)
  stop = _clock.clock()
  data = _args.load(args, seed=args.seed)
  arch = _args.arch(args)
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
    compensation=_args.compensation(args),
    **schedule,
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
    # What ran: the schedule's options as the recipe used them (defaults
    # included), none for the options of other schedules.
    options = {
      "step-drop": ("drop_at", "drop_factor"),
      "wsd": ("cooldown", "cooldown_shape", "checkpoints"),
    }
    used = () if restarts else options.get(recipe.schedule, ())
    hyper.update(
      {
        k: getattr(recipe, k) if k in used else None
        for v in options.values()
        for k in v
      }
    )
    hyper.update(
      schedule=None if restarts else recipe.schedule,
      learning_rate=recipe.learning_rate,
      weight_decay=None if normalized else recipe.weight_decay,
      first_cycle_steps=recipe.first_cycle_steps,
      cycle_mult=recipe.cycle_mult if restarts else None,
      train_examples=len(data.y_train),
      test_examples=len(data.y_test),
    )
    metrics = {**result, "hyperparameters": hyper, "steps": args.steps}
    metrics["time"] = stop(
      "the command after its arguments were checked (data, compile, training, "
      "evaluation; not the figure): wall and CPU seconds of this process, and "
      "the 1-minute load average at the end"
    )
    window = _engine.angle_window(args.steps)
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
    f"{result['train_loss']:.4f}  ({args.steps} steps; "
    f"{_clock.describe_time(metrics['time'])}) -> {args.out}"
  )
  return 0
