"""One contract every optimizer of the library keeps, checked from one table.

Each case is a factory ``(learning_rate, weight_decay, **kwargs) -> tx`` and a
small learning rate it converges with. Every check below runs on every case,
with no per-name branches: a new optimizer joins by adding a row.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_decoupled as odx


def lion_w(learning_rate, weight_decay=1e-4, schedule_multiplier=None, mask=None):
  """optax's Lion made decoupled (its own decay off)."""
  inner = optax.lion(learning_rate, weight_decay=0.0)
  return odx.with_decoupled_weight_decay(inner, weight_decay, schedule_multiplier, mask)


class Case(NamedTuple):
  name: str
  factory: Callable[..., optax.GradientTransformation]
  lr: float
  extra: dict[str, Any] = {}
  static_args: tuple[str, ...] = ()


RESTARTS = {"first_cycle_steps": 40, "cycle_mult": 2, "warmup_steps": 0}
RESTART_STATIC = ("first_cycle_steps", "cycle_mult", "warmup_steps")

CASES = [
  Case("adamw", odx.adamw, 0.05),
  Case("adam_l2", odx.adam_l2, 0.05),
  Case("sgdw", odx.sgdw, 0.02),
  Case("sgd_l2", odx.sgd_l2, 0.02),
  Case("adamwr", odx.adamwr, 0.05, RESTARTS, RESTART_STATIC),
  Case("sgdwr", odx.sgdwr, 0.02, RESTARTS, RESTART_STATIC),
  Case("lion_w", lion_w, 0.02),
  # Cautious and corrected decay (the state is the same as without them).
  Case("adamw_cautious", odx.adamw, 0.05, {"cautious": True}),
  Case("sgdw_cautious", odx.sgdw, 0.02, {"cautious": True}),
  Case("adamw_corrected", odx.adamw, 0.05, {"corrected": True, "schedule_peak": 2.0}),
  Case(
    "adamwr_corrected", odx.adamwr, 0.05, RESTARTS | {"corrected": True}, RESTART_STATIC
  ),
  Case(
    "sgdwr_cautious_corrected",
    odx.sgdwr,
    0.02,
    RESTARTS | {"max_value": 2.0, "cautious": True, "corrected": True},
    RESTART_STATIC,
  ),
]
IDS = [c.name for c in CASES]
each_case = pytest.mark.parametrize("case", CASES, ids=IDS)


def make(case, lr=None, weight_decay=1e-4, **kw):
  lr = case.lr if lr is None else lr
  return case.factory(lr, weight_decay=weight_decay, **case.extra, **kw)


def injected(case, lr, weight_decay):
  factory = optax.inject_hyperparams(case.factory, static_args=case.static_args)
  return factory(learning_rate=lr, weight_decay=weight_decay, **case.extra)


_rng = np.random.default_rng(1)


def _away_from_zero(shape):
  """Values in ±[0.5, 1.5]: large enough that no step crosses zero."""
  return (_rng.uniform(0.5, 1.5, shape) * _rng.choice([-1.0, 1.0], shape)).astype(
    np.float32
  )


PARAMS = {
  "w": _away_from_zero((4, 3)),
  "b": _away_from_zero((3,)),
  "s": np.float32(1.0),
}
A = {
  k: _rng.uniform(0.5, 2.0, np.shape(v)).astype(np.float32) for k, v in PARAMS.items()
}
C = {k: _rng.normal(size=np.shape(v)).astype(np.float32) for k, v in PARAMS.items()}
GRADS = [
  {k: _rng.normal(size=np.shape(v)).astype(np.float32) for k, v in PARAMS.items()}
  for _ in range(3)
]
MASK = {"w": True, "b": False, "s": False}


def loss(p):
  return sum(jnp.sum(0.5 * A[k] * (p[k].astype(jnp.float32) - C[k]) ** 2) for k in p)


def params(dtype=jnp.float32):
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), PARAMS)


def descend(tx, p, steps):
  """``steps`` steps on :func:`loss`, in one scan."""

  def step(carry, _):
    p, state = carry
    updates, state = tx.update(jax.grad(loss)(p), state, p)
    return (optax.apply_updates(p, updates), state), None

  return jax.lax.scan(step, (p, tx.init(p)), None, length=steps)[0]


