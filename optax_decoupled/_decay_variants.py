"""Cautious and corrected decoupled weight decay: the pieces the decay uses.

Cautious decay (Chen et al. 2025) decays an entry only where the optimizer's
step already moves the weight toward zero. Corrected decay (Defazio 2025,
"AdamC") multiplies the decay once more by ``η_t / η_max``, which needs the
peak ``η_max`` of the schedule multiplier: :func:`with_peak` attaches it to a
schedule, :func:`cosine_warm_restarts` attaches its ``max_value``, and
:func:`schedule_peak_of` finds it when an optimizer is built.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_decoupled import _checks

#: Name of the attribute that carries a schedule's peak ``η_max``.
PEAK_ATTRIBUTE = "schedule_peak"


def check_flag(name: str, value: Any) -> None:
  """Raises TypeError unless ``value`` is a Python (or NumPy) bool."""
  if not isinstance(value, bool) and type(value).__name__ != "bool_":
    raise TypeError(f"{name}={value!r} must be a bool (True or False)")


def with_peak(schedule: optax.Schedule, peak: Any) -> optax.Schedule:
  r"""Marks ``schedule`` with its peak value ``η_max``, for corrected decay.

  ``corrected=True`` scales the decay by ``η_t / η_max`` and needs the peak of
  the schedule multiplier ``η_t``. :func:`cosine_warm_restarts` is marked
  already (with its ``max_value``); mark any other schedule with this, or pass
  ``schedule_peak=`` to the optimizer.

  Args:
    schedule: a schedule ``η_t``.
    peak: its largest value over the run (> 0).

  Returns:
    A schedule with the same values that carries ``peak``.

  Example:
    >>> import optax, optax_decoupled as odx
    >>> eta = odx.with_peak(optax.cosine_decay_schedule(2.0, 100), 2.0)
    >>> tx = odx.adamw(1e-3, weight_decay=1e-4, schedule_multiplier=eta,
    ...                corrected=True)
  """
  if not callable(schedule):
    raise TypeError(f"schedule={schedule!r} must be a callable of the step")
  _checks.check_positive("peak", peak)

  def marked(count):
    return schedule(count)

  setattr(marked, PEAK_ATTRIBUTE, peak)
  return marked


def schedule_peak_of(
  schedule_multiplier: Any, schedule_peak: Any, *, corrected: bool
) -> Any:
  """The peak ``η_max`` that corrected decay divides by; None if not corrected.

  In order: ``schedule_peak`` when given; 1 when there is no multiplier; the
  peak a schedule carries (:func:`with_peak`, :func:`cosine_warm_restarts`);
  the multiplier itself when it is a Python or NumPy number (a constant is its
  own peak). Anything else is a ValueError, since the correction would be
  silently wrong: a schedule that carries no peak, or a ``jax.Array`` or
  tracer, which is what ``optax.inject_hyperparams`` passes for a schedule
  (its value at the step).
  """
  if not corrected:
    return None
  if schedule_peak is not None:
    _checks.check_positive("schedule_peak", schedule_peak)
    return schedule_peak
  if schedule_multiplier is None:
    return 1.0
  if callable(schedule_multiplier):
    peak = getattr(schedule_multiplier, PEAK_ATTRIBUTE, None)
    if peak is not None:
      return peak
  elif isinstance(schedule_multiplier, (int, float, np.number, np.ndarray)):
    # A Python or NumPy number is constant. A jax.Array is not taken for one:
    # optax.inject_hyperparams passes a schedule's value at the step as one.
    if _checks.concrete_value(schedule_multiplier) is not None:
      return schedule_multiplier
  raise ValueError(
    f"corrected=True needs the peak η_max of {schedule_multiplier=}: pass "
    "schedule_peak=, or mark the schedule with odx.with_peak(schedule, peak) "
    "(odx.cosine_warm_restarts is marked with its max_value)"
  )


def correction(eta_t: jax.Array, peak: Any) -> jax.Array:
  """``η_t / η_max`` in float32; 0 when ``η_max`` is 0 (then ``η_t`` is 0)."""
  peak = jnp.asarray(peak, jnp.float32)
  safe = jnp.where(peak > 0, peak, 1.0)
  return jnp.where(peak > 0, eta_t / safe, 0.0)


def cautious_gate(update: jax.Array, param: jax.Array) -> jax.Array:
  """True where ``update · param <= 0``: the step moves the weight toward zero.

  For complex leaves the product is the real inner product of the two
  complex numbers, ``Re(u conj(θ))``.

  Compares signs, not the product, so a bf16 product cannot overflow or
  underflow to a wrong answer; a zero update or weight counts as aligned (the
  entry is decayed), as in optax.contrib's ``add_cautious_weight_decay``.
  """
  if jnp.iscomplexobj(update) or jnp.iscomplexobj(param):
    # θ moves toward zero when Re(u · conj(θ)) = Re u Re θ + Im u Im θ <= 0.
    u, p = jnp.asarray(update), jnp.asarray(param)
    return jnp.real(u) * jnp.real(p) + jnp.imag(u) * jnp.imag(p) <= 0
  return jnp.sign(update) * jnp.sign(param).astype(update.dtype) <= 0
