"""Restart-free multipliers: warmup-stable-decay (cool-downs) and step-drop.

Both are placed exactly when built: every phase boundary is an int32 step
worked out in rational arithmetic (a fraction is read as the decimal it was
written as, ``0.3`` as 3/10), and the jitted schedule compares the int32 count
with those steps.
"""

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from optax_decoupled import _checks
from optax_decoupled._schedules import clamp_count

#: The cool-down shapes of :func:`warmup_stable_decay`, as functions of the
#: position ``p`` in [0, 1) within the cool-down; each is 1 at ``p = 0`` and
#: falls to 0 as ``p`` reaches 1.
COOLDOWN_SHAPES = {
  "linear": lambda p: 1.0 - p,
  "cosine": lambda p: 0.5 * (1.0 + jnp.cos(jnp.pi * p)),
  "1-sqrt": lambda p: 1.0 - jnp.sqrt(p),
}


def _known(name: str, value: Any) -> float:
  """A number known when the schedule is built (the phases are placed then)."""
  number = _checks.check_number(name, value)
  if number is None:
    raise _checks.ArgumentTypeError(
      f"{name}={value!r} must be a number known when the schedule is built "
      "(the phase boundaries are placed exactly then), not a traced value"
    )
  return number


def _steps(name: str, value: Any, *, least: int = 0) -> int:
  _checks.check_step_count(name, _known(name, value))
  if value < least:
    raise ValueError(f"{name}={value!r} must be >= {least}")
  return int(value)


def _fraction(name: str, value: Any) -> Fraction:
  """``value`` in [0, 1] as the decimal it was written as (``0.3`` is 3/10,
  ``np.float32(0.3)`` too: the shortest decimal of its own dtype)."""
  number = _known(name, value)
  if not 0 <= number <= 1:
    raise ValueError(f"{name}={value!r} must be a fraction in [0, 1]")
  if isinstance(value, float | np.floating):
    return Fraction(str(value))
  return Fraction(repr(number))


def _ramp(count, warmup_steps: int, peak):
  return peak * count.astype(jnp.float32) / max(warmup_steps, 1)


