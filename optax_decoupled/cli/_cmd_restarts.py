"""``optax-decoupled restarts``: what warm restarts and other schedules buy."""

from __future__ import annotations

from optax_decoupled.cli import _args, _outputs


def add_parser(sub) -> None:
  p = sub.add_parser(
    "restarts",
    help="anytime curves of warm restarts, WSD, step-drop, ... (restarts.json)",
    description="For AdamW and SGDW, train one cosine, warm restarts (T_mult 2 "
    "and 1, and T_mult 2 with the paper's per-restart normalized decay), "
    "step-drop, WSD, WSD-S and a constant η_t, each at its own best (α, λ) "
    "of the same --grid (tuned on seed 0), on --seeds further seeds in one "
    "vmapped program per optimizer. Records the test error along the run, "
    "the snapshot ensemble and the weight average (SWA) of the last "
    "--snapshots cycle ends, and one-cosine runs as long as each cycle end; "
    "writes restarts.json and restarts.png.",
  )
  p.add_argument(
    "--optimizers",
    default="adamw,sgdw",
    help="comma list of adamw, sgdw (%(default)s)",
  )
  p.add_argument(
    "--grid",
    type=_args.grid,
    default=(3, 3),
    metavar="AxL",
    help="the tuning grid per schedule, learning rates x weight decays (3x3)",
  )
  p.add_argument(
    "--seeds",
    type=_args.positive_int,
    default=3,
    help="seeds of the reported runs, 1..N; seed 0 tunes (%(default)s)",
  )
  p.add_argument(
    "--snapshots",
    type=_args.positive_int,
    default=3,
    help="cycle ends in the ensemble and the weight average (%(default)s)",
  )
  p.add_argument("--out", default="runs/restarts", help="output folder (%(default)s)")
  _args.add_overwrite(p)
  _args.add_model_arguments(p, hidden=64, batch_size=64, steps=3000)
  _args.add_data_arguments(p)


def run(args):
  from optax_decoupled.cli import _clock, _restarts

  names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
  known = {plain: family for family, (plain, _) in _restarts.FAMILIES.items()}
  bad = [n for n in names if n not in known]
  if not names or bad or len(set(names)) != len(names):
    raise _args.UsageError(
      f"--optimizers {args.optimizers!r}: give adamw, sgdw or both, once each"
    )
  if args.steps % 15:
    raise _args.UsageError(
      f"--steps {args.steps} must be a multiple of 15, so that four T_mult=2 "
      "cycles (1 + 2 + 4 + 8 = 15 units) and five T_mult=1 cycles end with the run"
    )
  if args.snapshots > 4:
    raise _args.UsageError(
      f"--snapshots {args.snapshots} must be at most 4, the T_mult=2 run's cycle ends"
    )
  _outputs.check_out(args.out, overwrite=args.overwrite)
  data = _args.load(args, seed=0)
  arch = _args.arch(args)
  settings = {k: v for k, v in vars(args).items() if k != "command"}
  seeds = list(range(1, args.seeds + 1))
  settings.update(
    train_examples=len(data.y_train),
    test_examples=len(data.y_test),
    seeds=seeds,
    tune_seed=0,
  )
  stop = _clock.clock()
  study = _restarts.study(
    [known[n] for n in names],
    data,
    arch,
    steps=args.steps,
    batch_size=args.batch_size,
    seeds=seeds,
    tune_seed=0,
    grid=args.grid,
    num_snapshots=args.snapshots,
    settings=settings,
    compensation=_args.compensation(args),
  )
  study.payload["time"] = stop(
    "the study after the data was loaded (tuning, runs, snapshots; not the "
    "figure): wall and CPU seconds of this process, and the 1-minute load "
    "average at the end"
  )
  with _outputs.staging(args.out) as tmp:
    study.write(tmp, _outputs.write_json)
  print(f"-> {args.out} ({_clock.describe_time(study.payload['time'])})")
  return 0
