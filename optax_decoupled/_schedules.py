"""SGDR's cosine schedule with warm restarts, where its cycles fall, and
normalized weight decay."""

import dataclasses
import functools
import math
from decimal import ROUND_CEILING, Context, Decimal, localcontext
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_decoupled import _checks

_INT32_MAX = _checks.INT32_MAX

#: Most cycles tabulated: a ``cycle_mult`` so close to 1 that more cycles
#: begin below step 2^31 is refused (use ``cycle_mult=1``).
MAX_CYCLES = 2**16
#: Most restarts :func:`restart_steps` lists (a Python list of ints).
MAX_RESTART_STEPS = 10**7
#: Largest denominator of a fractional ``first_cycle_steps`` with
#: ``cycle_mult=1``: its restarts repeat every ``numerator`` steps.
MAX_DENOMINATOR = 2**16


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Where the cycles begin, worked out exactly when the schedule is built.

  Cycle ``i`` begins at the real ``S_i`` and restarts at step ``ceil(S_i)``:
  ``starts`` holds those steps (int32), ``offsets`` ``ceil(S_i) - S_i``
  (in [0, 1)) and ``lengths`` ``T_i``. With a ``period`` the table covers
  one period of ``period`` steps and ``cycles_per_period`` cycles, repeated.
  """

  starts: np.ndarray
  offsets: np.ndarray
  lengths: np.ndarray
  period: int | None = None
  cycles_per_period: int = 0


def _exact_ceil(x: Fraction) -> tuple[int, float]:
  step = math.ceil(x)
  return step, float(step - x)


@functools.lru_cache(maxsize=64)
def _plan(first: float, mult: float) -> _Plan:
  """The cycles of ``(first, mult)`` below step 2^31, exactly, or ValueError."""
  if mult == 1:
    return _periodic_plan(first)
  if float(first).is_integer() and float(mult).is_integer():
    start, length = 0, int(first)  # Python integers: exact
    step_of = lambda x: (int(x), 0.0)  # noqa: E731
    grow = lambda x: x * int(mult)  # noqa: E731
  else:
    # 60 significant digits: the float64 inputs' exact values, walked with
    # an error far below any float64 rounding. A start within 1e-12 (relative)
    # of an integer is that integer, so 0.1-style decimals (not exact in
    # binary) that add up to a whole step restart on it.
    start, length = Decimal(0), Decimal(first)
    m = Decimal(mult)

    def step_of(x):
      nearest = x.to_integral_value()
      if abs(x - nearest) <= Decimal("1e-12") * max(nearest, Decimal(1)):
        return int(nearest), 0.0
      ceil = int(x.to_integral_value(rounding=ROUND_CEILING))
      return ceil, float(ceil - x)

    grow = lambda x: x * m  # noqa: E731
  steps, offsets, lengths = [], [], []
  with localcontext(Context(prec=60)):
    while start <= _INT32_MAX:
      if len(steps) == MAX_CYCLES:
        raise ValueError(
          f"cycle_mult={mult!r} is so close to 1 that with first_cycle_steps="
          f"{first!r} more than {MAX_CYCLES} cycles begin before step 2^31-1, "
          "too many to place exactly: use cycle_mult=1 or a value farther from 1"
        )
      step, offset = step_of(start)
      steps.append(step)
      offsets.append(offset)
      lengths.append(float(length))
      start, length = start + length, grow(length)
  return _Plan(
    np.asarray(steps, np.int32),
    np.asarray(offsets, np.float32),
    np.asarray(lengths, np.float32),
  )


def _periodic_plan(first: float) -> _Plan:
  """``cycle_mult=1``: cycle ``i`` begins at ``i p / q`` for ``first = p / q``.

  ``first`` is read as the fraction with the smallest denominator (at most
  ``MAX_DENOMINATOR``) that rounds to it: ``390.625`` is 3125/8 and ``100.1``
  is 1001/10. The restarts then repeat every ``p`` steps, ``q`` cycles a time.
  """
  frac = Fraction(first).limit_denominator(MAX_DENOMINATOR)
  if float(frac) != first:
    raise ValueError(
      f"first_cycle_steps={first!r} is not a fraction with a denominator of at "
      f"most {MAX_DENOMINATOR}, so its restarts cannot be placed exactly: "
      "round it (say to 4 decimals) or pass a whole number of steps"
    )
  p, q = frac.numerator, frac.denominator
  if p > _INT32_MAX:  # fewer than q cycles begin below 2^31
    count = _INT32_MAX // p * q + q
    k_max = next(k for k in range(count + 1) if k * frac > _INT32_MAX)
    table = [_exact_ceil(k * frac) for k in range(k_max)]
    period = None
  else:
    table = [_exact_ceil(k * frac) for k in range(q)]
    period = p
  return _Plan(
    np.asarray([t[0] for t in table], np.int32),
    np.asarray([t[1] for t in table], np.float32),
    np.full(len(table), float(frac), np.float32),
    period,
    q,
  )


def clamp_count(count: Any) -> jax.Array:
  """A step count as int32 in ``[0, 2^31 - 1]``: a schedule's domain.

  A negative count is step 0, a larger one (int64 under x64) the last int32
  step, so the value never leaves the schedule's range.
  """
  if isinstance(count, int | np.integer) and not isinstance(count, bool):
    return jnp.int32(min(max(int(count), 0), _INT32_MAX))
  count = jnp.asarray(count)
  if jnp.issubdtype(count.dtype, jnp.integer):
    lo = jnp.zeros((), count.dtype)
    if jnp.iinfo(count.dtype).max > _INT32_MAX:
      count = jnp.minimum(count, jnp.asarray(_INT32_MAX, count.dtype))
    return jnp.maximum(count, lo).astype(jnp.int32)
  # A float count: below 2^31 in float32 is at most 2^31 - 128.
  count = jnp.clip(jnp.floor(count), 0, 2.0**31 - 128)
  return count.astype(jnp.int32)


def _known_plan(first_cycle_steps: Any, cycle_mult: Any) -> _Plan | None:
  first = _checks.concrete_value(first_cycle_steps)
  mult = _checks.concrete_value(cycle_mult)
  if first is None or mult is None:
    return None
  return _plan(first, mult)


def _locate(
  step: jax.Array, first_cycle_steps: Any, cycle_mult: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Locates ``step`` (counted from the first cycle's start) in SGDR.

  Returns ``(i, t_cur, t_i)``: the cycle index (int32), the steps since that
  cycle's start and the cycle's length (float32), with cycle ``i`` lasting
  ``first_cycle_steps * cycle_mult**i`` steps. ``step`` is clamped to
  ``[0, 2^31 - 1]``.

  When ``first_cycle_steps`` and ``cycle_mult`` are known when the schedule is
  built, the cycles are worked out exactly then (see :class:`_Plan`) and the
  int32 step is compared with each cycle's first step: restarts are exact for
  every int32 step. Otherwise (traced arguments under
  ``optax.inject_hyperparams``) ``i`` is found from a float32 logarithm and
  corrected by one comparison each way against the cycle's start.
  """
  step = clamp_count(step)
  first = _checks.concrete_value(first_cycle_steps)
  mult = _checks.concrete_value(cycle_mult)
  if mult == 1 and first is not None and first.is_integer() and first <= _INT32_MAX:
    first = int(first)
    i = step // first
    t_cur = step - i * first
    return i, t_cur.astype(jnp.float32), jnp.float32(first)
  plan = _known_plan(first_cycle_steps, cycle_mult)
  if plan is None:
    return _float_cycle_position(step, first_cycle_steps, cycle_mult)
  starts, offsets, lengths = (
    jnp.asarray(a) for a in (plan.starts, plan.offsets, plan.lengths)
  )
  base = jnp.zeros((), jnp.int32)
  within = step
  if plan.period is not None:
    within = step % plan.period
    base = (step // plan.period) * plan.cycles_per_period
  j = jnp.searchsorted(starts, within, side="right").astype(jnp.int32) - 1
  t_cur = (within - starts[j]).astype(jnp.float32) + offsets[j]
  return base + j, t_cur, lengths[j]


def _float_cycle_position(step, first_cycle_steps, cycle_mult):
  """``_locate`` in float32, for arguments not known when built."""
  s = step.astype(jnp.float32)
  first = jnp.asarray(first_cycle_steps, jnp.float32)
  mult = jnp.asarray(cycle_mult, jnp.float32)
  geometric = mult > 1
  growth = jnp.where(geometric, mult - 1, 1.0)  # safe divisor when mult == 1

  def start(k):
    exact = first * jnp.where(geometric, (mult**k - 1) / growth, k)
    # A start within float32 rounding of an integer step is that step, so a
    # restart is not moved one step by rounding (integer first and mult).
    nearest = jnp.round(exact)
    close = jnp.abs(exact - nearest) <= 2.5e-7 * jnp.maximum(nearest, 1.0)
    return jnp.where(close, nearest, exact)

  guess = jnp.where(
    geometric,
    jnp.floor(jnp.log1p(s * growth / first) / jnp.log(jnp.where(geometric, mult, 2.0))),
    jnp.floor(s / first),
  )
  k = jnp.where(s < start(guess), guess - 1, guess)
  k = jnp.where(s >= start(k + 1), k + 1, k)
  t_i = first * mult**k
  return k.astype(jnp.int32), jnp.clip(s - start(k), 0, t_i), t_i


def _check_cycles(first_cycle_steps: Any, cycle_mult: Any, warmup_steps: Any):
  _checks.check_at_least("first_cycle_steps", first_cycle_steps, 1)
  _checks.check_at_least("cycle_mult", cycle_mult, 1)
  _checks.check_step_count("warmup_steps", warmup_steps)
  _known_plan(first_cycle_steps, cycle_mult)  # refuses cycles it cannot place


def cosine_warm_restarts(
  first_cycle_steps: Any,
  cycle_mult: Any = 1,
  min_value: Any = 0.0,
  max_value: Any = 1.0,
  cycle_decay: Any = 1.0,
  warmup_steps: Any = 0,
) -> optax.Schedule:
  r"""SGDR's cosine annealing with warm restarts, as a multiplier ``η_t``.

  At 0-based step ``t`` after ``warmup_steps`` steps of warmup, with ``T_cur``
  the steps since the last restart, cycle ``i`` of length
  ``T_i = first_cycle_steps * cycle_mult**i`` and peak
  ``η_max^(i) = max(max_value * cycle_decay**i, min_value)``:

  .. math::

    η_t = η_{min} + \tfrac12 (η_{max}^{(i)} - η_{min})(1 + \cos(π T_{cur} / T_i))

  where ``η_min = min_value``. During warmup (``t < warmup_steps``) the value
  rises linearly, ``η_t = max_value * t / warmup_steps``. At each restart the
  value jumps back to the cycle's peak. As in the paper and in PyTorch, ``η_min``
  is reached at the instant of the restart (``T_cur = T_i``), so the last step
  of a cycle sits just above it.

  When ``first_cycle_steps`` and ``cycle_mult`` are numbers (not traced), the
  restart steps are exact for every int32 step count, integer or fractional
  values alike: a cycle with a real-valued start restarts at the first step at
  or after it, as when the cycles are walked one by one. The cycles are worked
  out when the schedule is built, in exact (integer or rational) arithmetic
  or, for a fractional ``cycle_mult``, to 60 digits. Two cases cannot be
  placed exactly and are refused with a ``ValueError``: ``cycle_mult`` so
  close to 1 that more than 65536 cycles begin below step 2^31, and, with
  ``cycle_mult=1``, a fractional ``first_cycle_steps`` that is not a fraction
  with denominator at most 65536 (``390.625`` and ``100.1`` are; their
  restarts repeat every 3125 and 1001 steps). Traced values
  (``optax.inject_hyperparams`` without ``static_args``) are located in
  float32: exact for integer values up to about 2^22 steps.

  The count is clamped to ``[0, 2^31 - 1]`` (a negative count is step 0, an
  int64 count beyond int32 the last int32 step), so the value never leaves
  ``[min_value, max_value]`` after warmup, nor ``[0, max_value]`` during it.

  With ``warmup_steps=0`` and ``cycle_decay=1`` this equals PyTorch's
  ``CosineAnnealingWarmRestarts(T_0=first_cycle_steps, T_mult=cycle_mult,
  eta_min=min_value)`` applied to a base rate ``max_value``.

  Args:
    first_cycle_steps: ``T_0``, the length of the first cycle in steps (>= 1).
    cycle_mult: ``T_mult`` (>= 1, integer or not): each cycle is this many
      times longer than the one before.
    min_value: ``η_min``, the floor of every cycle (>= 0).
    max_value: the peak of the first cycle (>= ``min_value``).
    cycle_decay: the peak of cycle ``i`` is ``max_value * cycle_decay**i``,
      in (0, 1]; it never falls below ``min_value``.
    warmup_steps: steps of linear warmup from 0 to ``max_value`` before the
      first cycle, a whole number in [0, 2^31 - 1].

  Returns:
    An ``optax.Schedule`` mapping an int32 step count to a float32 value. It
    carries its peak ``max_value`` as ``schedule_peak``, which
    ``corrected=True`` decay reads.

  Example:
    >>> import optax_decoupled as odx
    >>> eta = odx.cosine_warm_restarts(first_cycle_steps=4, cycle_mult=2)
    >>> [round(float(eta(t)), 3) for t in range(7)]
    [1.0, 0.854, 0.5, 0.146, 1.0, 0.962, 0.854]

  References:
    Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
    <https://arxiv.org/abs/1608.03983>`_, ICLR 2017.
  """
  _check_cycles(first_cycle_steps, cycle_mult, warmup_steps)
  _checks.check_non_negative("min_value", min_value)
  _checks.check_non_negative("max_value", max_value)
  _checks.check_not_greater("min_value", min_value, "max_value", max_value)
  _checks.check_positive("cycle_decay", cycle_decay)
  _checks.check_not_greater("cycle_decay", cycle_decay, "1", 1.0)

  def schedule(count):
    count = clamp_count(count)
    warmup = jnp.asarray(warmup_steps, jnp.int32)
    lo = jnp.asarray(min_value, jnp.float32)
    hi = jnp.asarray(max_value, jnp.float32)
    i, t_cur, t_i = _locate(count - warmup, first_cycle_steps, cycle_mult)
    decay = jnp.asarray(cycle_decay, jnp.float32) ** i.astype(jnp.float32)
    peak = jnp.maximum(hi * decay, lo)
    cosine = lo + 0.5 * (peak - lo) * (1 + jnp.cos(jnp.pi * t_cur / t_i))
    ramp = hi * count.astype(jnp.float32) / jnp.maximum(warmup, 1).astype(jnp.float32)
    return jnp.where(count < warmup, ramp, cosine)

  schedule.schedule_peak = max_value  # η_max, for corrected decay
  return schedule


class CyclePosition(NamedTuple):
  """Where a step falls in SGDR's cycles (see :func:`cycle_position`)."""

  #: The cycle's index ``i`` (int32), 0 for the first.
  cycle: jax.Array
  #: ``T_cur``: steps since the cycle began (float32; fractional when the
  #: cycle began between two steps).
  steps_into_cycle: jax.Array
  #: ``T_i``: the cycle's length in steps (float32).
  cycle_steps: jax.Array


def cycle_position(
  step: jax.typing.ArrayLike,
  first_cycle_steps: jax.typing.ArrayLike,
  cycle_mult: jax.typing.ArrayLike = 1,
  warmup_steps: jax.typing.ArrayLike = 0,
) -> CyclePosition:
  """Which cycle of :func:`cosine_warm_restarts` a step is in, and how far in.

  Takes the same cycle arguments as :func:`cosine_warm_restarts` (and places
  the cycles exactly as it does), so a training loop can tell where it is:
  ``cycle_position(count, 100, 2).cycle`` changes exactly where ``η_t`` jumps
  back to its peak. It jits with a traced int32 ``step``; during warmup the
  position is the first cycle's start. For the restart steps of a whole run,
  as Python integers, use :func:`restart_steps`.

  Args:
    step: the 0-based step count (the optimizer's ``count``).
    first_cycle_steps: ``T_0`` (>= 1).
    cycle_mult: ``T_mult`` (>= 1).
    warmup_steps: steps before the first cycle (>= 0).

  Returns:
    A :class:`CyclePosition` ``(cycle, steps_into_cycle, cycle_steps)``.

  Example:
    >>> import optax_decoupled as odx
    >>> pos = odx.cycle_position(7, first_cycle_steps=4, cycle_mult=2)
    >>> int(pos.cycle), float(pos.steps_into_cycle), float(pos.cycle_steps)
    (1, 3.0, 8.0)
  """
  _check_cycles(first_cycle_steps, cycle_mult, warmup_steps)
  count = clamp_count(step)
  return CyclePosition(
    *_locate(
      count - jnp.asarray(warmup_steps, jnp.int32), first_cycle_steps, cycle_mult
    )
  )


def restart_steps(
  total_steps: int,
  first_cycle_steps: float,
  cycle_mult: float = 1,
  warmup_steps: int = 0,
) -> list[int]:
  """The steps below ``total_steps`` at which a new cycle begins (a restart).

  With the cycles of :func:`cosine_warm_restarts` (same arguments, placed
  exactly): step ``s`` is listed when ``η_s`` is the peak of a new cycle.
  Cycle ``i`` therefore ends after ``s_i`` updates, i.e. after the update at
  0-based count ``s_i - 1``: that is where to take a snapshot at a cycle's
  end (the end of the run is the last one, if a cycle ends there).

  Args:
    total_steps: the run's length in steps (>= 0).
    first_cycle_steps: ``T_0`` (>= 1), a number.
    cycle_mult: ``T_mult`` (>= 1), a number.
    warmup_steps: steps before the first cycle (>= 0).

  Returns:
    The restart steps, increasing, as Python integers. More than 10^7 of
    them (``first_cycle_steps=1`` over 2^31 steps) is a ``ValueError``: use
    :func:`cycle_position` in the loop instead.

  Example:
    >>> import optax_decoupled as odx
    >>> odx.restart_steps(3000, first_cycle_steps=200, cycle_mult=2)
    [200, 600, 1400]
    >>> odx.restart_steps(10, first_cycle_steps=2.5)
    [3, 5, 8]
  """
  for name, value in (
    ("total_steps", total_steps),
    ("first_cycle_steps", first_cycle_steps),
    ("cycle_mult", cycle_mult),
    ("warmup_steps", warmup_steps),
  ):
    _checks.check_number(name, value)
  _checks.check_step_count("total_steps", total_steps)
  _check_cycles(first_cycle_steps, cycle_mult, warmup_steps)
  plan = _plan(float(first_cycle_steps), float(cycle_mult))
  span = int(total_steps) - int(warmup_steps)  # steps after warmup
  starts = [int(s) for s in plan.starts[1:]]
  if plan.period is not None:  # the table repeats every period steps
    count = -(-max(span, 0) // plan.period) * plan.cycles_per_period
    if count > MAX_RESTART_STEPS:
      raise ValueError(
        f"first_cycle_steps={first_cycle_steps!r} restarts about {count} times in "
        f"total_steps={total_steps!r}, more than the {MAX_RESTART_STEPS} a list "
        "holds: use cycle_position(step, ...) in the loop instead"
      )
    starts = [int(s) for s in plan.starts]
    starts = [
      base + s
      for base in range(0, max(span, 0), plan.period)
      for s in starts
      if 0 < base + s
    ]
  return [int(warmup_steps) + s for s in starts if s < span]


def normalized_weight_decay(
  lambda_norm: Any, *, batch_size: Any, num_examples: Any, num_epochs: Any
) -> Any:
  r"""The paper's normalized weight decay, ``λ = λ_norm sqrt(b / (B T))``.

  ``b`` is ``batch_size``, ``B`` is ``num_examples`` (the training set size)
  and ``T`` is ``num_epochs``, the length of the run. Since ``B / b`` is the
  number of steps per epoch, ``b / (B T)`` is one over the steps in the run:
  a longer run gets a smaller per-step decay. For runs with warm restarts use
  :func:`restart_normalized_weight_decay`, which normalizes by each cycle.

  Args:
    lambda_norm: ``λ_norm`` (>= 0); the paper reports good values near 0.05.
    batch_size: ``b`` (> 0).
    num_examples: ``B`` (>= ``batch_size``).
    num_epochs: ``T`` (> 0), may be fractional.

  Returns:
    ``λ``, to pass as ``weight_decay`` to a decoupled optimizer.

  Example:
    >>> import optax_decoupled as odx
    >>> odx.normalized_weight_decay(
    ...     0.05, batch_size=128, num_examples=50_000, num_epochs=100)
    0.00025298...

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019, Appendix B.1.
  """
  for name, value in (
    ("lambda_norm", lambda_norm),
    ("batch_size", batch_size),
    ("num_examples", num_examples),
    ("num_epochs", num_epochs),
  ):
    _checks.check_number(name, value)  # a number: a schedule is refused
  _checks.check_non_negative("lambda_norm", lambda_norm)
  _checks.check_positive("batch_size", batch_size)
  _checks.check_positive("num_examples", num_examples)
  _checks.check_positive("num_epochs", num_epochs)
  _checks.check_not_greater("batch_size", batch_size, "num_examples", num_examples)
  return lambda_norm * (batch_size / (num_examples * num_epochs)) ** 0.5


def restart_normalized_weight_decay(
  lambda_norm: Any,
  *,
  first_cycle_steps: Any,
  cycle_mult: Any = 1,
  warmup_steps: Any = 0,
) -> optax.Schedule:
  r"""Normalized weight decay under warm restarts: ``λ_i = λ_norm / sqrt(T_i)``.

  The paper normalizes by the current cycle's length when restarting:
  ``λ_i = λ_norm sqrt(b / (B T_i))`` with ``T_i`` in epochs, and
  ``B T_i / b`` is the number of steps in cycle ``i``. Here cycles are counted
  in steps, ``T_i = first_cycle_steps * cycle_mult**i`` (the same cycles as
  :func:`cosine_warm_restarts` with the same arguments), so the value is
  ``λ_norm / sqrt(T_i)``. During warmup the first cycle's value is used. This
  is the authors' code's ``wd / sqrt(batches_per_epoch * T_e)``.

  Args:
    lambda_norm: ``λ_norm`` (>= 0).
    first_cycle_steps: ``T_0`` in steps (>= 1).
    cycle_mult: ``T_mult`` (>= 1).
    warmup_steps: steps before the first cycle starts (>= 0).

  Returns:
    An ``optax.Schedule`` of ``λ_t``, to pass as ``weight_decay``.

  Example:
    >>> import optax_decoupled as odx
    >>> lam = odx.restart_normalized_weight_decay(
    ...     0.05, first_cycle_steps=100, cycle_mult=4)
    >>> [round(float(lam(t)), 4) for t in (0, 99, 100, 499, 500)]
    [0.005, 0.005, 0.0025, 0.0025, 0.0013]
  """
  _checks.check_number("lambda_norm", lambda_norm)
  _checks.check_non_negative("lambda_norm", lambda_norm)
  _check_cycles(first_cycle_steps, cycle_mult, warmup_steps)

  def schedule(count):
    count = clamp_count(count)
    _, _, t_i = _locate(
      count - jnp.asarray(warmup_steps, jnp.int32), first_cycle_steps, cycle_mult
    )
    return jnp.asarray(lambda_norm, jnp.float32) * jax.lax.rsqrt(t_i)

  return schedule