def warmup_stable_decay(
  total_steps: Any,
  *,
  decay_fraction: Any = None,
  decay_steps: Any = None,
  warmup_steps: Any = 0,
  shape: str = "1-sqrt",
  checkpoints: Sequence[int] = (),
  min_value: Any = 0.0,
  max_value: Any = 1.0,
) -> optax.Schedule:
  r"""Warmup-stable-decay (WSD) as a multiplier ``η_t``, with repeated cool-downs.

  ``η_t`` rises linearly from 0 to ``max_value`` over ``warmup_steps``, stays
  at ``max_value`` (the stable phase), and cools down to ``min_value`` over
  the ``d`` steps before ``total_steps``:

  .. math::

    η_t = η_{min} + (η_{max} - η_{min})\, s\!\left(\tfrac{t - (e - d)}{d}\right)
    \quad \text{for } e - d \le t < e,

  with ``e = total_steps`` and the shape ``s(p)`` one of ``"1-sqrt"``
  (``1 - sqrt(p)``, Hägele et al.'s best), ``"linear"`` (``1 - p``) or
  ``"cosine"`` (``(1 + cos πp) / 2``). As in :func:`cosine_warm_restarts`,
  ``η_min`` is reached at the instant the cool-down ends, so its last step
  sits just above it; from ``total_steps`` on the value is ``min_value``.

  ``d`` is ``decay_steps`` when given, otherwise ``decay_fraction`` of the
  run, rounded to the nearest step (halves up). With ``checkpoints`` (steps
  before ``total_steps``), every checkpoint ``e`` also gets a cool-down of its
  own over the ``d`` steps before it (``d`` the fraction of ``e``, or
  ``decay_steps``), after which ``η_t`` jumps back to ``max_value``: the model
  at each checkpoint is a cooled-down one, and training goes on from it (WSD-S,
  Wen et al. 2024). Take the snapshots after ``e`` updates, i.e. after the
  update at 0-based count ``e - 1``.

  Every boundary is an int32 step placed when the schedule is built, so the
  arguments other than ``min_value`` and ``max_value`` must be numbers, not
  traced values. Refused then (``ValueError``): a cool-down longer than its
  stretch of the run (it would reach into the warmup or the previous
  checkpoint's stretch), a fraction outside [0, 1], an unknown shape,
  checkpoints that are not increasing steps in ``(0, total_steps)``.

  Args:
    total_steps: the run's length in steps (>= 1).
    decay_fraction: the cool-down's share of the run (of each checkpoint's
      steps with ``checkpoints``), in [0, 1]; 0 is a constant after warmup.
      Default 0.2 (when ``decay_steps`` is not given either).
    decay_steps: the cool-down's length in steps instead (>= 0; not together
      with ``decay_fraction``).
    warmup_steps: steps of linear warmup from 0 (>= 0).
    shape: ``"1-sqrt"``, ``"linear"`` or ``"cosine"``.
    checkpoints: steps at which a cooled-down model is wanted besides
      ``total_steps``.
    min_value: the value the cool-down ends at (>= 0).
    max_value: the stable value (>= ``min_value``).

  Returns:
    An ``optax.Schedule`` of an int32 count, carrying ``max_value`` as its
    ``schedule_peak`` (for ``corrected=True`` decay).

  Example:
    >>> import optax_decoupled as odx
    >>> eta = odx.warmup_stable_decay(10, decay_fraction=0.4, shape="linear")
    >>> [round(float(eta(t)), 2) for t in range(11)]
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]

  References:
    Hägele et al., `Scaling Laws and Compute-Optimal Training Beyond Fixed
    Training Durations <https://arxiv.org/abs/2405.18392>`_, NeurIPS 2024.
    Wen et al., `Understanding Warmup-Stable-Decay Learning Rates: A River
    Valley Loss Landscape Perspective <https://arxiv.org/abs/2410.05192>`_, 2024.
  """
  total = _steps("total_steps", total_steps, least=1)
  warmup = _steps("warmup_steps", warmup_steps)
  if warmup > total:
    raise ValueError(
      f"warmup_steps={warmup_steps!r} must be at most total_steps={total_steps!r}"
    )
  if shape not in COOLDOWN_SHAPES:
    raise ValueError(f"shape={shape!r} must be one of {', '.join(COOLDOWN_SHAPES)}")
  if decay_steps is not None and decay_fraction is not None:
    raise ValueError(
      f"decay_steps={decay_steps!r} and decay_fraction={decay_fraction!r}: "
      "give one cool-down length, not both"
    )
  fraction = _fraction(
    "decay_fraction", 0.2 if decay_fraction is None else decay_fraction
  )
  fixed = None if decay_steps is None else _steps("decay_steps", decay_steps)
  ends = _checkpoints(checkpoints, total)
  _checks.check_non_negative("min_value", min_value)
  _checks.check_non_negative("max_value", max_value)
  _checks.check_not_greater("min_value", min_value, "max_value", max_value)
  lengths = [
    fixed if fixed is not None else math.floor(fraction * e + Fraction(1, 2))
    for e in ends
  ]
  previous = warmup
  for end, length in zip(ends, lengths, strict=True):
    if length == 0 and fixed is None and fraction > 0:
      raise ValueError(
        f"decay_fraction={decay_fraction!r} of {end} steps rounds to a cool-down "
        f"of 0 steps before step {end}: use a larger decay_fraction, decay_steps, "
        "or later checkpoints"
      )
    if end - length < previous:
      where = "the warmup" if previous == warmup else f"checkpoint {previous}"
      raise ValueError(
        f"the cool-down before step {end} ({length} steps) is longer than the "
        f"{end - previous} steps since {where}: use a smaller "
        f"{'decay_fraction' if fixed is None else 'decay_steps'}, "
        "fewer checkpoints or fewer warmup_steps"
      )
    previous = end
  end_at = jnp.asarray(np.asarray(ends, np.int32))
  starts = np.asarray(ends, np.int64) - np.asarray(lengths, np.int64)
  start_at = jnp.asarray(starts.astype(np.int32))
  length_of = jnp.asarray(np.maximum(np.asarray(lengths, np.float32), 1.0))
  cool = COOLDOWN_SHAPES[shape]

  def schedule(count):
    count = clamp_count(count)
    lo = jnp.asarray(min_value, jnp.float32)
    hi = jnp.asarray(max_value, jnp.float32)
    k = jnp.minimum(jnp.searchsorted(end_at, count, side="right"), len(ends) - 1)
    p = (count - start_at[k]).astype(jnp.float32) / length_of[k]
    # p is in [0, 1) within cool-down k; elsewhere it is clipped and unused.
    value = lo + (hi - lo) * cool(jnp.clip(p, 0.0, 1.0))
    value = jnp.where(count < start_at[k], hi, value)
    value = jnp.where(count >= total, lo, value)
    return jnp.where(count < warmup, _ramp(count, warmup, hi), value)

  schedule.schedule_peak = max_value  # η_max, for corrected decay
  return schedule


