"""The paper's optimizers: AdamW, SGDW, their warm-restart forms and L2 baselines."""

import jax
import jax.numpy as jnp
import optax

from optax_decoupled import _checks, _compensation
from optax_decoupled._adam import scale_by_adam
from optax_decoupled._masks import Mask
from optax_decoupled._schedules import (
  cosine_warm_restarts,
  restart_normalized_weight_decay,
)
from optax_decoupled._sharding import trace
from optax_decoupled._weight_decay import (
  add_decoupled_weight_decay,
  add_l2,
  as_schedule,
)

#: Default ``λ`` of the decoupled optimizers: at ``α = 1e-3`` it equals
#: ``torch.optim.AdamW(lr=1e-3, weight_decay=0.1)``, the usual choice for
#: transformers (PyTorch's ``λ_torch = λ / α``).
DEFAULT_WEIGHT_DECAY = 1e-4


def _scale_by_rate(learning_rate, schedule_multiplier, sign: float):
  """Multiplies updates by ``sign * α_t * η_t``, one count for both."""
  _checks.check_non_negative("learning_rate", learning_rate)
  if schedule_multiplier is not None:
    _checks.check_non_negative("schedule_multiplier", schedule_multiplier)
  alpha = as_schedule(learning_rate)
  eta = as_schedule(1.0 if schedule_multiplier is None else schedule_multiplier)
  inner = optax.scale_by_schedule(lambda count: sign * alpha(count) * eta(count))

  def update_fn(updates, state, params=None):
    # optax reads g.dtype: a Python-scalar gradient (as optax.sgd takes) as an array.
    updates = jax.tree.map(
      lambda g: g if g is None else jnp.asarray(g), updates, is_leaf=lambda g: g is None
    )
    return inner.update(updates, state, params)

  return optax.GradientTransformation(inner.init, update_fn)


def _momentum(momentum, nesterov):
  _checks.check_unit_interval("momentum", momentum)
  _checks.check_flag("nesterov", nesterov)
  return trace(momentum, nesterov=nesterov)


def _assemble(head, tail, *, compensation, seed, name, per_step=None, mask=None):
  """``chain(*head, *tail)``, ended by the compensation of rounding.

  With a compensation, updates leave ``head`` (the preconditioner) as float32
  on low-precision leaves and are rounded once, by
  :func:`compensate_rounding`. Without one, ``init`` warns when the decay
  ``per_step`` (``η_max λ``) rounds away on a low-precision leaf.
  """
  _compensation.check_compensation(compensation, seed)
  if compensation is not None:
    return optax.chain(
      *head,
      _compensation.carry_in_float32(),
      *tail,
      _compensation.compensate_rounding(compensation, seed=seed),
    )
  tx = optax.chain(*head, *tail)

  def init_fn(params):
    _compensation.warn_if_decay_rounds_away(params, per_step, mask, name)
    return tx.init(params)

  return optax.GradientTransformationExtraArgs(init_fn, tx.update)


