"""Compensated updates on low-precision parameters (Kahan, stochastic rounding).

The references are independent of the library: the float64 closed form
``θ_0 ∏(1 - η_t λ)`` of the paper's decay, exact rational arithmetic
(``fractions``) for single steps, the float64 transcriptions of Algorithms 1
and 2 in ``reference.py``, and z-tests of stochastic rounding's mean (each
with a false-failure rate below 1e-6). Every test here fails when the
compensation is switched off or its sign is flipped.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import optax_decoupled as odx
from tests import reference

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}
#: A z-score bound: |z| > 5 happens with probability 5.7e-7 under the null.
Z = 5.0


def ulps(got, exact, dtype):
  """|got - exact| in units of ``dtype``'s spacing at ``exact``."""
  exact = np.asarray(exact, np.float64)
  rounded = np.abs(exact).astype(dtype)
  spacing = np.nextafter(rounded, np.asarray(np.inf, dtype)).astype(np.float64)
  spacing = spacing - rounded.astype(np.float64)
  return np.abs(np.asarray(got, np.float64) - exact) / spacing


def run_zero_grads(tx, params, steps):
  """``steps`` steps of ``tx`` with zero gradients, in one scan."""

  def step(carry, _):
    p, state = carry
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, p), state, p)
    return (optax.apply_updates(p, updates), state), None

  return jax.lax.scan(step, (params, tx.init(params)), None, length=steps)[0][0]


# ------------------------------------------------- the paper's decay, kept


T = 10_000
#: λ from 1e-6 to 1e-2; float16 stops at 1e-3, where θ_T is still a normal
#: float16 (at 1e-2 it is 1e-22 θ_0: below float16's range).
LAMBDAS = {
  "bfloat16": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
  "float16": [1e-6, 1e-5, 1e-4, 1e-3],
}
THETA0 = np.concatenate([np.linspace(0.5, 2.0, 48), -np.linspace(0.01, 300.0, 16)])


def _decay_runs(factory, dtype, compensation, lams):
  """θ_T for every λ (vmapped: one compile), from THETA0 in ``dtype``."""
  eta = odx.cosine_warm_restarts(T)

  def one(lam):
    tx = factory(
      1e-3, weight_decay=lam, schedule_multiplier=eta, compensation=compensation
    )
    return run_zero_grads(tx, {"w": jnp.asarray(THETA0, dtype)}, T)["w"]

  out = jax.jit(jax.vmap(one))(jnp.asarray(lams, jnp.float32))
  return np.asarray(out.astype(jnp.float32), np.float64)


def _closed_form(lams):
  """θ_0 ∏(1 - η_t λ) in float64, η_t the cosine over T steps."""
  t = np.arange(T)
  eta = 0.5 * (1 + np.cos(np.pi * t / T))
  theta0 = np.asarray(THETA0)
  return np.stack([theta0 * np.prod(1 - eta * lam) for lam in lams])


@pytest.mark.parametrize("factory", [odx.adamw, odx.sgdw], ids=["adamw", "sgdw"])
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_default_keeps_the_decay_within_one_ulp(factory, dtype_name):
  """Zero gradients, 10,000 steps, a cosine η_t: with the default (Kahan)
  every weight ends within one ulp of θ_0 ∏(1 - η_t λ); without compensation
  the small λ are lost (many ulps off)."""
  dtype, lams = DTYPES[dtype_name], LAMBDAS[dtype_name]
  theta0 = np.asarray(jnp.asarray(THETA0, dtype).astype(jnp.float32), np.float64)
  exact = _closed_form(lams) * (theta0 / THETA0)  # from the rounded θ_0
  kahan = ulps(_decay_runs(factory, dtype, "auto", lams), exact, dtype)
  assert kahan.max() <= 1.0, dict(zip(lams, kahan.max(axis=1), strict=True))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # compensation=None warns (tested below)
    plain = ulps(_decay_runs(factory, dtype, None, lams), exact, dtype)
  assert plain.max(axis=1)[1] > 10, dict(zip(lams, plain.max(axis=1), strict=True))


