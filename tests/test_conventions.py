"""Weight decay conversions: PyTorch's ``λ_torch`` and a timescale in epochs.

The PyTorch conversion is checked against ``torch.optim.AdamW`` itself
(float64) under a non-trivial ``LambdaLR`` schedule, 40 steps; the timescale
against Wang & Aitchison's definition, ``τ_iter = 1 / (η λ)`` steps and
``B / b`` steps per epoch, computed here by counting.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_decoupled as odx

STEPS = 40
ALPHA, LAM_TORCH = 0.03, 0.2
_rng = np.random.default_rng(5)
PARAMS = {"w": _rng.normal(size=(3, 4)), "b": _rng.normal(size=(4,))}
GRADS = {k: _rng.normal(size=(STEPS, *np.shape(v))) for k, v in PARAMS.items()}
ETA = [0.3 + 0.7 * abs(math.cos(0.4 * t)) for t in range(STEPS)]


def test_from_torch_matches_torch_adamw_under_a_schedule():
  """torch AdamW(lr=α, weight_decay=λ_torch) with LambdaLR η_t equals
  odx.adamw(α, weight_decay=weight_decay_from_torch(λ_torch, α), η_t)."""
  torch = pytest.importorskip("torch")
  tensors = {
    k: torch.tensor(np.asarray(v, np.float64), requires_grad=True)
    for k, v in PARAMS.items()
  }
  opt = torch.optim.AdamW(list(tensors.values()), lr=ALPHA, weight_decay=LAM_TORCH)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: ETA[min(t, STEPS - 1)])
  want = []
  for t in range(STEPS):
    for k, p in tensors.items():
      p.grad = torch.tensor(GRADS[k][t])
    opt.step()
    sched.step()
    want.append({k: p.detach().numpy().copy() for k, p in tensors.items()})

  table = jnp.asarray(ETA, jnp.float32)
  tx = odx.adamw(
    ALPHA,
    weight_decay=odx.weight_decay_from_torch(LAM_TORCH, ALPHA),
    schedule_multiplier=lambda c: table[c],
  )
  p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), PARAMS)
  state = tx.init(p)
  for t in range(STEPS):
    g = {k: jnp.asarray(v[t], jnp.float32) for k, v in GRADS.items()}
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    for k in p:
      np.testing.assert_allclose(p[k], want[t][k], rtol=2e-5, atol=2e-6, err_msg=k)


def test_to_torch_inverts_from_torch():
  for lam_torch, lr in [(0.1, 1e-3), (0.0, 0.5), (3.0, 2e-4)]:
    lam = odx.weight_decay_from_torch(lam_torch, lr)
    assert lam == pytest.approx(lr * lam_torch, rel=1e-15)
    assert odx.weight_decay_to_torch(lam, lr) == pytest.approx(lam_torch, rel=1e-12)


def test_conversions_work_on_arrays():
  """A whole grid converts at once (NumPy arrays in, arrays out)."""
  lams = np.array([0.01, 0.1, 1.0])
  np.testing.assert_allclose(odx.weight_decay_from_torch(lams, 1e-3), lams * 1e-3)
  np.testing.assert_allclose(odx.weight_decay_to_torch(lams, 2.0), lams / 2.0)


@pytest.mark.parametrize(
  "tau, num_examples, batch_size", [(10, 50_000, 128), (0.5, 1000, 10), (3, 60, 60)]
)
def test_from_timescale_gives_a_tau_epoch_average(tau, num_examples, batch_size):
  """The λ returned forgets 1/e of the past in τ epochs (up to the discrete
  step): ``(1 - λ)^(steps in τ epochs) ≈ e^{-1}``, and ``1/λ`` is that many
  steps."""
  lam = odx.weight_decay_from_timescale(
    tau, num_examples=num_examples, batch_size=batch_size
  )
  steps_in_tau = tau * num_examples / batch_size  # B / b steps per epoch
  assert 1 / lam == pytest.approx(steps_in_tau, rel=1e-12)
  assert (1 - lam) ** steps_in_tau == pytest.approx(math.exp(-1), rel=1.5 * lam)


NAN, INF = math.nan, math.inf
BAD = {
  "weight_decay_from_torch": (
    lambda **kw: odx.weight_decay_from_torch(
      **({"weight_decay": 0.1, "learning_rate": 1e-3} | kw)
    ),
    {
      "weight_decay": [-0.1, NAN, INF, "0.1", None, True],
      "learning_rate": [
        0.0,
        -1e-3,
        NAN,
        INF,
        "1e-3",
        None,
        False,
        optax.constant_schedule(1e-3),
      ],
    },
  ),
  "weight_decay_to_torch": (
    lambda **kw: odx.weight_decay_to_torch(
      **({"weight_decay": 1e-4, "learning_rate": 1e-3} | kw)
    ),
    {
      "weight_decay": [-1e-4, NAN, "x"],
      "learning_rate": [0.0, -1.0, INF, np.array([1e-3, 0.0])],
    },
  ),
  "weight_decay_from_timescale": (
    lambda **kw: odx.weight_decay_from_timescale(
      **({"timescale_epochs": 10, "num_examples": 1000, "batch_size": 10} | kw)
    ),
    {
      "timescale_epochs": [0, -1, NAN, INF, "10", None],
      "num_examples": [0, -5, NAN, True],
      "batch_size": [0, -1, INF, "32"],
    },
  ),
}
CASES = [
  pytest.param(name, arg, value, id=f"{name}-{arg}={value!r}"[:60])
  for name, (_, table) in BAD.items()
  for arg, values in table.items()
  for value in values
]


@pytest.mark.parametrize("name, arg, value", CASES)
def test_bad_value_raises_naming_argument_and_value(name, arg, value):
  with pytest.raises(ValueError) as info:
    BAD[name][0](**{arg: value})
  assert f"{arg}={value!r}" in str(info.value), str(info.value)


def test_traced_values_are_not_checked():
  """Under jit the conversions take tracers (a grid computed on device)."""
  out = jax.jit(odx.weight_decay_from_torch)(jnp.float32(0.1), jnp.float32(1e-3))
  np.testing.assert_allclose(out, 1e-4, rtol=1e-6)
