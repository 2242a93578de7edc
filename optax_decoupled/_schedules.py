"""SGDR's cosine schedule with warm restarts, and normalized weight decay."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_decoupled import _checks

_INT32_MAX = 2**31 - 1


_MAX_CYCLES = 4096  # largest table of cycles kept as constants


def _cycle_table(first: float, mult: float) -> tuple[np.ndarray, ...] | None:
  """All cycles that begin at or before step 2^31-1, for ``mult > 1``.

  Walks the cycles in float64 (Python integers when both are integers, so the
  table is exact) and returns, per cycle, the first integer step at or after
  its real-valued start (int32), how far that step lies past the start
  (float32, in [0, 1)) and the cycle's length (float32). None when there are
  more than ``_MAX_CYCLES`` cycles (``mult`` very close to 1).
  """
  integral = float(first).is_integer() and float(mult).is_integer()
  if integral:
    first, mult = int(first), int(mult)
  steps, offsets, lengths = [], [], []
  start, length = 0, first
  while start <= _INT32_MAX:
    if len(steps) == _MAX_CYCLES:
      return None
    # A start a rounding error above an integer (float64) is that integer.
    step = math.ceil(start - 1e-12 * start)
    steps.append(step)
    offsets.append(max(step - start, 0.0))
    lengths.append(length)
    start, length = start + length, length * mult
  return (
    np.asarray(steps, np.int32),
    np.asarray(offsets, np.float32),
    np.asarray(lengths, np.float32),
  )


def _is_integral(value: float | None) -> bool:
  return value is not None and float(value).is_integer() and value <= _INT32_MAX


def cycle_position(
  step: jax.Array, first_cycle_steps: Any, cycle_mult: Any
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Locates ``step`` (>= 0, counted from the first cycle's start) in SGDR.

  Returns ``(i, t_cur, t_i)``: the cycle index (int32), the steps since that
  cycle's start and the cycle's length (float32), with cycle ``i`` lasting
  ``first_cycle_steps * cycle_mult**i`` steps.

  When ``first_cycle_steps`` and ``cycle_mult`` are known when the schedule is
  built, the cycles are tabulated in float64 (exact integers when both are
  integers) and ``i`` is found by comparing the int32 step with each cycle's
  first step: restarts are exact for every int32 step, for a fractional
  ``cycle_mult`` too. Otherwise (traced arguments under
  ``optax.inject_hyperparams``, or ``cycle_mult`` so close to 1 that there are
  more than 4096 cycles) ``i`` is found from a float32 logarithm and corrected
  by one comparison each way against the cycle's start.
  """
  step = jnp.maximum(jnp.asarray(step, jnp.int32), 0)
  first = _checks.concrete_value(first_cycle_steps)
  mult = _checks.concrete_value(cycle_mult)
  if mult == 1 and _is_integral(first):
    first = int(first)
    i = step // first
    t_cur = step - i * first
    return i, t_cur.astype(jnp.float32), jnp.float32(first)
  table = (
    None if first is None or mult is None or mult == 1 else _cycle_table(first, mult)
  )
  if table is not None:
    starts, offsets, lengths = (jnp.asarray(a) for a in table)
    i = jnp.searchsorted(starts, step, side="right").astype(jnp.int32) - 1
    t_cur = (step - starts[i]).astype(jnp.float32) + offsets[i]
    return i, t_cur, lengths[i]
  return _float_cycle_position(step, first_cycle_steps, cycle_mult)


def _float_cycle_position(step, first_cycle_steps, cycle_mult):
  """``cycle_position`` in float32, for arguments not known when built."""
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
  _checks.check_non_negative("warmup_steps", warmup_steps)


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
  ``cycle_mult`` alike: a cycle with a real-valued start restarts at the first
  step at or after it, as when the cycles are walked one by one. Traced values
  (``optax.inject_hyperparams`` without ``static_args``) are located in
  float32: exact for integer values up to about 2^22 steps.

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
      first cycle (>= 0).

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
    count = jnp.asarray(count, jnp.int32)
    warmup = jnp.asarray(warmup_steps, jnp.int32)
    lo = jnp.asarray(min_value, jnp.float32)
    hi = jnp.asarray(max_value, jnp.float32)
    i, t_cur, t_i = cycle_position(count - warmup, first_cycle_steps, cycle_mult)
    decay = jnp.asarray(cycle_decay, jnp.float32) ** i.astype(jnp.float32)
    peak = jnp.maximum(hi * decay, lo)
    cosine = lo + 0.5 * (peak - lo) * (1 + jnp.cos(jnp.pi * t_cur / t_i))
    ramp = hi * count.astype(jnp.float32) / jnp.maximum(warmup, 1).astype(jnp.float32)
    return jnp.where(count < warmup, ramp, cosine)

  schedule.schedule_peak = max_value  # η_max, for corrected decay
  return schedule


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
  _checks.check_non_negative("lambda_norm", lambda_norm)
  _check_cycles(first_cycle_steps, cycle_mult, warmup_steps)

  def schedule(count):
    count = jnp.asarray(count, jnp.int32)
    _, _, t_i = cycle_position(
      count - jnp.asarray(warmup_steps, jnp.int32), first_cycle_steps, cycle_mult
    )
    return jnp.asarray(lambda_norm, jnp.float32) * jax.lax.rsqrt(t_i)

  return schedule