def test_stochastic_rounding_keeps_the_decay_on_average():
  """Stochastic rounding over 64 seeds: the mean of θ_T / θ_0 is the closed
  form's ratio (a z-test); without compensation it stays 1."""
  steps, lam = 2000, 1e-4
  ratio = np.prod(1 - lam * 0.5 * (1 + np.cos(np.pi * np.arange(steps) / steps)))
  theta0 = jnp.linspace(0.5, 2.0, 64).astype(jnp.bfloat16)

  def one(seed):
    tx = odx.adamw(
      1e-3,
      weight_decay=lam,
      schedule_multiplier=odx.cosine_warm_restarts(steps),
      compensation="stochastic",
      seed=seed,
    )
    return run_zero_grads(tx, {"w": theta0}, steps)["w"]

  out = jax.jit(jax.vmap(one))(jnp.arange(64))
  ratios = np.asarray(out.astype(jnp.float32), np.float64) / np.asarray(
    theta0.astype(jnp.float32), np.float64
  )
  sem = ratios.std(ddof=1) / np.sqrt(ratios.size)
  assert abs(ratios.mean() - ratio) < Z * sem, (ratios.mean(), ratio, sem)
  assert np.ptp(ratios) > 0  # the seeds differ
  assert abs(1.0 - ratio) > 100 * sem  # what no compensation would give is far


# ------------------------------------------------- single steps, exactly


def _spacing(x, dtype):
  """The gap from |x| to the next representable value of ``dtype``."""
  a = np.abs(np.asarray(x, dtype))
  return Fraction(float(np.nextafter(a, np.asarray(np.inf, dtype)))) - Fraction(
    float(a)
  )


def _round_exact(q: Fraction, dtype) -> float:
  """``q`` rounded to nearest (ties to even) in ``dtype``, exactly."""
  guess = np.asarray(float(q), np.float64).astype(dtype)
  inf = np.asarray(np.inf, dtype)
  candidates = [
    np.nextafter(guess, -inf),
    guess,
    np.nextafter(guess, inf),
  ]

  def key(c):
    even = int(np.asarray(c, dtype).view(np.uint16)) % 2
    return (abs(Fraction(float(c)) - q), even)

  return float(min(candidates, key=key))


def _random_steps(dtype, n, rng):
  """Parameters over the dtype's range, steps from 2^-30 |θ| to 4 |θ| of
  either sign (many cross zero), residuals within an ulp. Every value stays
  a normal float32: XLA:CPU flushes float32 subnormals to zero."""
  info = ml_dtypes.finfo(dtype)
  lowest = max(np.log2(float(info.smallest_normal)) + 12, -126 + 34)
  exponents = rng.uniform(lowest, np.log2(float(info.max)) - 3, n)
  p = (rng.choice([-1, 1], n) * 2.0**exponents).astype(dtype)
  pf = p.astype(np.float64)
  u = (rng.choice([-1, 1], n) * np.abs(pf) * 2.0 ** rng.uniform(-30, 2, n)).astype(
    np.float32
  )
  spacing = np.array([float(_spacing(x, dtype)) for x in p])
  c = (rng.uniform(-0.5, 0.5, n) * spacing).astype(dtype)
  return p, u, c


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_one_kahan_step_exactly(dtype_name):
  """2,000 random steps, one each: ``apply_updates`` lands on θ' with
  θ' + c' = θ + u + c (exact rationals, to the rounding of c' and of the
  float32 sum), and θ' is θ + u + c rounded to nearest whenever θ' and θ are
  within a factor of two (then θ' - θ is representable)."""
  dtype = DTYPES[dtype_name]
  rng = np.random.default_rng(7)
  p, u, c = _random_steps(dtype, 2000, rng)
  scale = Fraction(2) ** int(ml_dtypes.finfo(dtype).nmant)
  tx = odx.compensate_rounding()
  state = tx.init({"w": jnp.asarray(p)})
  residual = (c.astype(np.float64) * float(scale)).astype(dtype)
  state = state._replace(residual={"w": jnp.asarray(residual)})
  updates, new_state = jax.jit(tx.update)(
    {"w": jnp.asarray(u)}, state, {"w": jnp.asarray(p)}
  )
  assert updates["w"].dtype == dtype
  new = np.asarray(optax.apply_updates({"w": jnp.asarray(p)}, updates)["w"])
  c_new = np.asarray(new_state.residual["w"])
  near = 0
  for i in range(len(p)):
    wanted = Fraction(float(p[i])) + Fraction(float(u[i])) + Fraction(float(c[i]))
    y32 = Fraction(float(np.float32(u[i]) + np.float32(c[i])))
    tolerance = _spacing(c_new[i], dtype) / scale + abs(y32) * Fraction(1, 2**22)
    held = Fraction(float(new[i])) + Fraction(float(c_new[i])) / scale
    assert abs(held - wanted) <= tolerance, (i, p[i], u[i], c[i], new[i], c_new[i])
    exact_sum = Fraction(float(p[i])) + y32
    if np.sign(new[i]) == np.sign(p[i]) and 0.5 <= abs(new[i] / p[i]) <= 2:
      near += 1
      # Rounded to nearest, but for sums within float32's rounding of a tie.
      off = abs(Fraction(float(new[i])) - exact_sum)
      half = abs(Fraction(_round_exact(exact_sum, dtype)) - exact_sum)
      assert off <= half + abs(exact_sum) * Fraction(1, 2**24), i
  assert near > 1500  # most steps are of that kind; the rest cross zero


