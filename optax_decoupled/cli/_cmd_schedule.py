"""``optax-decoupled schedule``: plot a warm-restart schedule, print its restarts."""

from __future__ import annotations

import os

from optax_decoupled.cli import _args, _limits, _outputs


def add_parser(sub) -> None:
  p = sub.add_parser(
    "schedule",
    help="plot SGDR's η_t and the restart-normalized decay",
    description="Plot odx.cosine_warm_restarts(...) and λ_norm / sqrt(T_i) "
    "over --steps steps to --out/schedule.png; print the restart steps.",
  )
  p.add_argument(
    "--first-cycle-steps", type=_args.positive_int, default=100, help="(%(default)s)"
  )
  p.add_argument(
    "--cycle-mult", type=_args.positive_float, default=2.0, help="(%(default)s)"
  )
  p.add_argument(
    "--min-value", type=_args.non_negative_float, default=0.0, help="(%(default)s)"
  )
  p.add_argument(
    "--max-value", type=_args.non_negative_float, default=1.0, help="(%(default)s)"
  )
  p.add_argument(
    "--cycle-decay", type=_args.positive_float, default=1.0, help="(%(default)s)"
  )
  p.add_argument(
    "--warmup-steps", type=_args.non_negative_int, default=0, help="(%(default)s)"
  )
  p.add_argument(
    "--normalized-weight-decay", type=_args.non_negative_float, default=0.05
  )
  p.add_argument("--steps", type=_args.positive_int, default=700, help="(%(default)s)")
  p.add_argument("--out", default="runs/schedule", help="output folder (%(default)s)")
  _args.add_overwrite(p)


def run(args):
  import numpy as np

  import optax_decoupled as odx
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
  restarts = odx.restart_steps(
    args.steps, args.first_cycle_steps, args.cycle_mult, args.warmup_steps
  )
  with _outputs.staging(args.out) as tmp:
    title = (
      f"cosine_warm_restarts(first_cycle_steps={args.first_cycle_steps}, "
      f"cycle_mult={args.cycle_mult:g}, warmup_steps={args.warmup_steps})"
    )
    _plots.schedule(
      os.path.join(tmp, "schedule.png"),
      steps,
      eta_t,
      lam_t,
      restarts,
      title,
      args.normalized_weight_decay,
    )
  print("restart steps:", ", ".join(map(str, restarts)) or "none")
  print(f"-> {os.path.join(args.out, 'schedule.png')}")
  return 0
