"""Weight decay as a gradient term (L2) or as a decoupled shrink of the weights."""

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_decoupled import _checks
from optax_decoupled._masks import Mask, check_mask, resolve_mask


class AddL2State(NamedTuple):
  """State of :func:`add_l2`: the step count that drives a ``λ`` schedule."""

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride] (int32)


class DecoupledWeightDecayState(NamedTuple):
  """State of :func:`add_decoupled_weight_decay`: the step count of ``η_t``, ``λ_t``."""

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride] (int32)


def as_schedule(value: Any) -> optax.Schedule:
  """A constant or a schedule, as a schedule."""
  if callable(value):
    return cast(optax.Schedule, value)
  return lambda count: value


def _add_scaled_params(updates, params, scale, mask):
  """``updates + scale * params`` on the leaves the mask selects.

  The product is formed in the parameter's dtype, so bf16 parameters give bf16
  updates (and complex ones complex: both parts shrink alike). Unselected
  leaves (a ``False`` mask bit, or ``False`` elements of a bool array) pass
  through untouched; a ``None`` update (a leaf without a gradient, as optax
  allows) stays ``None``.
  """

  def leaf(u, p, bit=True):
    if u is None:
      return None
    u, p = jnp.asarray(u), jnp.asarray(p)
    if isinstance(bit, bool | np.bool_) and not bit:
      return u
    new = u + (jnp.asarray(scale, p.dtype) * p).astype(u.dtype)
    return new if isinstance(bit, bool | np.bool_) else jnp.where(bit, new, u)

  is_none = lambda x: x is None  # noqa: E731
  if mask is None:
    return jax.tree.map(leaf, updates, params, is_leaf=is_none)

  def masked(bit, u, p):
    bit = False if bit is None else bit
    return jax.tree.map(lambda ui, pi: leaf(ui, pi, bit), u, p, is_leaf=is_none)

  return jax.tree.map(masked, mask, updates, params, is_leaf=is_none)


def _require_params(params, name):
  if params is None:
    raise ValueError(
      f"{name} needs the parameters: call update(updates, state, params), "
      "got params=None"
    )


def add_l2(
  weight_decay: optax.ScalarOrSchedule, mask: Mask | None = None
) -> optax.GradientTransformation:
  r"""Adds the L2 penalty's gradient ``λ_t θ`` to the incoming gradient.

  .. math::

    g_t \leftarrow g_t + λ_t θ_{t-1}

  This is coupled L2 regularization, the gradient of ``λ/2 ||θ||²``: put it
  *before* a preconditioner such as ``scale_by_adam`` (Algorithms 1 and 2 of
  the paper, "SGD" and "Adam" with L2). With Adam the term is then divided by
  ``sqrt(v̂)`` like the rest of the gradient, which is what decoupling avoids.

  Args:
    weight_decay: ``λ`` (>= 0) or a schedule of it.
    mask: which leaves get the term: a pytree of bools or a callable from
      params to one (see :func:`mask_by_ndim`). None decays every leaf.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, optax_decoupled as odx
    >>> tx = odx.add_l2(0.1)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> grads = {"w": jnp.zeros(2)}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["w"]
    Array([ 0.1, -0.2], dtype=float32)
  """
  _checks.check_non_negative("weight_decay", weight_decay)
  check_mask("mask", mask)
  decay = as_schedule(weight_decay)

  def init_fn(params):
    del params
    return AddL2State(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    _require_params(params, "add_l2")
    scale = jnp.asarray(decay(state.count), jnp.float32)
    updates = _add_scaled_params(updates, params, scale, resolve_mask(mask, params))
    return updates, AddL2State(count=jnp.asarray(optax.safe_increment(state.count)))

  return optax.GradientTransformation(init_fn, update_fn)


def add_decoupled_weight_decay(
  weight_decay: optax.ScalarOrSchedule,
  schedule_multiplier: optax.Schedule | None = None,
  mask: Mask | None = None,
) -> optax.GradientTransformation:
  r"""Adds the paper's decoupled decay ``-η_t λ_t θ_{t-1}`` to the update.

  .. math::

    u_t \leftarrow u_t - η_t λ_t θ_{t-1}

  Goes **last** in a chain, after the learning-rate scaling, so that the decay
  is not preconditioned and not multiplied by the base learning rate ``α``:
  ``λ`` is the fraction of the weights removed per step at ``η_t = 1``. This
  is the paper's decoupling; optax's ``add_decayed_weights`` goes *before*
  the learning rate and is multiplied by it.

  Args:
    weight_decay: ``λ`` (>= 0) or a schedule ``λ_t`` (for instance
      :func:`restart_normalized_weight_decay`).
    schedule_multiplier: ``η_t``, the schedule that also multiplies the
      learning rate (for instance :func:`cosine_warm_restarts`); None means
      ``η_t = 1``.
    mask: which leaves are decayed: a pytree of bools or a callable from
      params to one. None decays every leaf.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, optax_decoupled as odx
    >>> tx = optax.chain(optax.sgd(0.1), odx.add_decoupled_weight_decay(0.01))
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> grads = {"w": jnp.zeros(2)}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["w"]
    Array([-0.01,  0.02], dtype=float32)
  """
  _checks.check_non_negative("weight_decay", weight_decay)
  if schedule_multiplier is not None:
    _checks.check_non_negative("schedule_multiplier", schedule_multiplier)
  check_mask("mask", mask)
  decay = as_schedule(weight_decay)
  eta = as_schedule(1.0 if schedule_multiplier is None else schedule_multiplier)

  def init_fn(params):
    del params
    return DecoupledWeightDecayState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    _require_params(params, "add_decoupled_weight_decay")
    scale = -jnp.asarray(eta(state.count), jnp.float32) * jnp.asarray(
      decay(state.count), jnp.float32
    )
    updates = _add_scaled_params(updates, params, scale, resolve_mask(mask, params))
    return updates, DecoupledWeightDecayState(
      count=jnp.asarray(optax.safe_increment(state.count))
    )

  return optax.GradientTransformation(init_fn, update_fn)


def with_decoupled_weight_decay(
  tx: optax.GradientTransformation,
  weight_decay: optax.ScalarOrSchedule,
  schedule_multiplier: optax.Schedule | None = None,
  mask: Mask | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Makes any optax optimizer decoupled: ``tx`` then ``-η_t λ_t θ_{t-1}``.

  ``tx`` must produce the final update, learning rate included (any optax
  alias does). Turn off the inner optimizer's own weight decay, if it has one
  (``optax.lion`` decays by default), so the weights are not decayed twice.
  To have ``η_t`` multiply the learning rate as well, build ``tx`` with
  ``learning_rate=lambda t: alpha * eta(t)``.

  Args:
    tx: the optimizer to decouple.
    weight_decay: ``λ`` (>= 0) or a schedule of it.
    schedule_multiplier: ``η_t``; None means 1.
    mask: which leaves are decayed; None decays all.

  Returns:
    ``optax.chain(tx, add_decoupled_weight_decay(...))``.

  Example:
    >>> import jax.numpy as jnp, optax, optax_decoupled as odx
    >>> tx = odx.with_decoupled_weight_decay(
    ...     optax.lion(1e-4, weight_decay=0.0), weight_decay=1e-3)
    >>> params = {"w": jnp.ones(3)}
    >>> updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    >>> updates["w"]  # -1e-4 * sign(g) - 1e-3 * w
    Array([-0.0011, -0.0011, -0.0011], dtype=float32)
  """
  _checks.check_transformation("tx", tx)
  return optax.chain(
    tx, add_decoupled_weight_decay(weight_decay, schedule_multiplier, mask)
  )