def test_nnx_optimizer_matches_apply_updates_bitwise():
  """An NNX model in bfloat16 trained through ``nnx.Optimizer`` ends on the
  same bits as the functional loop with ``optax.apply_updates``."""
  from flax import nnx

  def model():
    return nnx.Linear(
      6, 3, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)
    )

  x = jax.random.normal(jax.random.key(1), (8, 6)).astype(jnp.bfloat16)

  def loss(m):
    return jnp.mean(m(x).astype(jnp.float32) ** 2)

  tx = odx.adamw(1e-4, weight_decay=1e-4)
  m = model()
  opt = nnx.Optimizer(m, tx, wrt=nnx.Param)
  for _ in range(20):
    opt.update(m, nnx.grad(loss)(m))

  m2 = model()
  graphdef, params = nnx.split(m2, nnx.Param)
  state = tx.init(params)
  for _ in range(20):
    grads = nnx.grad(loss)(nnx.merge(graphdef, params))
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for a, b in zip(
    jax.tree.leaves(nnx.state(m, nnx.Param)), jax.tree.leaves(params), strict=True
  ):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(m.kernel[...]), np.asarray(model().kernel[...]))


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_stochastic_rounding_is_unbiased(dtype_name):
  """θ + u for u at fractions 0.01 .. 0.9 of the gap above θ (and below), and
  steps across zero: over 4,096 seeds the mean of apply_updates' result is
  θ + u (a z-test per entry), and both neighbours occur. A step across zero
  to a larger magnitude (1e-3 -> -2.3e-3) can only land on every other value
  of the grid there (θ + s is a tie for every step s): it lands within two
  ulps of θ + u, and on average within one."""
  dtype = DTYPES[dtype_name]
  p = np.array([1.0, 1.0, 1.0, -3.0, 0.001, 0.5, 0.5, 0.25, 1e-3], dtype)
  gap = np.array([float(_spacing(x, dtype)) for x in p])
  u = (np.array([0.01, 0.25, 0.9, 0.5, 0.3, -0.6, 0, 0, 0]) * gap).astype(np.float32)
  u[-3:] = [-0.65, -0.3, -3.3e-3]  # across zero: to -0.15, -0.05 and -2.3e-3
  params = {"w": jnp.asarray(p)}

  def one(seed):
    tx = odx.compensate_rounding("stochastic", seed=seed)
    updates, _ = tx.update({"w": jnp.asarray(u)}, tx.init(params), params)
    return optax.apply_updates(params, updates)["w"]

  n = 4096
  out = np.asarray(
    jax.jit(jax.vmap(one))(jnp.arange(n)).astype(jnp.float32), np.float64
  )
  exact = p.astype(np.float64) + u.astype(np.float64)
  lo, hi = out[:, :-1].min(axis=0), out[:, :-1].max(axis=0)
  assert np.all(hi > lo)  # both neighbours occur
  f = (exact[:-1] - lo) / (hi - lo)
  sem = (hi - lo) * np.sqrt(f * (1 - f) / n)
  assert np.all(np.abs(out[:, :-1].mean(axis=0) - exact[:-1]) < Z * sem)
  assert ulps(out[:, -1], exact[-1], dtype).max() <= 2
  assert ulps(out[:, -1].mean(), exact[-1], dtype) <= 1


