"""Argument checks run when an optimizer or schedule is built.

Each check names the argument and its value. Values that are tracers (under
``jax.jit``, ``jax.vmap`` or ``optax.inject_hyperparams``) or schedules are not
checked: their value is unknown when the transformation is built.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def concrete_value(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or None if it is not known yet.

  None for tracers, callables (schedules) and non-scalar arrays.
  """
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  try:
    array = np.asarray(value)
  except (TypeError, ValueError):
    return None
  if array.ndim != 0 or not np.issubdtype(array.dtype, np.number):
    return None
  return float(array)


def _fail(name: str, value: Any, requirement: str) -> None:
  raise ValueError(f"{name}={value!r} must be {requirement}")


def check_finite_number(name: str, value: Any) -> float | None:
  """Checks a known ``value`` is a finite real scalar; returns it (or None)."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  number = None if isinstance(value, bool) else concrete_value(value)
  if number is None:
    _fail(name, value, "a real scalar or a schedule")
  if not math.isfinite(number):
    _fail(name, value, "finite")
  return number


def check_non_negative(name: str, value: Any) -> None:
  number = check_finite_number(name, value)
  if number is not None and number < 0:
    _fail(name, value, ">= 0")


def check_positive(name: str, value: Any) -> None:
  number = check_finite_number(name, value)
  if number is not None and number <= 0:
    _fail(name, value, "> 0")


def check_at_least(name: str, value: Any, bound: float) -> None:
  number = check_finite_number(name, value)
  if number is not None and number < bound:
    _fail(name, value, f">= {bound}")


def check_unit_interval(name: str, value: Any) -> None:
  """Checks ``0 <= value < 1`` (a decay rate such as ``b1`` or momentum)."""
  number = check_finite_number(name, value)
  if number is not None and not 0 <= number < 1:
    _fail(name, value, "in [0, 1)")


def check_not_greater(name: str, value: Any, other_name: str, other: Any) -> None:
  """Checks ``value <= other`` when both are known."""
  a, b = concrete_value(value), concrete_value(other)
  if a is not None and b is not None and a > b:
    raise ValueError(f"{name}={value!r} must be <= {other_name}={other!r}")
