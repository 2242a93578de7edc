"""Rotational-equilibrium diagnostics: the measurement and the predictions.

``angular_update`` is checked against NumPy float64. The predictions
(``equilibrium_angular_update``, ``equilibrium_steps``) are checked on a real
scale-invariant network: a two-layer MLP whose first kernel is followed by a
layer normalization without scale or shift (so the loss does not change when
that kernel is scaled), trained on a synthetic teacher task with 30 % label
noise, fresh batches every step, constant ``η = 1``, the decay on that kernel
only. Measured (this test's settings, measured / predicted over the last
third of the run): AdamW (``α = 1e-3``) 0.98 to 1.03 and SGDW (``α = 0.1``,
momentum 0.9) 1.00 to 1.03 for ``λ`` from 1e-4 to 1e-1; the relaxation time
from a kernel 20 times too large within 20 % of ``equilibrium_steps``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_decoupled as odx

# --- angular_update against NumPy.


def _np_angular(p, q):
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  norm = np.linalg.norm(p.ravel())
  return 0.0 if norm == 0 else np.linalg.norm((q - p).ravel()) / norm


def test_angular_update_matches_numpy_per_leaf():
  rng = np.random.default_rng(3)
  old = {
    "w": rng.normal(size=(5, 7)).astype(np.float32),
    "nested": {"s": np.float32(2.0), "v": rng.normal(size=(3,)).astype(np.float32)},
  }
  new = jax.tree.map(lambda x: x + 0.01 * rng.normal(size=np.shape(x)), old)
  new = jax.tree.map(lambda x: np.asarray(x, np.float32), new)
  got = jax.jit(odx.angular_update)(old, new)
  assert jax.tree.structure(got) == jax.tree.structure(old)
  for g, p, q in zip(
    jax.tree.leaves(got), jax.tree.leaves(old), jax.tree.leaves(new), strict=True
  ):
    assert g.shape == () and g.dtype == jnp.float32
    np.testing.assert_allclose(float(g), _np_angular(p, q), rtol=1e-5)


def test_angular_update_zero_leaf_is_zero_and_bf16_is_read_in_float32():
  """A zero leaf gives 0 (not inf or nan), whatever its step; bf16 leaves are
  measured in float32 (a bf16 sum of squares would round)."""
  old = {"zero": jnp.zeros(4), "bf16": jnp.full((1000,), 1.0, jnp.bfloat16)}
  new = {"zero": jnp.ones(4), "bf16": jnp.full((1000,), 1.0078125, jnp.bfloat16)}
  got = odx.angular_update(old, new)
  assert float(got["zero"]) == 0.0
  assert got["bf16"].dtype == jnp.float32
  np.testing.assert_allclose(float(got["bf16"]), 0.0078125, rtol=1e-6)


def test_angular_update_of_a_pure_rotation_is_its_chord():
  """Turning a vector by angle φ: ‖Δθ‖/‖θ‖ = 2 sin(φ/2) ≈ φ."""
  phi = 0.01
  old = {"w": jnp.array([3.0, 0.0])}
  new = {"w": 3.0 * jnp.array([math.cos(phi), math.sin(phi)])}
  got = float(odx.angular_update(old, new)["w"])
  np.testing.assert_allclose(got, 2 * math.sin(phi / 2), rtol=1e-4)


# --- The closed forms.


@pytest.mark.parametrize("optimizer", ["adamw", "sgdw"])
def test_equilibrium_closed_forms(optimizer):
  """ω* = sqrt(2 η λ (1-β)/(1+β)) for both; τ = 1/(2ηλ) or 1/(4ηλ)."""
  got = odx.equilibrium_angular_update(
    2e-3, b1=0.8, schedule_multiplier=0.5, optimizer=optimizer
  )
  assert got == pytest.approx(math.sqrt(2 * 2e-3 * 0.5 * 0.2 / 1.8), rel=1e-12)
  tau = odx.equilibrium_steps(2e-3, schedule_multiplier=0.5, optimizer=optimizer)
  assert tau == pytest.approx({"adamw": 500.0, "sgdw": 250.0}[optimizer], rel=1e-12)


@pytest.mark.parametrize(
  "call, text",
  [
    (lambda: odx.equilibrium_angular_update(-1e-3), "weight_decay=-0.001"),
    (lambda: odx.equilibrium_angular_update(1e-3, b1=1.0), "b1=1.0"),
    (lambda: odx.equilibrium_angular_update(1e-3, b1="0.9"), "b1='0.9'"),
    (
      lambda: odx.equilibrium_angular_update(1e-3, schedule_multiplier=math.nan),
      "schedule_multiplier=nan",
    ),
    (lambda: odx.equilibrium_angular_update(1e-3, optimizer="adam"), "'adam'"),
    (lambda: odx.equilibrium_steps(0.0), "weight_decay=0.0"),
    (lambda: odx.equilibrium_steps(1e-3, schedule_multiplier=0), "multiplier=0"),
    (lambda: odx.equilibrium_steps(1e-3, optimizer="sgd"), "'sgd'"),
  ],
)
def test_bad_arguments_name_themselves(call, text):
  with pytest.raises(ValueError) as info:
    call()
  assert text in str(info.value), str(info.value)


# --- On a scale-invariant network.

D, H, K, BATCH = 32, 64, 10, 32
TEACHER = np.random.default_rng(42).normal(size=(D, K)).astype(np.float32)
DECAY_MASK = {"w1": True, "w2": False, "b2": False}
MAKE = {
  "adamw": lambda lam: odx.adamw(1e-3, weight_decay=lam, mask=DECAY_MASK),
  "sgdw": lambda lam: odx.sgdw(0.1, momentum=0.9, weight_decay=lam, mask=DECAY_MASK),
}


def _init(key, scale):
  k1, k2 = jax.random.split(key)
  return {
    "w1": scale * jax.random.normal(k1, (D, H)) / math.sqrt(D),
    "w2": jax.random.normal(k2, (H, K)) / math.sqrt(H),
    "b2": jnp.zeros(K),
  }


def _loss(p, x, y):
  h = x @ p["w1"]
  mean = jnp.mean(h, -1, keepdims=True)
  h = (h - mean) * jax.lax.rsqrt(jnp.mean(jnp.square(h - mean), -1, keepdims=True))
  logits = jax.nn.relu(h) @ p["w2"] + p["b2"][None, :]
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


def _batch(key):
  kx, kn, kl = jax.random.split(key, 3)
  x = jax.random.normal(kx, (BATCH, D))
  y = jnp.argmax(x @ TEACHER, -1)
  noisy = jax.random.uniform(kn, (BATCH,)) < 0.3
  return x, jnp.where(noisy, jax.random.randint(kl, (BATCH,), 0, K), y)


def train(optimizer, lams, steps, scale=1.0):
  """Per step and per λ: the first kernel's angular update and norm."""

  def one(lam):
    tx = MAKE[optimizer](lam)

    def step(carry, key):
      p, state = carry
      grads = jax.grad(_loss)(p, *_batch(key))
      updates, state = tx.update(grads, state, p)
      new = optax.apply_updates(p, updates)
      omega = odx.angular_update(p, new)["w1"]
      return (new, state), (omega, jnp.linalg.norm(p["w1"]))

    p = _init(jax.random.PRNGKey(0), scale)
    keys = jax.random.split(jax.random.PRNGKey(1), steps)
    return jax.lax.scan(step, (p, tx.init(p)), keys)[1]

  omega, norm = jax.jit(jax.vmap(one))(jnp.asarray(lams, jnp.float32))
  return np.asarray(omega), np.asarray(norm)


