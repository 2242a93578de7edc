"""``optax-decoupled sweep``: the lr x weight-decay grid, or the budget study."""

from __future__ import annotations

from optax_decoupled.cli import _args, _outputs

#: Default grids (mnist1d, the BatchNorm MLP, 3000 steps): wide enough that
#: every α row's best λ lies inside for both conventions (Adam+L2's optimum
#: reaches λ ≈ 0.3 at small α; AdamW's sits near 3e-3 for every α).
_LR_RANGES = {"adam": (1e-4, 1e-1), "sgd": (1e-3, 1.0)}
_WD_RANGE = (1e-5, 1.0)
_DEFAULT_OPTIMIZERS = "adam_l2,adamw"
#: α of the budget study: inside AdamW's good rows of the default grid.
_BUDGET_LR = 1e-2


def add_parser(sub) -> None:
  from optax_decoupled.cli import _sweep

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
    help=f"comma list of {','.join(_sweep.SWEEP_OPTIMIZERS)} "
    f"(default {_DEFAULT_OPTIMIZERS}; the budget study is AdamW's)",
  )
  p.add_argument(
    "--grid",
    type=_args.grid,
    default=(7, 11),
    metavar="AxL",
    help="learning rates x weight decays, e.g. 7x11, or N for N x N (7x11)",
  )
  p.add_argument(
    "--lr-range",
    type=_args.value_range,
    help="LO,HI (default {:g},{:g} for Adam, {:g},{:g} for SGD)".format(
      *_LR_RANGES["adam"], *_LR_RANGES["sgd"]
    ),
  )
  p.add_argument(
    "--wd-range",
    type=_args.value_range,
    help=f"LO,HI for every optimizer (default {_WD_RANGE[0]:g},{_WD_RANGE[1]:g}); "
    "the decoupled λ is not multiplied by α, unlike the L2 coefficient",
  )
  p.add_argument(
    "--seeds", type=_args.positive_int, default=2, help="seeds per cell (%(default)s)"
  )
  p.add_argument(
    "--sequential-configs",
    type=_args.non_negative_int,
    default=0,
    help="also time this many configs one at a time, to compare with the "
    "vmapped grid (%(default)s: no comparison)",
  )
  p.add_argument(
    "--budgets",
    type=_args.budgets,
    metavar="STEPS,STEPS,...",
    help="run lengths for the budget study, e.g. 750,1500,3000,6000: AdamW over "
    "the λ grid at --budget-lr, instead of the learning-rate x decay grid",
  )
  p.add_argument(
    "--budget-lr",
    type=_args.positive_float,
    default=_BUDGET_LR,
    help="α of the budget study (%(default)s)",
  )
  p.add_argument(
    "--chunk-size",
    type=_args.positive_int,
    help="configurations per compiled chunk, a multiple of the device count "
    "(default: the most that fit in --memory)",
  )
  p.add_argument(
    "--memory",
    type=_args.positive_float,
    metavar="MIB",
    help="MiB each device may use; a grid that needs more runs in chunks "
    "(default: 80%% of what each device has free)",
  )
  p.add_argument(
    "--distributed",
    action="store_true",
    help="call jax.distributed.initialize() (SLURM, Open MPI, ...); implied by "
    "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES or JAX_PROCESS_ID in the "
    "environment. Every process gets the same --out; process 0 writes it",
  )
  p.add_argument("--out", default="runs/sweep", help="output folder (%(default)s)")
  _args.add_overwrite(p)
  _args.add_model_arguments(p, hidden=64, batch_size=64, steps=3000)
  _args.add_data_arguments(p)


def run(args):
  from optax_decoupled.cli import _clock, _distributed, _studies, _sweep

  if args.budgets and (args.optimizers is not None or args.lr_range is not None):
    raise _args.UsageError(
      "--budgets trains AdamW at --budget-lr: --optimizers and --lr-range do "
      "not apply (only the λ part of --grid and --wd-range do)"
    )
  # The budget study is AdamW's, and sweep.json / budgets.json record that.
  args.optimizers = "adamw" if args.budgets else args.optimizers or _DEFAULT_OPTIMIZERS
  names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
  bad = [n for n in names if n not in _sweep.SWEEP_OPTIMIZERS]
  if not names or bad:
    raise _args.UsageError(
      f"--optimizers {args.optimizers!r}: "
      f"{f'unknown {bad}' if bad else 'no optimizer named'}; "
      f"choose from {','.join(_sweep.SWEEP_OPTIMIZERS)}"
    )
  if len(set(names)) != len(names):
    raise _args.UsageError(f"--optimizers {args.optimizers!r} repeats a name")
  _distributed.initialize(args)
  _check_chunk(args.chunk_size)
  writer = _distributed.claim_out(args.out, overwrite=args.overwrite)
  stop = _clock.clock()
  options = {
    "chunk_size": args.chunk_size,
    "memory": None if args.memory is None else int(args.memory * 2**20),
  }
  data = _args.load(args, seed=0)
  arch = _args.arch(args)
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
      compensation=_args.compensation(args),
      **options,
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
      compensation=_args.compensation(args),
      **options,
    )
  study.payload["time"] = stop(
    "the command after its arguments were checked (data, every grid, compile "
    "included, the summary; not the figures): wall and CPU seconds of this "
    "process, and the 1-minute load average at the end"
  )
  if args.budgets:
    grids = sum(r["vmapped_seconds"] for r in study.payload["runs"])
    print(
      f"{grids:.0f} s in the {len(args.budgets)} grids (each run's initial state, "
      f"batch order and compilation included) of "
      f"{study.payload['time']['wall_seconds']:.0f} s; the rest is the data"
    )
  if not writer:
    return 0
  with _outputs.staging(args.out) as tmp:
    study.write(tmp, _outputs.write_json)
  print(f"-> {args.out} ({_clock.describe_time(study.payload['time'])})")
  return 0


def _check_chunk(chunk_size: int | None) -> None:
  import jax

  devices = jax.device_count()
  if chunk_size is not None and chunk_size % devices:
    raise _args.UsageError(
      f"--chunk-size {chunk_size} is not a multiple of the {devices} devices "
      f"({jax.process_count()} process(es)); pass a multiple of {devices}"
    )