def test_stochastic_steps_across_zero_past_the_weight():
  """Steps u = -(1.2 .. 3) θ on small bfloat16 weights, where θ + u's
  neighbours are often not θ plus a representable step: over 4,096 seeds the
  mean lands on θ + u (z-test) wherever the result is random, and within one
  ulp where every step lands on a tie (then it cannot be random). The coin of
  that case once reused the rounding's bits and was biased by up to an ulp."""
  theta = np.linspace(0.5e-3, 1e-3, 64).astype(jnp.bfloat16)
  u = (-np.linspace(1.2, 3.0, 64) * theta.astype(np.float64)).astype(np.float32)
  u = np.append(u, np.float32(2.5e-3))
  theta = np.append(theta, np.asarray(-1e-3, jnp.bfloat16))
  params = {"w": jnp.asarray(theta)}

  def one(seed):
    tx = odx.compensate_rounding("stochastic", seed=seed)
    updates, _ = tx.update({"w": jnp.asarray(u)}, tx.init(params), params)
    return optax.apply_updates(params, updates)["w"]

  n = 4096
  out = np.asarray(
    jax.jit(jax.vmap(one))(jnp.arange(n)).astype(jnp.float32), np.float64
  )
  exact = theta.astype(np.float64) + u.astype(np.float64)
  sem = out.std(axis=0, ddof=1) / np.sqrt(n)
  random = sem > 0
  assert random.sum() > 50 and random[-1]
  z = (out.mean(axis=0) - exact)[random] / sem[random]
  assert np.abs(z).max() < Z, z
  assert ulps(out.mean(axis=0)[~random], exact[~random], jnp.bfloat16).max() <= 1


def test_kahan_keeps_infinities_and_overflow_as_without_compensation():
  """±inf weights stay ±inf (inf - inf made them NaN), an infinite update
  gives inf, and a float16 weight pushed past its largest value saturates as
  apply_updates does without compensation, instead of turning into NaN."""
  p = {"w": jnp.array([-jnp.inf, jnp.inf, 1.0, 2.0], jnp.bfloat16)}
  u = {"w": jnp.array([0.0, 0.0, jnp.inf, 1e-3], jnp.float32)}
  tx = odx.compensate_rounding()
  updates, state = tx.update(u, tx.init(p), p)
  got = np.asarray(optax.apply_updates(p, updates)["w"].astype(jnp.float32))
  np.testing.assert_array_equal(got[:3], [-np.inf, np.inf, np.inf])
  assert np.isfinite(np.asarray(state.residual["w"].astype(jnp.float32))[:2]).all()
  big = {"w": jnp.full(3, 65504.0, jnp.float16)}
  push = {"w": jnp.full(3, 4.0, jnp.float16)}
  for compensation in ("auto", None):
    tx = odx.compensate_rounding(compensation)
    q, s = big, tx.init(big)
    for _ in range(12):
      updates, s = tx.update(push, s, q)
      q = optax.apply_updates(q, updates)
    assert np.asarray(q["w"]).tolist() == [65504.0] * 3, (compensation, q)


def test_float32_params_with_bf16_gradients_are_untouched():
  """A float32 parameter with a bfloat16 gradient: the default compensation
  returns the same updates, in the same dtype, as compensation=None."""
  params = {"w": jnp.linspace(-1, 1, 8, dtype=jnp.float32)}
  grads = {"w": jnp.linspace(0.5, -0.5, 8).astype(jnp.bfloat16)}
  outs = []
  for compensation in ("auto", None):
    tx = odx.adamw(1e-2, weight_decay=1e-3, compensation=compensation)
    updates, _ = tx.update(grads, tx.init(params), params)
    outs.append(updates["w"])
  assert outs[0].dtype == outs[1].dtype
  np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(outs[1]))


def test_float32_float64_and_complex_leaves_are_untouched():
  """The default compensation changes nothing, bitwise, on float32 and
  complex leaves: the same parameters as compensation=None after 5 steps."""
  rng = np.random.default_rng(3)
  params = {
    "f": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
    "c": jnp.asarray(rng.normal(size=3) + 1j * rng.normal(size=3), jnp.complex64),
  }
  grads = [jax.tree.map(lambda x, k=k: x * (k + 0.5), params) for k in range(5)]
  outs = []
  for compensation in ("auto", None):
    for factory in (odx.adamw, odx.sgdw):
      tx = factory(1e-2, weight_decay=1e-3, compensation=compensation)
      p, state = params, tx.init(params)
      for g in grads:
        updates, state = tx.update(g, state, p)
        assert all(
          u.dtype == q.dtype
          for u, q in zip(jax.tree.leaves(updates), jax.tree.leaves(p), strict=True)
        )
        p = optax.apply_updates(p, updates)
      outs.append(p)
  for a, b in zip(outs[:2], outs[2:], strict=True):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  state = odx.adamw(1e-3).init(params)
  assert jax.tree.leaves(state[-1].residual) == []  # no buffer for them


