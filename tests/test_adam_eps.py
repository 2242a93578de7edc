"""ε outside the root and ε_root inside it, where each one dominates.

With gradients of 1e-3, ``ε = 1e-3`` halves the step while ``ε_root = 1e-6``
divides it by √2: swapping the two, or ignoring either, changes the step by
a factor, not by a rounding error. Checked against the float64 reference and
against optax.
"""

import jax
import numpy as np
import optax
import pytest
import reference

import optax_decoupled as odx

_rng = np.random.default_rng(5)
SIGNS = _rng.choice([-1.0, 1.0], 8)
PARAMS = {"w": np.ones(8, np.float32)}
GRADS = [{"w": (1e-3 * SIGNS * _rng.uniform(0.5, 1.5, 8)).astype(np.float32)}]
GRADS.append({"w": (1e-3 * SIGNS * _rng.uniform(0.5, 1.5, 8)).astype(np.float32)})
EPS = [(1e-3, 0.0), (0.0, 1e-6), (1e-3, 1e-6)]


def _steps(tx):
  state, params, out = tx.init(PARAMS), PARAMS, []
  for g in GRADS:
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(np.asarray(u["w"]))
  return out


@pytest.mark.parametrize("eps, eps_root", EPS, ids=["eps", "eps_root", "both"])
def test_adamw_eps_and_eps_root_match_reference(eps, eps_root):
  tx = odx.adamw(0.1, eps=eps, eps_root=eps_root, weight_decay=0.0)
  history = reference.adam(PARAMS, GRADS, 0.1, eps=eps, eps_root=eps_root)
  want = [PARAMS["w"] - history[0]["w"], history[0]["w"] - history[1]["w"]]
  for got, expected in zip(_steps(tx), want, strict=True):
    np.testing.assert_allclose(-got, expected, rtol=1e-4)


@pytest.mark.parametrize("eps, eps_root", EPS, ids=["eps", "eps_root", "both"])
def test_scale_by_adam_eps_and_eps_root_match_optax(eps, eps_root):
  ours = _steps(odx.scale_by_adam(eps=eps, eps_root=eps_root))
  with jax.numpy_dtype_promotion("standard"):  # optax needs it
    theirs = _steps(optax.scale_by_adam(eps=eps, eps_root=eps_root))
  for a, b in zip(ours, theirs, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_the_two_eps_differ_by_a_factor_here():
  """The setting is sharp: ε outside and the same value inside the root give
  steps that differ by more than 10x (a mutation that swaps them fails)."""
  outside = _steps(odx.scale_by_adam(eps=1e-3, eps_root=0.0))[0]
  inside = _steps(odx.scale_by_adam(eps=0.0, eps_root=1e-3))[0]
  ratio = np.abs(outside / inside)
  assert (ratio > 10).all(), ratio
