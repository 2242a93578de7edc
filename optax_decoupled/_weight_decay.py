"""Weight decay as a gradient term (L2) or as a decoupled shrink of the weights."""

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_decoupled import _checks, _decay_variants
from optax_decoupled._adam import compute_dtype
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


def _add_scaled_params(updates, params, scale, mask, cautious=False):
  """``updates + scale * params`` on the leaves the mask selects.

  The product is formed in the parameter's dtype, so bf16 parameters give bf16
  updates (and complex ones complex: both parts shrink alike). Unselected
  leaves (a ``False`` mask bit, or ``False`` elements of a bool array) pass
  through untouched; a ``None`` update (a leaf without a gradient, as optax
  allows) stays ``None``. ``cautious`` adds the term only where
  ``updates · params <= 0``.
  """

  def leaf(u, p, bit=True):
    if u is None:
      return None
    u, p = jnp.asarray(u), jnp.asarray(p)
    if isinstance(bit, bool | np.bool_) and not bit:
      return u
    # float32 at least: a bf16 product would round η_t λ to 8 bits first.
    dt = compute_dtype(p.dtype)
    term = (jnp.asarray(scale, dt) * p.astype(dt)).astype(u.dtype)
    if cautious:
      term = jnp.where(_decay_variants.cautious_gate(u, p), term, jnp.zeros_like(term))
    new = u + term
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
  *,
  cautious: bool = False,
  corrected: bool = False,
  schedule_peak: jax.typing.ArrayLike | None = None,
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
    cautious: decay entry ``i`` only where ``u_i θ_i <= 0``, ``u`` the
      incoming update (the step already moves ``θ_i`` toward zero, or is
      zero): Chen et al.'s cautious weight decay, ``-η_t λ_t 1[u θ <= 0] θ``.
    corrected: multiply the decay by ``η_t / η_max`` (Defazio's corrected
      decay, "AdamC"): the per-step decay becomes ``λ_t η_t² / η_max``.
    schedule_peak: ``η_max`` for ``corrected=True`` (> 0). Not needed when
      ``schedule_multiplier`` is None (``η_max = 1``), a number, or a
      schedule that carries its peak (:func:`cosine_warm_restarts`,
      :func:`with_peak`); for any other schedule it is required.

  Cautious decay in optax is ``optax.contrib.add_cautious_weight_decay(wd)``,
  placed *before* the learning rate, with the sign test on the descent
  direction (``sign(d) sign(θ) >= 0``, the update being ``-lr d``, the same
  entries as ``u θ <= 0`` here). With a constant rate ``α`` and ``lr_t = α
  η_t``, optax's ``wd`` is this ``λ = α wd``.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``.
    Its state is the same whatever ``cautious`` and ``corrected`` are.

  Raises:
    TypeError: ``cautious`` or ``corrected`` is not a bool.
    ValueError: ``corrected=True`` and the peak of ``schedule_multiplier`` is
      unknown.

  Example:
    >>> import jax.numpy as jnp, optax, optax_decoupled as odx
    >>> tx = optax.chain(optax.sgd(0.1), odx.add_decoupled_weight_decay(0.01))
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> grads = {"w": jnp.zeros(2)}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates["w"]
    Array([-0.01,  0.02], dtype=float32)
    >>> # Cautious: a gradient pushing w[0] away from zero spares it the decay.
    >>> tx = optax.chain(optax.sgd(0.1),
    ...                  odx.add_decoupled_weight_decay(0.01, cautious=True))
    >>> updates, _ = tx.update({"w": jnp.array([-1.0, -1.0])}, tx.init(params),
    ...                        params)
    >>> updates["w"]  # 0.1 alone on w[0]; 0.1 + 0.02 on w[1]
    Array([0.1 , 0.12], dtype=float32)

  References:
    Chen et al., `Cautious Weight Decay <https://arxiv.org/abs/2510.12402>`_,
    2025. Defazio, `Why Gradients Rapidly Increase Near the End of Training
    <https://arxiv.org/abs/2506.02285>`_, 2025.
  """
  _checks.check_non_negative("weight_decay", weight_decay)
  if schedule_multiplier is not None:
    _checks.check_non_negative("schedule_multiplier", schedule_multiplier)
  check_mask("mask", mask)
  _decay_variants.check_flag("cautious", cautious)
  _decay_variants.check_flag("corrected", corrected)
  peak = _decay_variants.schedule_peak_of(
    schedule_multiplier, schedule_peak, corrected=corrected
  )
  decay = as_schedule(weight_decay)
  eta = as_schedule(1.0 if schedule_multiplier is None else schedule_multiplier)

  def init_fn(params):
    del params
    return DecoupledWeightDecayState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    _require_params(params, "add_decoupled_weight_decay")
    eta_t = jnp.asarray(eta(state.count), jnp.float32)
    scale = -eta_t * jnp.asarray(decay(state.count), jnp.float32)
    if corrected:
      scale = scale * _decay_variants.correction(eta_t, peak)
    updates = _add_scaled_params(
      updates, params, scale, resolve_mask(mask, params), cautious
    )
    return updates, DecoupledWeightDecayState(
      count=jnp.asarray(optax.safe_increment(state.count))
    )

  return optax.GradientTransformation(init_fn, update_fn)


def with_decoupled_weight_decay(
  tx: optax.GradientTransformation,
  weight_decay: optax.ScalarOrSchedule,
  schedule_multiplier: optax.Schedule | None = None,
  mask: Mask | None = None,
  *,
  cautious: bool = False,
  corrected: bool = False,
  schedule_peak: jax.typing.ArrayLike | None = None,
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
    cautious: cautious decay (see :func:`add_decoupled_weight_decay`).
    corrected: corrected decay (see :func:`add_decoupled_weight_decay`).
    schedule_peak: ``η_max`` for ``corrected=True``, where not known.

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
    tx,
    add_decoupled_weight_decay(
      weight_decay,
      schedule_multiplier,
      mask,
      cautious=cautious,
      corrected=corrected,
      schedule_peak=schedule_peak,
    ),
  )