def test_kahan_on_float32_keeps_steps_below_its_ulp():
  """compensation="kahan" also compensates float32 leaves: 1000 steps of
  1e-9 on θ = 1 (below float32's half ulp, 6e-8) add up to 1e-6."""
  tx = optax.chain(optax.sgd(1.0), odx.compensate_rounding("kahan"))
  params = {"w": jnp.ones(4, jnp.float32)}

  def run(tx):
    def step(carry, _):
      p, s = carry
      updates, s = tx.update({"w": jnp.full(4, 1e-9, jnp.float32)}, s, p)
      return (optax.apply_updates(p, updates), s), None

    return jax.lax.scan(step, (params, tx.init(params)), None, length=1000)[0][0]["w"]

  np.testing.assert_allclose(np.asarray(run(tx), np.float64), 1 - 1e-6, rtol=1e-7)
  auto = optax.chain(optax.sgd(1.0), odx.compensate_rounding("auto"))
  np.testing.assert_array_equal(np.asarray(run(auto)), 1.0)  # float32 untouched


# ------------------------------------------------- a real problem, in bf16


def _problem(rng):
  """A least-squares problem in float64, and its fixed starting point."""
  a = rng.normal(size=(32, 16)) / 4
  b = rng.normal(size=32)
  theta0 = {"w": rng.normal(size=(16,)), "s": rng.normal(size=(4, 4))}
  return a, b, theta0


def _grads(a, b):
  """The gradient of ½|A w - b|² + ½|s - 1|², at any params (float64 or jnp)."""

  def grad(theta):
    w = theta["w"]
    return {"w": a.T @ (a @ w - b), "s": theta["s"] - 1.0}

  return grad


FEATURES = {
  "plain": ({}, {}),
  "mask": ({"mask": {"w": True, "s": False}}, {"mask": {"w": True, "s": False}}),
  "mask_by_ndim": ({"mask": odx.mask_by_ndim(2)}, {"mask": {"w": False, "s": True}}),
  "cautious": ({"cautious": True}, {"cautious": True}),
  "corrected": ({"corrected": True}, {"peak": 1.0}),
  "nesterov": ({"nesterov": True}, {"nesterov": True}),
}


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("optimizer", ["adamw", "sgdw"])
def test_bf16_training_follows_float64(optimizer, feature):
  """1,000 steps of a least-squares problem, parameters in bfloat16 (moments
  in float32), steps of ~1e-4 |θ|: the total change θ_T - θ_0 is within 2 %
  of float64's Algorithm 1/2 (run on its own float64 trajectory) with Kahan;
  without compensation most of it is lost."""
  rng = np.random.default_rng(11)
  a, b, theta0 = _problem(rng)
  kwargs, ref_kwargs = FEATURES[feature]
  steps, lam = 1000, 3e-4
  eta = odx.cosine_warm_restarts(steps)
  grad64 = _grads(a, b)
  p0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), theta0)
  start = jax.tree.map(lambda x: np.asarray(x.astype(jnp.float32), np.float64), p0)
  schedule = lambda s: 0.5 * (1 + np.cos(np.pi * s / steps))  # noqa: E731
  if optimizer == "adamw":
    lr, extra = 1e-4, {"mu_dtype": jnp.float32, "nu_dtype": jnp.float32}
    ref = reference.adam(
      start, [grad64] * steps, lr, lam=lam, eta=schedule, **ref_kwargs
    )
    factory = odx.adamw
  else:
    lr, extra = 2e-5, {}
    ref = reference.sgd(
      start, [grad64] * steps, lr, lam=lam, eta=schedule, **ref_kwargs
    )
    factory = odx.sgdw
  want = {k: ref[-1][k] - start[k] for k in start}
  a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

  def grad(p):
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p)
    g = {"w": a32.T @ (a32 @ p32["w"] - b32), "s": p32["s"] - 1.0}
    return jax.tree.map(lambda x: x.astype(jnp.bfloat16), g)

  def total_change(compensation):
    tx = factory(
      lr,
      weight_decay=lam,
      schedule_multiplier=eta,
      compensation=compensation,
      **kwargs,
      **extra,
    )

    def step(carry, _):
      p, s = carry
      updates, s = tx.update(grad(p), s, p)
      return (optax.apply_updates(p, updates), s), None

    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      p = jax.jit(
        lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=steps)[0][0]
      )(p0)
    return {
      k: np.asarray(p[k].astype(jnp.float32), np.float64) - start[k] for k in start
    }

  def rel_error(got):
    num = sum(np.sum((got[k] - want[k]) ** 2) for k in want)
    return float(np.sqrt(num / sum(np.sum(want[k] ** 2) for k in want)))

  assert rel_error(total_change("auto")) < 0.02
  assert rel_error(total_change(None)) > 0.3


