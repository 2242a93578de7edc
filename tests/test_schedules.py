"""cosine_warm_restarts and normalized weight decay against independent references.

The references are ``reference.sgdr`` / ``reference.cycle_length`` (NumPy
float64, walking the cycles one by one), PyTorch's
``CosineAnnealingWarmRestarts``, Python-integer cycle boundaries and the
paper's closed form for ``λ``. Tolerance: 1e-6 absolute for float32 values of
order 1 (a few float32 ulps), unless a test says otherwise.
"""

import jax.numpy as jnp
import numpy as np
import reference

import optax_decoupled as odx

ATOL = 1e-6


def sgdr_ref(steps, t0, t_mult=1, eta_min=0.0, eta_max=1.0, decay=1.0, warmup=0):
  return np.array(
    [reference.sgdr(int(t), t0, t_mult, eta_min, eta_max, decay, warmup) for t in steps]
  )


def test_array_of_counts_matches_reference_for_every_cycle_mult():
  """A schedule maps an array of counts elementwise, as optax's schedules do."""
  steps = np.arange(100)
  for t0, t_mult in [(4, 1), (4, 2), (3, 3), (4, 1.5)]:
    got = np.asarray(odx.cosine_warm_restarts(t0, t_mult)(jnp.asarray(steps)))
    want = sgdr_ref(steps, t0, t_mult)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"{t0=} {t_mult=}")
