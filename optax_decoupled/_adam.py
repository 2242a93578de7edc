"""Adam's preconditioner, with state dtypes of its own and sharded moments."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_decoupled import _checks, _fused
from optax_decoupled._sharding import tree_zeros_like_params


class ScaleByAdamState(NamedTuple):
  """State of :func:`scale_by_adam`: the step count and the two moments."""

  count: jax.Array  # int32 scalar
  mu: Any
  nu: Any


def scale_by_adam(
  b1: Any = 0.9,
  b2: Any = 0.999,
  eps: Any = 1e-8,
  eps_root: Any = 0.0,
  mu_dtype: Any = None,
  nu_dtype: Any = None,
  *,
  nesterov: bool = False,
) -> optax.GradientTransformation:
  r"""Rescales updates by Adam's bias-corrected moments.

  .. math::

    m_t &= β_1 m_{t-1} + (1-β_1) g_t, \quad v_t = β_2 v_{t-1} + (1-β_2) g_t^2 \\
    u_t &= \frac{m_t / (1-β_1^t)}{\sqrt{v_t / (1-β_2^t) + ε_{root}} + ε}

  The same update as ``optax.scale_by_adam`` (Nesterov's form included), with
  three differences: the moments can be stored in a smaller dtype
  (``mu_dtype`` and ``nu_dtype``, say ``jnp.bfloat16`` to halve the state),
  the arithmetic is done in at least float32 whatever the storage dtype (the
  step uses ``m_t, v_t`` as stored, rounded to that dtype: one pass over
  memory, where optax's unrounded step costs XLA a copy of the state), and
  the moments keep the parameters' sharding under ``jax.jit(tx.init)``.

  Args:
    b1: ``β_1``, in [0, 1).
    b2: ``β_2``, in [0, 1).
    eps: ``ε`` (>= 0).
    eps_root: ``ε_root`` (>= 0).
    mu_dtype: storage dtype of ``m`` (None: the parameter's).
    nu_dtype: storage dtype of ``v`` (None: the parameter's).
    nesterov: use Nesterov momentum.

  Returns:
    An ``optax.GradientTransformation`` with state :class:`ScaleByAdamState`.

  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> tx = odx.scale_by_adam(mu_dtype=jnp.bfloat16)
    >>> state = tx.init({"w": jnp.zeros(3)})
    >>> state.mu["w"].dtype, state.nu["w"].dtype
    (dtype(bfloat16), dtype('float32'))
  """
  _checks.check_unit_interval("b1", b1)
  _checks.check_unit_interval("b2", b2)
  _checks.check_non_negative("eps", eps)
  _checks.check_non_negative("eps_root", eps_root)

  def init_fn(params):
    return ScaleByAdamState(
      count=jnp.zeros([], jnp.int32),
      mu=tree_zeros_like_params(params, mu_dtype),
      nu=tree_zeros_like_params(params, nu_dtype),
    )

  def update_fn(updates, state, params=None):
    del params
    count = optax.safe_increment(state.count)
    one_pass = _fused.multi_output_fusion()

    def leaf(g, m, v):
      # At least float32; promote_types would raise under strict promotion.
      dt = g.dtype if jnp.finfo(g.dtype).bits >= 32 else jnp.dtype(jnp.float32)
      beta1, beta2 = jnp.asarray(b1, dt), jnp.asarray(b2, dt)
      t = count.astype(dt)
      g32 = g.astype(dt)
      fuse = one_pass and g.size >= _fused.ONE_PASS_MIN_SIZE
      c1, c2 = _fused.distinct(beta1, beta2) if fuse else (beta1, beta2)
      m_new = (beta1 * m.astype(dt) + (1 - beta1) * g32).astype(m.dtype)
      v_new = (beta2 * v.astype(dt) + (1 - beta2) * g32 * g32).astype(v.dtype)
      # The step reads the moments as stored. A moment kept in a narrower
      # dtype (bf16) is read back rounded: recomputing the unrounded value
      # from the old moment, which the new one overwrites in place, would make
      # XLA copy the state. One pass (see _fused): a full-precision moment is
      # recomputed from the old one, a sibling of m_new and v_new.
      m_step = m_new.astype(dt)
      if fuse and m.dtype == dt:
        m_step = c1 * m + (1 - c1) * g32
      v_step = v_new.astype(dt)
      if fuse and v.dtype == dt:
        v_step = c2 * v + (1 - c2) * g32 * g32
      if nesterov:
        m_hat = beta1 * m_step / (1 - beta1 ** (t + 1)) + (1 - beta1) * g32 / (
          1 - beta1**t
        )
      else:
        m_hat = m_step / (1 - beta1**t)
      v_hat = v_step / (1 - beta2**t)
      u = m_hat / (jnp.sqrt(v_hat + jnp.asarray(eps_root, dt)) + jnp.asarray(eps, dt))
      return u.astype(g.dtype), m_new, v_new

    out = jax.tree.map(leaf, updates, state.mu, state.nu)
    u, mu, nu = jax.tree.transpose(
      jax.tree.structure(updates), jax.tree.structure((0, 0, 0)), out
    )
    return u, ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