# ------------------------------------------------- what the library promises


def test_inject_hyperparams_and_flatten_small_leaves_keep_compensating():
  """Kahan through ``optax.inject_hyperparams`` and inside
  ``flatten_small_leaves``: the decay-only run matches the direct one bitwise."""
  params = {
    "a": jnp.linspace(0.5, 2, 8).astype(jnp.bfloat16),
    "b": jnp.ones((3, 3), jnp.bfloat16),
  }
  direct = odx.adamw(1e-3, weight_decay=1e-4)
  injected = optax.inject_hyperparams(odx.adamw, hyperparam_dtype=jnp.float32)(
    learning_rate=1e-3, weight_decay=1e-4
  )
  flat = odx.flatten_small_leaves(odx.adamw(1e-3, weight_decay=1e-4))
  run = lambda tx: jax.jit(lambda p: run_zero_grads(tx, p, 500))(params)  # noqa: E731
  want = run(direct)
  assert not np.array_equal(np.asarray(want["b"]), np.asarray(params["b"]))
  for tx in (injected, flat):
    for x, y in zip(jax.tree.leaves(run(tx)), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_standalone_transformation_ends_any_chain():
  """``compensate_rounding`` after ``with_decoupled_weight_decay(optax.lion)``:
  the decay-only run keeps (1 - λ)^500 to within an ulp; without it, 1."""
  params = {"w": jnp.linspace(0.5, 2, 16).astype(jnp.bfloat16)}
  lam = 2e-4
  inner = odx.with_decoupled_weight_decay(optax.lion(1e-3, weight_decay=0.0), lam)
  tx = optax.chain(inner, odx.compensate_rounding())
  got = np.asarray(
    jax.jit(lambda p: run_zero_grads(tx, p, 500))(params)["w"].astype(jnp.float32)
  )
  start = np.asarray(params["w"].astype(jnp.float32), np.float64)
  assert ulps(got, start * (1 - lam) ** 500, jnp.bfloat16).max() <= 1
  plain = jax.jit(lambda p: run_zero_grads(inner, p, 500))(params)["w"]
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(params["w"]))


def test_state_is_sharded_like_the_params_and_runs_under_jit_init():
  """``jax.jit(tx.init)`` on parameters sharded over 8 devices: each Kahan
  buffer has its parameter's sharding; seed and count are scalars."""
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))
  params = {"w": jnp.ones((16, 4), jnp.bfloat16), "f": jnp.ones((8,), jnp.float32)}
  params = jax.device_put(params, NamedSharding(mesh, P("fsdp")))
  tx = odx.adamw(1e-3)
  state = jax.jit(tx.init)(params)
  comp = state[-1]
  assert comp.residual["w"].sharding.is_equivalent_to(params["w"].sharding, 2)
  assert comp.residual["w"].dtype == jnp.bfloat16
  assert comp.seed.shape == comp.count.shape == ()
  assert isinstance(comp.residual["f"], optax.MaskedNode)


