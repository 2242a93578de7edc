"""Restarts on the right step at every int32 count, and no value out of range.

Fractional ``first_cycle_steps`` (``cycle_mult=1``) are checked against exact
rational arithmetic at counts up to 2^31 - 1; ``cycle_mult`` near 1 (more
than 4096 cycles) against a float64 walk of the cycles
(``reference.restart_steps``), at the steps on either side of restarts drawn
at random. Draws whose float64 start lies within 1e-3 of an integer are
skipped: there the walk's own rounding decides.
"""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import optax_decoupled as odx

INT32_MAX = 2**31 - 1
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)


def _eta_at(eta, steps):
  return np.asarray(eta(jnp.asarray(steps, jnp.int32)), np.float64)


def _cosine(t_cur, t_i):
  return 0.5 * (1 + math.cos(math.pi * t_cur / t_i))


@pytest.mark.parametrize(
  "first, restart, not_restart",
  [(3906.25, 1_003_907, 1_003_906), (390.625, 500_000, 499_999)],
)
def test_known_fractional_restarts(first, restart, not_restart):
  """3906.25 · 257 = 1,003,906.25: the restart is at 1,003,907, not 1,003,906
  (η there is the new cycle's value at T_cur = 0.75, not the old one's end)."""
  eta = odx.cosine_warm_restarts(first)
  frac = Fraction(first)
  for step in (not_restart, restart):
    i = math.floor(step / frac)
    want = _cosine(float(step - i * frac), first)
    np.testing.assert_allclose(float(eta(step)), want, atol=1e-5, err_msg=str(step))


@SETTINGS
@given(
  numerator=st.integers(2, 2**20),
  log_denominator=st.integers(1, 10),
  cycle=st.integers(1, 2**31),
)
def test_fractional_first_cycle_restarts_exactly(numerator, log_denominator, cycle):
  """T_0 = n / 2^k (exact in float64): cycle i restarts at ceil(i T_0). η on
  either side of a restart drawn up to 2^31 equals exact rational arithmetic."""
  t0 = Fraction(numerator, 2**log_denominator)
  assume(t0 >= 2)
  last = int(INT32_MAX // t0)
  i = 1 + (cycle - 1) % max(last, 1)
  restart = math.ceil(i * t0)
  assume(1 <= restart <= INT32_MAX)
  eta = odx.cosine_warm_restarts(float(t0))
  got = _eta_at(eta, [restart - 1, restart])
  want = [
    _cosine(float(restart - 1 - (i - 1) * t0), float(t0)),
    _cosine(float(restart - i * t0), float(t0)),
  ]
  np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{t0} {i} {restart}")


@settings(max_examples=5, deadline=None, derandomize=True)
@given(
  first=st.integers(8, 400).map(lambda n: n / 4),
  mult_ppm=st.integers(1000, 3000),
  pick=st.floats(0, 1),
)
def test_cycle_mult_near_one_matches_a_float64_walk(first, mult_ppm, pick):
  """cycle_mult = 1 + 1000..3000 ppm: 5,000 to 15,000 cycles below 2^31, more
  than the 4096 the old table held. η on either side of a restart drawn at
  random equals reference.sgdr, the float64 walk of the cycles."""
  mult = 1 + mult_ppm * 1e-6
  starts = reference.restart_steps(first, mult, INT32_MAX)
  k = min(max(int(pick * len(starts)), 1), len(starts) - 1)
  restart = starts[k]
  # The walk's float64 start, to skip starts within its rounding of an integer.
  start, length = 0.0, first
  for _ in range(k):
    start, length = start + length, length * mult
  assume(abs(start - round(start)) > 1e-3)
  eta = odx.cosine_warm_restarts(first, mult)
  got = _eta_at(eta, [restart - 1, restart])
  want = [reference.sgdr(s, first, mult) for s in (restart - 1, restart)]
  np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"k={k} {restart}")


def test_too_many_cycles_is_refused_when_built():
  """(3, 1.0000001) has tens of millions of cycles below 2^31: refused."""
  with pytest.raises(ValueError, match="cycle_mult=1.0000001"):
    odx.cosine_warm_restarts(3, 1.0000001)
  with pytest.raises(ValueError, match="first_cycle_steps=100.1234567"):
    odx.cosine_warm_restarts(100.1234567)


@pytest.mark.parametrize("warmup", [0, 5])
def test_counts_outside_the_domain_stay_in_range(warmup):
  """η(-1) was -1.0; an int64 count of 2^31 wrapped to -2^31. Clamped now:
  the value stays in [min_value, max_value] (in [0, max_value] in warmup)."""
  lo, hi = 0.1, 0.9
  eta = odx.cosine_warm_restarts(10, 2, min_value=lo, max_value=hi, warmup_steps=warmup)
  floor = 0.0 if warmup else lo
  for count in [-1, -(2**31), np.int64(2**31), np.int64(2**40), 2**31, INT32_MAX]:
    value = float(eta(count))
    assert floor <= value <= hi, (count, value)
  assert float(eta(-1)) == float(eta(0))
  assert float(eta(np.int64(2**31))) == float(eta(INT32_MAX))


def test_int64_counts_under_x64_are_clamped():
  """With x64 on, an int64 count array beyond int32 is the last int32 step."""
  jax.config.update("jax_enable_x64", True)
  try:
    eta = odx.cosine_warm_restarts(10)
    big = jnp.asarray(2**31, jnp.int64)
    assert float(eta(big)) == float(eta(INT32_MAX)), float(eta(big))
    assert 0.0 <= float(eta(jnp.asarray(-5, jnp.int64))) <= 1.0
  finally:
    jax.config.update("jax_enable_x64", False)