def run_grads(tx, p, grads, state=None):
  """Applies the fixed ``grads`` in turn (a Python loop: eager unless jitted)."""
  state = tx.init(p) if state is None else state
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  return p, state


def assert_trees_close(actual, expected, rtol, atol=0.0):
  for path, a, e in zip(
    *zip(*jax.tree_util.tree_flatten_with_path(actual)[0], strict=True),
    jax.tree.leaves(expected),
    strict=True,
  ):
    np.testing.assert_allclose(
      np.asarray(a, np.float64),
      np.asarray(e, np.float64),
      rtol,
      atol,
      err_msg=f"{path}",
    )


#: Loss after CONVERGE_STEPS steps must be below the first loss / CONVERGE_FACTOR.
#: Measured drops: 1e7 to 5e8 for the Adam and SGD cases; 2e2 for Lion, whose
#: sign steps of constant size lr keep it oscillating around the minimum.
CONVERGE_STEPS, CONVERGE_FACTOR = 200, 100.0


@each_case
def test_converges_on_a_quadratic(case):
  """200 steps bring the quadratic's loss down by a factor of at least 100."""
  p0 = params()
  p, _ = jax.jit(descend, static_argnums=(0, 2))(make(case), p0, CONVERGE_STEPS)
  start, end = float(loss(p0)), float(loss(p))
  assert end < start / CONVERGE_FACTOR, f"loss {start} -> {end}"


@each_case
def test_jit_and_eager_agree(case):
  """Three steps eagerly and under jax.jit give the same params (rtol 1e-6)."""
  tx = make(case, weight_decay=1e-2)
  eager, _ = run_grads(tx, params(), GRADS)
  jitted, _ = jax.jit(lambda p: run_grads(tx, p, GRADS))(params())
  assert_trees_close(jitted, eager, rtol=1e-6, atol=1e-7)


@each_case
def test_inject_hyperparams_learning_rate_at_run_time(case):
  """Doubling state.hyperparams['learning_rate'] doubles the first step (λ = 0).

  One jitted update serves both values: the rate is read from the state.
  """
  tx = injected(case, case.lr, 0.0)
  p = params()
  state = tx.init(p)
  update = jax.jit(tx.update)
  u1, _ = update(GRADS[0], state, p)
  hyper = dict(state.hyperparams, learning_rate=jnp.float32(2 * case.lr))
  u2, new_state = update(GRADS[0], state._replace(hyperparams=hyper), p)
  assert float(new_state.hyperparams["learning_rate"]) == pytest.approx(2 * case.lr)
  assert_trees_close(u2, jax.tree.map(lambda u: 2 * u, u1), rtol=1e-6, atol=1e-9)
  assert update._cache_size() == 1, update._cache_size()


LR_GRID = (1.0, 0.5)  # times case.lr
WD_GRID = (1e-3, 5e-2)


@each_case
def test_vmap_over_hyperparameter_grid(case):
  """vmap over a 2 x 2 lr x wd grid equals running each config alone (rtol 1e-6)."""
  lrs = np.array([case.lr * f for f in LR_GRID for _ in WD_GRID], np.float32)
  wds = np.array([wd for _ in LR_GRID for wd in WD_GRID], np.float32)
  tx = injected(case, case.lr, WD_GRID[0])
  p0 = params()
  state0 = tx.init(p0)

  def one(lr, wd):
    hyper = dict(state0.hyperparams, learning_rate=lr, weight_decay=wd)
    return run_grads(tx, p0, GRADS, state0._replace(hyperparams=hyper))[0]

  batched = jax.jit(jax.vmap(one))(lrs, wds)
  for i, (lr, wd) in enumerate(zip(lrs, wds, strict=True)):
    alone, _ = run_grads(make(case, float(lr), float(wd)), p0, GRADS)
    assert_trees_close(
      jax.tree.map(lambda x, i=i: x[i], batched), alone, rtol=1e-6, atol=1e-7
    )


