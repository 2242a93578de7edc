"""Argument checks run when an optimizer or schedule is built.

Each check names the argument and its value. Values that are tracers (under
``jax.jit``, ``jax.vmap`` or ``optax.inject_hyperparams``) or schedules are not
checked: their value is unknown when the transformation is built.

A value of the wrong kind (a string, a complex number, a flag that is not a
bool, a dtype that is not one) raises :class:`ArgumentTypeError`, a
``TypeError`` that is also a ``ValueError`` (what the library raised before),
as NumPy's ``AxisError`` is both. A number out of range raises ``ValueError``.
"""

import math
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

#: Largest finite float32: every hyperparameter is used in float32 (at least).
FLOAT32_MAX = float(np.finfo(np.float32).max)
INT32_MAX = 2**31 - 1


class ArgumentTypeError(TypeError, ValueError):
  """An argument of the wrong kind (both a ``TypeError`` and a ``ValueError``)."""


def is_unknown(value: Any) -> bool:
  """True for values known only later: tracers and schedules (callables)."""
  return callable(value) or isinstance(value, jax.core.Tracer)


def _real_dtype(dtype: Any) -> bool:
  # jnp.issubdtype knows bfloat16 and the float8 types, np.issubdtype does not.
  return jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)


def concrete_value(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or None if it is not a known real.

  None for tracers, callables (schedules), bools, non-scalar arrays and
  anything that is not a real number (strings, complex numbers).
  """
  if is_unknown(value) or isinstance(value, bool | np.bool_):
    return None
  try:
    array = np.asarray(value)
  except (TypeError, ValueError, OverflowError):
    return None
  if array.ndim != 0 or not _real_dtype(array.dtype):
    return None
  return float(array)


def _fail(name: str, value: Any, requirement: str) -> None:
  raise ValueError(f"{name}={value!r} must be {requirement}")


def check_finite_number(name: str, value: Any) -> float | None:
  """Checks a known ``value`` is a real scalar, finite in float32; returns it.

  Returns None for tracers and schedules (not checked).
  """
  if is_unknown(value):
    return None
  number = concrete_value(value)
  if number is None:
    kind = "not complex" if np.iscomplexobj(value) else "not " + type(value).__name__
    raise ArgumentTypeError(
      f"{name}={value!r} must be a real scalar or a schedule ({kind})"
    )
  if not math.isfinite(number):
    _fail(name, value, "finite")
  if abs(number) > FLOAT32_MAX:
    _fail(name, value, f"finite in float32 (|value| <= {FLOAT32_MAX:.4g})")
  return number


def check_number(name: str, value: Any) -> float | None:
  """As :func:`check_finite_number`, but a schedule is refused too."""
  if callable(value) and not isinstance(value, jax.core.Tracer):
    raise ArgumentTypeError(f"{name}={value!r} must be a number, not a schedule")
  return check_finite_number(name, value)


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


def check_step_count(name: str, value: Any) -> None:
  """Checks a number of steps: an integer in ``[0, 2^31 - 1]`` (int32)."""
  number = check_finite_number(name, value)
  if number is not None and not (number.is_integer() and 0 <= number <= INT32_MAX):
    _fail(name, value, f"a whole number of steps in [0, {INT32_MAX}] (int32)")


def check_unit_interval(name: str, value: Any) -> None:
  """Checks ``0 <= value < 1`` (a decay rate such as ``b1`` or momentum).

  In float32, the narrowest dtype the step is computed in: ``0.99999999``
  rounds to 1.0 there and is refused.
  """
  number = check_finite_number(name, value)
  if number is None:
    return
  hint = ""
  if number == 1 and getattr(value, "dtype", None) is not None:
    hint = (
      " (it rounds to 1.0 in its dtype; under optax.inject_hyperparams on "
      "low-precision params pass hyperparam_dtype=jnp.float32)"
    )
  if not 0 <= number < 1:
    _fail(name, value, "in [0, 1)" + hint)
  if np.float32(number) >= 1:
    _fail(
      name,
      value,
      "< 1 in float32, the dtype the step is computed in (it rounds to 1.0)",
    )


def check_not_greater(name: str, value: Any, other_name: str, other: Any) -> None:
  """Checks ``value <= other`` when both are known."""
  a, b = concrete_value(value), concrete_value(other)
  if a is not None and b is not None and a > b:
    raise ValueError(f"{name}={value!r} must be <= {other_name}={other!r}")


def check_flag(name: str, value: Any) -> None:
  """Checks a flag is ``True`` or ``False`` (a string such as 'no' is truthy)."""
  if not isinstance(value, bool | np.bool_):
    raise ArgumentTypeError(f"{name}={value!r} must be True or False")


def check_state_dtype(name: str, value: Any) -> None:
  """Checks a storage dtype: None, or a floating or complex dtype."""
  if value is None:
    return
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    raise ArgumentTypeError(f"{name}={value!r} is not a dtype") from None
  if not jnp.issubdtype(dtype, jnp.inexact):
    raise ArgumentTypeError(
      f"{name}={value!r} must be a floating (or complex) dtype, not {dtype.name}"
    )


def check_transformation(name: str, value: Any) -> None:
  """Checks an ``optax.GradientTransformation`` (anything with init and update)."""
  if not (
    callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))
  ):
    raise ArgumentTypeError(f"{name}={value!r} must be an optax.GradientTransformation")
