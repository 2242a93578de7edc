"""Adam's preconditioner, with state dtypes of its own and sharded moments."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_decoupled import _checks, _fused
from optax_decoupled._sharding import tree_zeros_like_params

#: The state of :func:`scale_by_adam` is optax's own (``count``, ``mu``,
#: ``nu``), so optax's state utilities, ``isinstance`` checks and checkpoints
#: written by ``optax.scale_by_adam`` treat the two alike.
ScaleByAdamState = optax.ScaleByAdamState


def scale_by_adam(
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  mu_dtype: jax.typing.DTypeLike | None = None,
  nu_dtype: jax.typing.DTypeLike | None = None,
  *,
  nesterov: bool = False,
  amsgrad: bool = False,
) -> optax.GradientTransformation:
  r"""Rescales updates by Adam's bias-corrected moments.

  .. math::

    m_t &= β_1 m_{t-1} + (1-β_1) g_t, \quad v_t = β_2 v_{t-1} + (1-β_2) |g_t|^2 \\
    u_t &= \frac{m_t / (1-β_1^t)}{\sqrt{v_t / (1-β_2^t) + ε_{root}} + ε}

  The same update as ``optax.scale_by_adam`` (Nesterov's form included), with
  three differences: the moments can be stored in a smaller dtype
  (``mu_dtype`` and ``nu_dtype``, say ``jnp.bfloat16`` to halve the state),
  the arithmetic is done in at least float32 whatever the storage dtype (the
  step uses ``m_t, v_t`` as stored, rounded to that dtype: one pass over
  memory, where optax's unrounded step costs XLA a copy of the state), and
  the moments keep the parameters' sharding under ``jax.jit(tx.init)``.
  For a complex parameter, as in optax, ``m`` is complex and ``v`` holds the
  real ``|g|² = g conj(g)`` (stored in the parameter's dtype unless
  ``nu_dtype`` says otherwise, e.g. ``jnp.float32``).

  Args:
    b1: ``β_1``, in [0, 1), and below 1 in float32.
    b2: ``β_2``, in [0, 1), and below 1 in float32 (``0.99999999`` is 1.0).
    eps: ``ε`` (>= 0).
    eps_root: ``ε_root`` (>= 0).
    mu_dtype: storage dtype of ``m``, floating or complex (None: the
      parameter's; complex for a complex parameter).
    nu_dtype: storage dtype of ``v``, floating or complex (None: the
      parameter's).
    nesterov: use Nesterov momentum.
    amsgrad: divide by the running maximum of ``v_t`` instead (AMSGrad), as
      PyTorch's ``amsgrad=True`` does it: ``v̂_t = max_{s<=t} v_s / (1-β_2^t)``,
      the maximum of the raw second moment, bias-corrected at step ``t``
      (``optax.scale_by_amsgrad`` takes the maximum of the bias-corrected
      moments instead). The state is then optax's ``ScaleByAmsgradState``
      (``count``, ``mu``, ``nu``, ``nu_max``; ``nu_max`` in ``nu``'s dtype).

  Returns:
    An ``optax.GradientTransformation`` with state :class:`ScaleByAdamState`
    (``optax.ScaleByAmsgradState`` with ``amsgrad=True``).

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
  _checks.check_state_dtype("mu_dtype", mu_dtype)
  _checks.check_state_dtype("nu_dtype", nu_dtype)
  _checks.check_flag("nesterov", nesterov)
  _checks.check_flag("amsgrad", amsgrad)

  def init_fn(params):
    _check_complex_mu(params, mu_dtype)
    count = jnp.zeros([], jnp.int32)
    mu = tree_zeros_like_params(params, mu_dtype)
    nu = tree_zeros_like_params(params, nu_dtype)
    if amsgrad:
      nu_max = tree_zeros_like_params(params, nu_dtype)
      return optax.ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)
    return ScaleByAdamState(count=count, mu=mu, nu=nu)

  def update_fn(updates, state, params=None):
    del params
    count = jnp.asarray(optax.safe_increment(state.count))
    one_pass = _fused.multi_output_fusion()

    def leaf(g, m, v, v_max=None):
      g = jnp.asarray(g)
      dt = compute_dtype(g.dtype)  # complex for complex leaves
      rt = jnp.finfo(dt).dtype  # its real counterpart
      complex_leaf = jnp.issubdtype(dt, jnp.complexfloating)
      beta1, beta2 = jnp.asarray(b1, rt), jnp.asarray(b2, rt)
      c1 = beta1.astype(dt)
      t = count.astype(rt)
      gd = g.astype(dt)
      # (1 - β) |g|², real: g * conj(g) for a complex leaf, as optax. A real
      # leaf keeps the grouping ((1 - β) g) g: XLA then merges the loops of
      # the one-pass form (see _fused), which it does not for (1 - β) (g g).
      sq = jnp.real(gd * jnp.conj(gd)) if complex_leaf else None

      def scaled_sq(c):
        return c * sq if complex_leaf else c * gd * gd

      fuse = (
        one_pass
        and g.size >= _fused.ONE_PASS_MIN_SIZE
        and not complex_leaf
        and not amsgrad
      )
      d1, d2 = _fused.distinct(beta1, beta2) if fuse else (beta1, beta2)
      m_new = (c1 * m.astype(dt) + (1 - c1) * gd).astype(m.dtype)
      v_new = (beta2 * _real(v, rt) + scaled_sq(1 - beta2)).astype(v.dtype)
      # The step reads the moments as stored. A moment kept in a narrower
      # dtype (bf16) is read back rounded: recomputing the unrounded value
      # from the old moment, which the new one overwrites in place, would make
      # XLA copy the state. One pass (see _fused): a full-precision moment is
      # recomputed from the old one, a sibling of m_new and v_new.
      m_step = m_new.astype(dt)
      if fuse and m.dtype == dt:
        m_step = d1 * m + (1 - d1) * gd
      v_step = _real(v_new, rt)
      if fuse and v.dtype == rt:
        v_step = d2 * v + scaled_sq(1 - d2)
      if v_max is not None:  # AMSGrad: the largest v so far, as stored
        v_max = jnp.maximum(_real(v_max, rt), v_step).astype(v_max.dtype)
        v_step = _real(v_max, rt)
      if nesterov:
        m_hat = c1 * m_step / (1 - beta1 ** (t + 1)).astype(dt) + (1 - c1) * gd / (
          1 - beta1**t
        ).astype(dt)
      else:
        m_hat = m_step / (1 - beta1**t).astype(dt)
      v_hat = v_step / (1 - beta2**t)
      denom = jnp.sqrt(v_hat + jnp.asarray(eps_root, rt)) + jnp.asarray(eps, rt)
      u = m_hat / denom.astype(dt)
      return u.astype(g.dtype), m_new, v_new, v_max

    treedef = jax.tree.structure(updates)
    moments = (state.mu, state.nu, *((state.nu_max,) if amsgrad else ()))
    out = treedef.flatten_up_to(jax.tree.map(leaf, updates, *moments))
    u, mu, nu, nu_max = (treedef.unflatten([o[k] for o in out]) for k in range(4))
    if amsgrad:
      return u, optax.ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)
    return u, ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def compute_dtype(dtype: Any) -> Any:
  """The dtype the step is computed in: ``dtype``, at least 32 bits."""
  # promote_types would raise under strict promotion.
  if jnp.finfo(dtype).bits >= 32:
    return jnp.dtype(dtype)
  return jnp.dtype(jnp.float32)


def _real(x: jax.Array, dtype: Any) -> jax.Array:
  """A moment that is real in value (``v``) as ``dtype``, whatever it is stored in."""
  return (jnp.real(x) if jnp.iscomplexobj(x) else x).astype(dtype)


def _check_complex_mu(params: Any, mu_dtype: Any) -> None:
  """A complex leaf needs a complex ``m``: a real one drops the imaginary part."""
  if mu_dtype is None or jnp.issubdtype(mu_dtype, jnp.complexfloating):
    return
  for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
    if jnp.iscomplexobj(p):
      raise ValueError(
        f"mu_dtype={mu_dtype!r} is real but the parameter "
        f"{jax.tree_util.keystr(path)} is {jnp.dtype(p.dtype).name}: the first "
        "moment of a complex parameter needs a complex dtype (or None)"
      )