@each_case
def test_bf16_params_stay_bf16(case):
  """bf16 params give bf16 updates and stay bf16 over three steps."""
  tx = make(case, weight_decay=1e-2)
  p = params(jnp.bfloat16)
  state = tx.init(p)
  step = jax.jit(tx.update)
  for g in GRADS:
    updates, state = step(jax.tree.map(lambda x: x.astype(jnp.bfloat16), g), state, p)
    p = optax.apply_updates(p, updates)
    dtypes = {k: (updates[k].dtype, p[k].dtype) for k in p}
    assert all(d == (jnp.bfloat16, jnp.bfloat16) for d in dtypes.values()), dtypes
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(p)), p


@each_case
def test_mask_zero_grads(case):
  """With zero gradients, masked-out leaves do not move; decayed ones shrink."""
  tx = make(case, weight_decay=0.1, mask=MASK)
  zeros = [jax.tree.map(jnp.zeros_like, params())] * 3
  p0 = params()
  p, _ = jax.jit(lambda p: run_grads(tx, p, zeros))(p0)
  for k in ("b", "s"):
    np.testing.assert_array_equal(p[k], p0[k], err_msg=k)
  shrink = np.abs(np.asarray(p["w"])) / np.abs(np.asarray(p0["w"]))
  assert (shrink < 1).all(), shrink


@each_case
def test_mask_leaves_follow_undecayed_run(case):
  """Masked-out leaves follow the λ = 0 trajectory (no decay, no L2 term)."""
  p0 = params()
  masked, _ = jax.jit(
    lambda p: run_grads(make(case, weight_decay=0.1, mask=MASK), p, GRADS)
  )(p0)
  plain, _ = jax.jit(lambda p: run_grads(make(case, weight_decay=0.0), p, GRADS))(p0)
  for k in ("b", "s"):
    np.testing.assert_allclose(masked[k], plain[k], rtol=1e-6, atol=1e-7, err_msg=k)
  gap = np.abs(np.asarray(masked["w"]) - np.asarray(plain["w"])).max()
  assert gap > 1e-4, f"decayed leaf barely differs from λ = 0: {gap}"


@each_case
def test_no_recompilation_on_later_steps(case):
  """A jitted train step is traced once for any number of steps."""
  tx = make(case)
  traces = []

  @jax.jit
  def step(p, state, g):
    traces.append(None)
    updates, state = tx.update(g, state, p)
    return optax.apply_updates(p, updates), state

  p = params()
  state = tx.init(p)
  for g in GRADS:
    p, state = step(p, state, g)
  assert len(traces) == 1 and step._cache_size() == 1, (len(traces), step._cache_size())


def _assert_namedtuple_tree(state):
  """Every state node is a NamedTuple (a chain's plain tuple holds NamedTuples)."""
  if isinstance(state, tuple) and not hasattr(state, "_fields"):
    for s in state:
      _assert_namedtuple_tree(s)
  else:
    assert hasattr(state, "_fields"), type(state)


def _structure(tx):
  state = tx.init(params())
  _assert_namedtuple_tree(state)
  leaves = jax.tree.leaves(state)
  assert all(isinstance(x, jax.Array) for x in leaves), [type(x) for x in leaves]
  return jax.tree.structure(state), [(x.shape, x.dtype) for x in leaves]


@each_case
def test_state_structure_same_for_float_and_schedule_decay(case):
  """A float λ and a schedule λ_t give the same NamedTuple state (checkpoints)."""
  assert _structure(make(case, weight_decay=1e-3)) == _structure(
    make(case, weight_decay=optax.linear_schedule(1e-3, 0.0, 10))
  )


WITH_MULTIPLIER = [
  c for c in CASES if "schedule_multiplier" in inspect.signature(c.factory).parameters
]


@pytest.mark.parametrize("case", WITH_MULTIPLIER, ids=[c.name for c in WITH_MULTIPLIER])
def test_state_structure_same_with_schedule_multiplier(case):
  """Adding η_t (and a λ schedule) leaves the state's structure as it was."""
  eta = odx.cosine_warm_restarts(10)
  base = _structure(make(case))
  assert base == _structure(make(case, schedule_multiplier=eta))
  assert base == _structure(
    make(case, weight_decay=lambda t: 1e-4, schedule_multiplier=eta)
  )


@each_case
def test_update_without_params_raises(case):
  """update(..., params=None) raises ValueError: decay needs the params."""
  tx = make(case)
  p = params()
  with pytest.raises(ValueError, match="params"):
    tx.update(GRADS[0], tx.init(p), None)
