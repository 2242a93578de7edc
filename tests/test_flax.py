"""Flax users' side: ``nnx.Optimizer`` and Linen's ``TrainState`` train with odx.

The updates are checked against the NumPy transcription of Algorithm 2 in
``tests/reference.py``, fed the gradients that Flax computed.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

import optax_decoupled as odx
from optax_decoupled._masks import path_to_str

nnx = pytest.importorskip("flax.nnx")
linen = pytest.importorskip("flax.linen")
train_state = pytest.importorskip("flax.training.train_state")

ROOT = Path(__file__).resolve().parent.parent


def _flat(tree):
  """A pytree as ``{path: float64 array}``, for the reference."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_to_str(p): np.asarray(v, np.float64) for p, v in leaves}


def _regression_data(n=32, d_in=4, d_out=2, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d_in)).astype(np.float32)
  w = rng.normal(size=(d_in, d_out)).astype(np.float32)
  y = np.tanh(x @ w) + 0.1 * rng.normal(size=(n, d_out)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y, jnp.float32)


class _NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(4, 16, rngs=rngs)
    self.norm = nnx.LayerNorm(16, rngs=rngs)
    self.out = nnx.Linear(16, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.norm(self.hidden(x))))


def _mse(pred, y):
  return jnp.mean((pred - y) ** 2)


def test_nnx_optimizer_matches_reference_across_a_restart_and_trains():
  """nnx.Optimizer + odx.adamwr: each step equals Algorithm 2 with SGDR's η_t
  (float64 NumPy, same grads) through a warm restart, biases and the norm
  undecayed by the mask, and the loss goes down."""
  x, y = _regression_data()
  model = _NnxMLP(nnx.Rngs(0))
  alpha, lam, t0 = 1e-2, 0.05, 3
  mask = odx.mask_by_ndim()
  tx = odx.adamwr(alpha, first_cycle_steps=t0, weight_decay=lam, mask=mask)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: _mse(m(x), y))(model)
    optimizer.update(model, grads)
    return loss, grads

  params0 = _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  losses, grads, history = [], [], []
  for _ in range(5):  # steps 0-2 in cycle 0, 3-4 after the restart
    loss, g = step(model, optimizer)
    losses.append(float(loss))
    grads.append(_flat(nnx.to_pure_dict(g)))
    history.append(_flat(nnx.to_pure_dict(nnx.state(model, nnx.Param))))

  decayed = {k: v.ndim >= 2 for k, v in params0.items()}
  assert sorted(k for k, d in decayed.items() if not d) == [
    "hidden/bias",
    "norm/bias",
    "norm/scale",
    "out/bias",
  ]
  expected = reference.adam(
    params0,
    grads,
    alpha,
    lam=lam,
    eta=lambda s: reference.sgdr(s, t0),
    mask=decayed,
  )
  for t, (got, want) in enumerate(zip(history, expected, strict=True)):
    for k in want:
      np.testing.assert_allclose(
        got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=f"step {t}, {k}"
      )

  for _ in range(25):
    loss, _ = step(model, optimizer)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], f"loss did not halve: {losses}"


class _LinenMLP(linen.Module):
  @linen.compact
  def __call__(self, x):
    x = linen.relu(linen.LayerNorm()(linen.Dense(16)(x)))
    return linen.Dense(2)(x)


def test_linen_train_state_matches_reference_and_trains():
  """TrainState.create(tx=odx.adamw(...)).apply_gradients: the first steps
  equal Algorithm 2 (float64 NumPy, same grads) with the mask built from Linen
  paths, and the loss goes down."""
  x, y = _regression_data(seed=1)
  model = _LinenMLP()
  params = model.init(jax.random.key(0), x)["params"]
  alpha, lam = 1e-2, 0.05
  mask = odx.mask_by_path("bias", "LayerNorm")
  state = train_state.TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=odx.adamw(alpha, weight_decay=lam, mask=mask),
  )

  @jax.jit
  def step(state):
    def loss_fn(p):
      return _mse(state.apply_fn({"params": p}, x), y)

    loss, g = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=g), loss, g

  params0 = _flat(params)
  decayed = {k: not re.search("bias|LayerNorm", k) for k in params0}
  assert sorted(k for k, d in decayed.items() if d) == [
    "Dense_0/kernel",
    "Dense_1/kernel",
  ]
  losses, grads, history = [], [], []
  for _ in range(3):
    state, loss, g = step(state)
    losses.append(float(loss))
    grads.append(_flat(g))
    history.append(_flat(state.params))
  expected = reference.adam(params0, grads, alpha, lam=lam, mask=decayed)
  for t, (got, want) in enumerate(zip(history, expected, strict=True)):
    for k in want:
      np.testing.assert_allclose(
        got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=f"step {t}, {k}"
      )

  for _ in range(27):
    state, loss, _ = step(state)
    losses.append(float(loss))
  assert int(state.step) == 30
  assert losses[-1] < 0.5 * losses[0], f"loss did not halve: {losses}"


@pytest.mark.slow
def test_flax_nnx_digits_example_runs_and_learns():
  """examples/flax_nnx_digits.py runs end to end under the strict dtype rules,
  prints the mask table, and beats chance (10%) by far after a few steps."""
  pytest.importorskip("sklearn")
  env = dict(
    os.environ,
    PYTHONPATH=str(ROOT),
    JAX_PLATFORMS="cpu",
    JAX_NUMPY_DTYPE_PROMOTION="strict",
    JAX_NUMPY_RANK_PROMOTION="raise",
  )
  proc = subprocess.run(
    [sys.executable, "-W", "error", str(ROOT / "examples" / "flax_nnx_digits.py")]
    + ["--steps", "60"],
    capture_output=True,
    text=True,
    timeout=120,
    env=env,
    cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "decayed: 2 of 6 leaves" in proc.stdout, proc.stdout
  match = re.search(r"test accuracy: ([0-9.]+)", proc.stdout)
  assert match, proc.stdout
  assert float(match.group(1)) > 0.7, proc.stdout