def adamw(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  weight_decay: optax.ScalarOrSchedule = DEFAULT_WEIGHT_DECAY,
  schedule_multiplier: optax.Schedule | None = None,
  mask: Mask | None = None,
  mu_dtype: jax.typing.DTypeLike | None = None,
  nu_dtype: jax.typing.DTypeLike | None = None,
  nesterov: bool = False,
  amsgrad: bool = False,
  cautious: bool = False,
  corrected: bool = False,
  schedule_peak: jax.typing.ArrayLike | None = None,
  compensation: str | None = "auto",
  seed: jax.typing.ArrayLike = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW exactly as in the paper (Algorithm 2, decoupled weight decay).

  .. math::

    m_t &= β_1 m_{t-1} + (1-β_1) g_t, \quad v_t = β_2 v_{t-1} + (1-β_2) g_t^2 \\
    \hat m_t &= m_t / (1-β_1^t), \quad \hat v_t = v_t / (1-β_2^t) \\
    θ_t &= θ_{t-1} - η_t \left( α \hat m_t / (\sqrt{\hat v_t + ε_{root}} + ε)
           + λ θ_{t-1} \right)

  ``α`` is ``learning_rate``, ``λ`` is ``weight_decay`` and ``η_t`` is
  ``schedule_multiplier``. The decay is multiplied by ``η_t`` but **not** by
  ``α``, so learning rate and weight decay can be tuned independently.

  optax's and PyTorch's ``adamw`` multiply the decay by the whole learning
  rate instead. With a constant rate the two agree when ``λ = α λ_optax``:
  ``odx.adamw(a, weight_decay=a * wd)`` equals ``optax.adamw(a,
  weight_decay=wd)`` and ``torch.optim.AdamW(lr=a, weight_decay=wd)``.
  If ``learning_rate`` is a schedule ``α_t``, ``η_t`` still multiplies both
  terms and ``α_t`` only the Adam step.

  Every argument after ``learning_rate`` is keyword-only, in all the ready
  optimizers: ``optax.adamw`` orders its arguments differently (``mu_dtype``
  before ``weight_decay``), so ``odx.adamw(a, b1, b2, eps, eps_root, 1e-4)``
  would silently mean something else than the same call to optax.

  Args:
    learning_rate: ``α`` (>= 0) or a schedule of it.
    b1: ``β_1``, in [0, 1).
    b2: ``β_2``, in [0, 1).
    eps: ``ε`` added to ``sqrt(v̂)`` (>= 0).
    eps_root: ``ε_root`` added to ``v̂`` inside the root (>= 0).
    weight_decay: ``λ`` (>= 0) or a schedule ``λ_t``; the default ``1e-4``
      equals PyTorch's ``weight_decay=0.1`` at ``α = 1e-3``.
    schedule_multiplier: ``η_t``, a schedule; None means ``η_t = 1``.
    mask: leaves to decay: a pytree of bools or a callable from params to one
      (see :func:`mask_by_ndim`, :func:`mask_by_path`); None decays all.
      Under ``optax.inject_hyperparams`` pass ``static_args=("mask",)``, or
      the mask callable is taken for a schedule.
    mu_dtype: dtype of the first moment ``m`` (None: the gradient's).
    nesterov: use Nesterov momentum (as ``optax.scale_by_adam``).
    amsgrad: divide by the running maximum of ``v_t`` (AMSGrad), as
      ``torch.optim.AdamW(amsgrad=True)`` does (see :func:`scale_by_adam`).
    nu_dtype: dtype of the second moment ``v`` (None: the gradient's).
      ``jnp.bfloat16`` halves its memory, but a change smaller than 2^-9 of
      ``v`` is rounded away: with ``b2 = 0.999``, ``v`` no longer decays
      when ``g²`` falls below it (``tests/test_fast_paths.py`` measures the
      cost).
{variants_doc}
  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, optax_decoupled as odx
    >>> tx = odx.adamw(learning_rate=0.1, weight_decay=0.01)
    >>> params = {"w": jnp.array([1.0, 2.0])}
    >>> grads = {"w": jnp.array([0.5, -3.0])}
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> # First step: m̂/sqrt(v̂) = sign(g), so θ - (α sign(g) + λ θ).
    >>> optax.apply_updates(params, updates)["w"].round(4)
    Array([0.89, 2.08], dtype=float32)

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  decay = add_decoupled_weight_decay(
    weight_decay,
    schedule_multiplier,
    mask,
    cautious=cautious,
    corrected=corrected,
    schedule_peak=schedule_peak,
  )
  return _assemble(
    [
      scale_by_adam(
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        nesterov=nesterov,
        amsgrad=amsgrad,
      )
    ],
    [_scale_by_rate(learning_rate, schedule_multiplier, -1.0), decay],
    compensation=compensation,
    seed=seed,
    name="adamw",
    per_step=_compensation.decay_per_step(weight_decay, schedule_multiplier),
    mask=mask,
  )


def adam_l2(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  weight_decay: optax.ScalarOrSchedule = DEFAULT_WEIGHT_DECAY,
  schedule_multiplier: optax.Schedule | None = None,
  mask: Mask | None = None,
  mu_dtype: jax.typing.DTypeLike | None = None,
  nu_dtype: jax.typing.DTypeLike | None = None,
  nesterov: bool = False,
  amsgrad: bool = False,
  compensation: str | None = "auto",
  seed: jax.typing.ArrayLike = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam with L2 regularization, the paper's baseline (Algorithm 2, "Adam").

  .. math::

    g_t &\leftarrow g_t + λ θ_{t-1} \\
    θ_t &= θ_{t-1} - η_t α \hat m_t / (\sqrt{\hat v_t + ε_{root}} + ε)

  with ``m̂, v̂`` as in :func:`adamw`, computed from the regularized gradient:
  the decay passes through Adam's preconditioner. Arguments as in
  :func:`adamw`; ``λ`` here is the L2 coefficient (``optax.adam`` after
  ``optax.add_decayed_weights(λ)``, or ``torch.optim.Adam(weight_decay=λ)``).

  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> tx = odx.adam_l2(learning_rate=1e-3, weight_decay=1e-4)
    >>> params = {"w": jnp.ones(3)}
    >>> updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    >>> updates["w"]  # the L2 gradient alone, normalized by Adam: -α
    Array([-0.001, -0.001, -0.001], dtype=float32)
  """
  return _assemble(
    [
      add_l2(weight_decay, mask),
      scale_by_adam(
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nu_dtype=nu_dtype,
        nesterov=nesterov,
        amsgrad=amsgrad,
      ),
    ],
    [_scale_by_rate(learning_rate, schedule_multiplier, -1.0)],
    compensation=compensation,
    seed=seed,
    name="adam_l2",
  )


def sgdw(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: jax.typing.ArrayLike = 0.9,
  weight_decay: optax.ScalarOrSchedule = DEFAULT_WEIGHT_DECAY,
  schedule_multiplier: optax.Schedule | None = None,
  mask: Mask | None = None,
  nesterov: bool = False,
  cautious: bool = False,
  corrected: bool = False,
  schedule_peak: jax.typing.ArrayLike | None = None,
  compensation: str | None = "auto",
  seed: jax.typing.ArrayLike = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD with momentum and decoupled weight decay (Algorithm 1, "SGDW").

  .. math::

    m_t &= β m_{t-1} + η_t α g_t \\
    θ_t &= θ_{t-1} - m_t - η_t λ θ_{t-1}

  with ``β = momentum``. As in the paper, ``η_t α`` sits *inside* the
  momentum buffer (``optax.sgd`` scales after it, which differs when ``η_t``
  or ``α`` changes). With ``nesterov=True`` the step is
  ``β m_t + η_t α g_t`` instead of ``m_t``. The decay is not multiplied by
  ``α`` nor carried by the momentum. Arguments after ``learning_rate`` are
  keyword-only (as in :func:`adamw`).

  Args:
    learning_rate: ``α`` (>= 0) or a schedule of it.
    momentum: ``β``, in [0, 1).
    weight_decay: ``λ`` (>= 0) or a schedule ``λ_t``.
    schedule_multiplier: ``η_t``; None means 1.
    mask: leaves to decay; None decays all.
    nesterov: use Nesterov momentum.
{variants_doc}
  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> tx = odx.sgdw(learning_rate=0.1, momentum=0.9, weight_decay=0.01)
    >>> params = {"w": jnp.ones(2)}
    >>> updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> updates["w"]  # -α g - λ θ
    Array([-0.11, -0.11], dtype=float32)
  """
  decay = add_decoupled_weight_decay(
    weight_decay,
    schedule_multiplier,
    mask,
    cautious=cautious,
    corrected=corrected,
    schedule_peak=schedule_peak,
  )
  return _assemble(
    [
      _scale_by_rate(learning_rate, schedule_multiplier, 1.0),
      _momentum(momentum, nesterov),
      optax.scale(-1.0),
    ],
    [decay],
    compensation=compensation,
    seed=seed,
    name="sgdw",
    per_step=_compensation.decay_per_step(weight_decay, schedule_multiplier),
    mask=mask,
  )


def sgd_l2(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: jax.typing.ArrayLike = 0.9,
  weight_decay: optax.ScalarOrSchedule = DEFAULT_WEIGHT_DECAY,
  schedule_multiplier: optax.Schedule | None = None,
  mask: Mask | None = None,
  nesterov: bool = False,
  compensation: str | None = "auto",
  seed: jax.typing.ArrayLike = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD with momentum and L2 regularization (Algorithm 1, "SGD").

  .. math::

    m_t &= β m_{t-1} + η_t α (g_t + λ θ_{t-1}) \\
    θ_t &= θ_{t-1} - m_t

  Arguments as in :func:`sgdw`; ``λ`` is the L2 coefficient, as in
  ``torch.optim.SGD(weight_decay=λ)``.

  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> tx = odx.sgd_l2(learning_rate=0.1, weight_decay=0.01)
    >>> params = {"w": jnp.ones(2)}
    >>> updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> updates["w"]  # -α (g + λ θ)
    Array([-0.101, -0.101], dtype=float32)
  """
  return _assemble(
    [
      add_l2(weight_decay, mask),
      _scale_by_rate(learning_rate, schedule_multiplier, 1.0),
      _momentum(momentum, nesterov),
      optax.scale(-1.0),
    ],
    [],
    compensation=compensation,
    seed=seed,
    name="sgd_l2",
  )


def _restarts(
  first_cycle_steps,
  cycle_mult,
  min_value,
  max_value,
  cycle_decay,
  warmup_steps,
  weight_decay,
  normalize_weight_decay,
):
  """``η_t`` of SGDR and the weight decay, normalized per cycle if asked."""
  _checks.check_flag("normalize_weight_decay", normalize_weight_decay)
  eta = cosine_warm_restarts(
    first_cycle_steps, cycle_mult, min_value, max_value, cycle_decay, warmup_steps
  )
  if normalize_weight_decay:
    if callable(weight_decay):
      raise ValueError(
        f"weight_decay={weight_decay!r} must be a number (λ_norm) when "
        "normalize_weight_decay=True"
      )
    weight_decay = restart_normalized_weight_decay(
      weight_decay,
      first_cycle_steps=first_cycle_steps,
      cycle_mult=cycle_mult,
      warmup_steps=warmup_steps,
    )
  return eta, weight_decay


_RESTART_DOC = """
  ``η_t`` is :func:`cosine_warm_restarts` built from ``first_cycle_steps``,
  ``cycle_mult``, ``min_value``, ``max_value``, ``cycle_decay`` and
  ``warmup_steps`` (see there); the other arguments are those of :func:`{base}`.
  As in the authors' code, Adam's moments and step count are not reset at a
  restart. With ``normalize_weight_decay=True``, ``weight_decay`` is
  ``λ_norm`` and the decay in cycle ``i`` is ``λ_norm / sqrt(T_i)`` with
  ``T_i`` the cycle's length in steps (:func:`restart_normalized_weight_decay`).
  ``cautious=True`` and ``corrected=True`` are as in :func:`{base}`; the
  corrected decay's ``η_max`` is ``max_value``.

  Under ``optax.inject_hyperparams``, pass
  ``static_args=("first_cycle_steps", "cycle_mult", "warmup_steps")`` to keep
  restart steps exact at very large step counts.
"""


def adamwr(
  learning_rate: optax.ScalarOrSchedule,
  *,
  first_cycle_steps: jax.typing.ArrayLike,
  cycle_mult: jax.typing.ArrayLike = 1,
  min_value: jax.typing.ArrayLike = 0.0,
  max_value: jax.typing.ArrayLike = 1.0,
  cycle_decay: jax.typing.ArrayLike = 1.0,
  warmup_steps: jax.typing.ArrayLike = 0,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  eps_root: jax.typing.ArrayLike = 0.0,
  weight_decay: optax.ScalarOrSchedule = DEFAULT_WEIGHT_DECAY,
  mask: Mask | None = None,
  mu_dtype: jax.typing.DTypeLike | None = None,
  nu_dtype: jax.typing.DTypeLike | None = None,
  nesterov: bool = False,
  amsgrad: bool = False,
  normalize_weight_decay: bool = False,
  cautious: bool = False,
  corrected: bool = False,
  compensation: str | None = "auto",
  seed: jax.typing.ArrayLike = 0,
) -> optax.GradientTransformationExtraArgs:
  """AdamWR: :func:`adamw` with SGDR's cosine warm restarts as ``η_t``.
  {restart_doc}
  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> tx = odx.adamwr(1e-3, first_cycle_steps=100, cycle_mult=2,
    ...                 weight_decay=0.05, normalize_weight_decay=True)
    >>> params = {"w": jnp.ones(3)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.zeros(3)}, state, params)
    >>> updates["w"]  # -η_0 λ_norm / sqrt(100) θ
    Array([-0.005, -0.005, -0.005], dtype=float32)
  """
  eta, weight_decay = _restarts(
    first_cycle_steps,
    cycle_mult,
    min_value,
    max_value,
    cycle_decay,
    warmup_steps,
    weight_decay,
    normalize_weight_decay,
  )
  return adamw(
    learning_rate,
    b1=b1,
    b2=b2,
    eps=eps,
    eps_root=eps_root,
    weight_decay=weight_decay,
    schedule_multiplier=eta,
    mask=mask,
    mu_dtype=mu_dtype,
    nu_dtype=nu_dtype,
    nesterov=nesterov,
    amsgrad=amsgrad,
    cautious=cautious,
    corrected=corrected,
    compensation=compensation,
    seed=seed,
  )


def sgdwr(
  learning_rate: optax.ScalarOrSchedule,
  *,
  first_cycle_steps: jax.typing.ArrayLike,
  cycle_mult: jax.typing.ArrayLike = 1,
  min_value: jax.typing.ArrayLike = 0.0,
  max_value: jax.typing.ArrayLike = 1.0,
  cycle_decay: jax.typing.ArrayLike = 1.0,
  warmup_steps: jax.typing.ArrayLike = 0,
  momentum: jax.typing.ArrayLike = 0.9,
  weight_decay: optax.ScalarOrSchedule = DEFAULT_WEIGHT_DECAY,
  mask: Mask | None = None,
  nesterov: bool = False,
  normalize_weight_decay: bool = False,
  cautious: bool = False,
  corrected: bool = False,
  compensation: str | None = "auto",
  seed: jax.typing.ArrayLike = 0,
) -> optax.GradientTransformationExtraArgs:
  """SGDWR: :func:`sgdw` with SGDR's cosine warm restarts as ``η_t``.
  {restart_doc}
  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> tx = odx.sgdwr(0.1, first_cycle_steps=10, weight_decay=1e-3)
    >>> params = {"w": jnp.ones(2)}
    >>> updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> updates["w"]  # η_0 = 1: -(α g + λ θ)
    Array([-0.101, -0.101], dtype=float32)
  """
  eta, weight_decay = _restarts(
    first_cycle_steps,
    cycle_mult,
    min_value,
    max_value,
    cycle_decay,
    warmup_steps,
    weight_decay,
    normalize_weight_decay,
  )
  return sgdw(
    learning_rate,
    momentum=momentum,
    weight_decay=weight_decay,
    schedule_multiplier=eta,
    mask=mask,
    nesterov=nesterov,
    cautious=cautious,
    corrected=corrected,
    compensation=compensation,
    seed=seed,
  )


_VARIANTS_DOC = """    cautious: decay entry ``i`` only where the {step} step ``u`` (the
      update before the decay, ``θ`` moving by ``u``) has ``u_i θ_i <= 0``:
      Chen et al.'s cautious decay, ``-η_t λ 1[u θ <= 0] θ``.
    corrected: scale the decay by ``η_t / η_max`` (Defazio's "AdamC"): the
      per-step decay is ``λ η_t² / η_max`` instead of ``η_t λ``.
    schedule_peak: ``η_max`` for ``corrected=True`` (> 0); needed only when
      ``schedule_multiplier`` is a schedule that does not carry its peak
      (:func:`cosine_warm_restarts` and :func:`with_peak` do).
    compensation: how the update survives rounding to low-precision
      parameters (:func:`compensate_rounding`): ``"auto"`` (Kahan on leaves
      with fewer significand bits than float32; float32, float64 and complex
      leaves are untouched, bitwise), ``"kahan"`` (every real floating leaf),
      ``"stochastic"`` or None. With None, ``init`` warns if ``η_max λ`` is
      below half the spacing of a decayed leaf's dtype (the decay is lost).
    seed: integer seed of stochastic rounding.
"""
adamw.__doc__ = (adamw.__doc__ or "").replace(
  "{variants_doc}", _VARIANTS_DOC.format(step="Adam")
)
sgdw.__doc__ = (sgdw.__doc__ or "").replace(
  "{variants_doc}", _VARIANTS_DOC.format(step="momentum (``-m_t``)")
)
adamwr.__doc__ = (adamwr.__doc__ or "").replace(
  "{restart_doc}", _RESTART_DOC.format(base="adamw")
)
sgdwr.__doc__ = (sgdwr.__doc__ or "").replace(
  "{restart_doc}", _RESTART_DOC.format(base="sgdw")
)