LAMS = (1e-3, 1e-2, 1e-1)


@pytest.mark.parametrize("optimizer", ["adamw", "sgdw"])
def test_measured_equilibrium_angular_update_within_10_percent(optimizer):
  """After 12 relaxation times (from the smallest λ), the mean angular update
  of the scale-invariant kernel over the last third of the run is within 10 %
  of equilibrium_angular_update, for λ = 1e-3, 1e-2, 1e-1."""
  steps = int(12 * odx.equilibrium_steps(min(LAMS), optimizer=optimizer))
  omega, _ = train(optimizer, LAMS, steps)
  measured = omega[:, -steps // 3 :].mean(axis=1)
  predicted = np.array(
    [odx.equilibrium_angular_update(lam, b1=0.9, optimizer=optimizer) for lam in LAMS]
  )
  ratio = measured / predicted
  assert np.all(np.abs(ratio - 1) < 0.1), dict(zip(LAMS, ratio.round(3), strict=True))


@pytest.mark.parametrize("optimizer", ["adamw", "sgdw"])
def test_relaxation_time_from_a_large_kernel(optimizer):
  """From a kernel 20 times its initial size, the excess δ of r² (AdamW) or
  r⁴ (SGDW) over its final value decays as e^{-t/τ}: the fitted τ is within
  25 % of equilibrium_steps (a factor 2, 2ηλ against 4ηλ, would fail)."""
  lam = 1e-2
  tau = odx.equilibrium_steps(lam, optimizer=optimizer)
  _, norm = train(optimizer, [lam], int(20 * tau), scale=20.0)
  power = {"adamw": 2, "sgdw": 4}[optimizer]
  r = norm[0].astype(np.float64) ** power
  delta = r / r[-int(5 * tau) :].mean() - 1
  t = np.arange(len(delta))
  window = (delta < 0.3 * delta[0]) & (delta > 0.05) & (t < np.argmax(delta < 0.05))
  slope = np.polyfit(t[window], np.log(delta[window]), 1)[0]
  fitted = -1 / slope
  assert window.sum() > 20, window.sum()
  assert abs(fitted / tau - 1) < 0.25, (fitted, tau)


def test_angular_update_of_complex_leaves_counts_the_imaginary_part():
  """|(1+1j) - 1| / |1| = 1; a float64 leaf is measured in float64."""
  got = odx.angular_update({"w": jnp.array([1 + 0j])}, {"w": jnp.array([1 + 1j])})
  assert float(got["w"]) == pytest.approx(1.0) and got["w"].dtype == jnp.float32