def _checkpoints(checkpoints: Sequence[int], total: int) -> list[int]:
  """The checkpoint steps, checked, with ``total`` appended."""
  try:
    steps = [int(_steps("checkpoints", c)) for c in checkpoints]
  except TypeError:
    raise _checks.ArgumentTypeError(
      f"checkpoints={checkpoints!r} must be a sequence of steps"
    ) from None
  if any(not 0 < s < total for s in steps) or steps != sorted(set(steps)):
    raise ValueError(
      f"checkpoints={checkpoints!r} must be increasing steps in (0, "
      f"total_steps={total})"
    )
  return [*steps, total]


def step_drop(
  total_steps: Any,
  *,
  drop_at: Sequence[float] = (0.5, 0.75),
  factor: Any = 0.1,
  max_value: Any = 1.0,
) -> optax.Schedule:
  r"""The step-drop multiplier: ``max_value``, times ``factor`` at each drop.

  ``η_t = max_value · factor^k`` with ``k`` the number of drops at or before
  step ``t``. The drop at fraction ``f`` of the run happens at the first step
  at or after ``f · total_steps``, worked out exactly (``f`` read as the
  decimal it was written as): ``drop_at=(0.5, 0.75)`` of 300 steps drops at
  steps 150 and 225, the paper's step-drop baseline (×0.1 at 50 % and 75 %).

  Refused when built (``ValueError``): fractions outside (0, 1), not
  increasing, or two drops on one step; ``factor`` outside (0, 1].

  Args:
    total_steps: the run's length in steps (>= 1).
    drop_at: the fractions of the run at which ``η_t`` drops, increasing.
    factor: each drop's multiplier, in (0, 1].
    max_value: the value before the first drop (>= 0).

  Returns:
    An ``optax.Schedule`` of an int32 count, carrying ``max_value`` as its
    ``schedule_peak``.

  Example:
    >>> import optax_decoupled as odx
    >>> eta = odx.step_drop(8, drop_at=(0.5, 0.75), factor=0.1)
    >>> [round(float(eta(t)), 3) for t in range(8)]
    [1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
  """
  total = _steps("total_steps", total_steps, least=1)
  try:
    fractions = [_fraction("drop_at", f) for f in drop_at]
  except TypeError:
    raise _checks.ArgumentTypeError(
      f"drop_at={drop_at!r} must be a sequence of fractions"
    ) from None
  drops = [math.ceil(f * total) for f in fractions]
  if (
    not fractions
    or any(not 0 < f < 1 for f in fractions)
    or drops != sorted(set(drops))
    or drops[-1] >= total
  ):
    raise ValueError(
      f"drop_at={tuple(drop_at)!r} must be increasing fractions in (0, 1), "
      f"at most one on each of the {total} steps and each inside the run (they "
      f"fall on steps {drops})"
    )
  _checks.check_positive("factor", factor)
  _checks.check_not_greater("factor", factor, "1", 1.0)
  _checks.check_non_negative("max_value", max_value)
  drop_steps = jnp.asarray(np.asarray(drops, np.int32))

  def schedule(count):
    k = jnp.searchsorted(drop_steps, clamp_count(count), side="right")
    factors = jnp.asarray(factor, jnp.float32) ** k.astype(jnp.float32)
    return jnp.asarray(max_value, jnp.float32) * factors

  schedule.schedule_peak = max_value  # η_max, for corrected decay
  return schedule