@pytest.mark.parametrize("compensation", ["auto", "stochastic"])
def test_sharded_and_data_parallel_runs_equal_one_device(compensation):
  """bf16 parameters: the same bits on one device, jitted over 8 sharded
  devices, replicated under shard_map and under pmap (data parallel); Kahan's
  also with the parameters split by shard_map (its rounding depends on values
  only)."""
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
  params = {"w": jnp.linspace(-2, 2, 64).reshape(16, 4).astype(jnp.bfloat16)}
  grads = {"w": jnp.full((16, 4), 3e-3, jnp.bfloat16)}
  tx = odx.adamw(1e-4, weight_decay=1e-4, compensation=compensation)

  def run(p):
    def step(carry, _):
      p, s = carry
      u, s = tx.update(jax.tree.map(lambda g, q: g[: q.shape[0]], grads, p), s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, (p, tx.init(p)), None, length=50)[0][0]

  want = jax.jit(run)(params)
  runs = [
    jax.jit(run)(jax.device_put(params, NamedSharding(mesh, P("d")))),
    jax.jit(jax.shard_map(run, mesh=mesh, in_specs=P(), out_specs=P()))(params),
  ]
  replicas = jax.pmap(run)(jax.tree.map(lambda x: jnp.stack([x] * 8), params))
  runs += [{"w": replicas["w"][i]} for i in (0, 7)]
  if compensation == "auto":
    runs.append(
      jax.jit(jax.shard_map(run, mesh=mesh, in_specs=P("d"), out_specs=P("d")))(params)
    )
  assert not np.array_equal(np.asarray(want["w"]), np.asarray(params["w"]))
  for got in runs:
    np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(want["w"]))


@pytest.mark.parametrize("compensation", ["auto", "stochastic"])
def test_orbax_restore_mid_run_continues_bitwise(tmp_path, compensation):
  """Saved after 5 steps, restored into a fresh state, 5 more steps: the same
  bits as 10 uninterrupted steps; the checkpoint checks against the target."""
  import orbax.checkpoint as ocp

  params = {"w": jnp.linspace(0.5, 2, 12).reshape(3, 4).astype(jnp.bfloat16)}
  tx = odx.adamw(1e-4, weight_decay=1e-4, compensation=compensation, seed=3)
  grads = {"w": jnp.full((3, 4), 1e-2, jnp.bfloat16)}
  step = jax.jit(
    lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(grads, s, p))
  )
  p, s = params, tx.init(params)
  for _ in range(5):
    p, s = step(p, s)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(tmp_path / "ckpt", {"params": p, "opt_state": s})
  ckptr.wait_until_finished()
  for _ in range(5):
    p, s = step(p, s)
  target = {"params": params, "opt_state": tx.init(params)}
  odx.check_restore_target(ckptr.metadata(tmp_path / "ckpt").item_metadata, target)
  restored = ckptr.restore(tmp_path / "ckpt", target)
  q, r = restored["params"], restored["opt_state"]
  for _ in range(5):
    q, r = step(q, r)
  np.testing.assert_array_equal(np.asarray(q["w"]), np.asarray(p["w"]))
  for x, y in zip(jax.tree.leaves(r), jax.tree.leaves(s), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  with pytest.raises(ValueError, match="not in the checkpoint|not in the target"):
    odx.check_restore_target(
      ckptr.metadata(tmp_path / "ckpt").item_metadata,
      {
        "params": params,
        "opt_state": odx.adamw(1e-4, weight_decay=1e-2, compensation=None).init(params),
      },
    )


# ------------------------------------------------- told, never silently lost


def _bf16_params():
  return {"kernel": jnp.ones((4, 4), jnp.bfloat16), "bias": jnp.ones(4, jnp.bfloat16)}


@pytest.mark.parametrize("factory", [odx.adamw, odx.sgdw])
def test_opting_out_with_a_decay_that_rounds_away_warns_at_init(factory):
  """compensation=None and η_max λ = 1e-4 < 2^-8 on bf16 leaves: one warning
  at init (under jit too) naming the leaf, the dtype and the fix."""
  tx = factory(1e-3, weight_decay=1e-4, compensation=None)
  with pytest.warns(UserWarning) as record:
    tx.init(_bf16_params())
  assert len(record) == 1
  message = str(record[0].message)
  for part in ("bias", "bfloat16", "0.0001", "compensation='auto'", "1 more leaves"):
    assert part in message, message
  with pytest.warns(UserWarning, match="kernel"):
    jax.jit(
      factory(1e-3, weight_decay=1e-4, compensation=None, mask=odx.mask_by_ndim(2)).init
    )(_bf16_params())


@pytest.mark.parametrize(
  "kwargs, params",
  [
    ({"compensation": "auto"}, _bf16_params()),  # compensated
    ({"compensation": None, "weight_decay": 1e-2}, _bf16_params()),  # above 2^-8
    ({"compensation": None}, {"w": jnp.ones(3, jnp.float32)}),  # float32
    ({"compensation": None, "mask": {"kernel": False, "bias": False}}, _bf16_params()),
    (
      {
        "compensation": None,
        "schedule_multiplier": odx.with_peak(lambda t: 0.0 * t + 100.0, 100.0),
      },
      _bf16_params(),
    ),
  ],
  ids=["compensated", "large_decay", "float32", "masked_out", "peak_100"],
)
def test_no_warning_where_nothing_is_lost(kwargs, params):
  kwargs = {"weight_decay": 1e-4} | kwargs
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    odx.adamw(1e-3, **kwargs).init(params)


# ------------------------------------------------- refused when built

READY = [odx.adamw, odx.adam_l2, odx.sgdw, odx.sgd_l2]
RESTART_READY = [odx.adamwr, odx.sgdwr]


def _build(factory, **kw):
  if factory in RESTART_READY:
    return factory(1e-3, first_cycle_steps=10, **kw)
  return factory(1e-3, **kw)


@pytest.mark.parametrize("factory", READY + RESTART_READY, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", ["Kahan", "none", "", True, 0, 1.0])
def test_unknown_compensation_is_refused(factory, bad):
  with pytest.raises(ValueError, match=f"compensation={bad!r} must be one of"):
    _build(factory, compensation=bad)


@pytest.mark.parametrize("factory", READY + RESTART_READY, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", [1.5, "1", True, np.float32(2), None, [1]], ids=str)
def test_non_integer_seed_is_refused(factory, bad):
  with pytest.raises(TypeError, match="seed=.* must be an integer"):
    _build(factory, compensation="stochastic", seed=bad)


def test_seed_out_of_int32_and_float_seed_under_inject_hyperparams():
  with pytest.raises(ValueError, match="int32"):
    odx.compensate_rounding("stochastic", seed=2**40)
  tx = optax.inject_hyperparams(odx.adamw)(learning_rate=1e-3, seed=1.5)
  with pytest.raises(TypeError, match="seed=.* must be an integer"):
    tx.init({"w": jnp.ones(2)})


def test_update_without_params_raises():
  tx = odx.compensate_rounding()
  state = tx.init({"w": jnp.ones(2, jnp.bfloat16)})
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update({"w": jnp.ones(2, jnp.bfloat16)}, state)


def test_map_params_with_specs_as_for_optax_masked():
  """optax.tree.map_params over the state with a second, params-shaped tree
  (sharding specs): leaves without a Kahan buffer are optax.MaskedNode, handled
  with is_leaf as for optax.masked; the buffers get their leaf's spec."""
  params = {"w": jnp.ones((4, 4), jnp.bfloat16), "b": jnp.ones(4, jnp.float32)}
  tx = odx.adamw(1e-3)
  specs = {"w": "spec-w", "b": "spec-b"}

  def masked(x):
    return isinstance(x, optax.MaskedNode)

  out = optax.tree.map_params(
    tx,
    lambda x, spec: x if masked(x) else spec,
    tx.init(params),
    specs,
    transform_non_params=lambda _: None,
    is_leaf=masked,
  )
  assert out[0].mu == specs
  assert out[-1].residual["w"] == "spec-w"
  assert masked(out[-1].residual["b"])
  assert out[-1].count is None and out[-1].seed is None


def test_numpy_float64_params_with_kahan_warn_nothing():
  """NumPy float64 parameters (float32 to JAX without x64): compensation
  "kahan" works on them as JAX stores them, without the truncation warnings
  (the suite turns warnings into errors)."""
  tx = odx.compensate_rounding("kahan")
  params = {"w": np.linspace(0.0, 1.0, 4)}
  state = tx.init(params)
  for _ in range(100):
    updates, state = tx.update({"w": np.full(4, 1e-9)}, state, params)
    params = jax.tree.map(np.asarray, optax.apply_updates(params, updates))
  assert state.residual["w"].dtype == jnp.float32
  want = np.linspace(0.0, 1.0, 4).astype(np.float32) + 1e-7
  np.testing.assert_allclose(params["w"], want, rtol=1e-7, atol=1e-12)
