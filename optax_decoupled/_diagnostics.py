r"""Rotational equilibrium (Kosson et al. 2023): measure it, predict it.

A weight followed by a normalization (a scale-invariant weight ``θ``: the loss
does not change when ``θ`` is scaled) gets gradients orthogonal to ``θ``. The
gradient steps make ``‖θ‖`` grow, decoupled decay makes it shrink, and the two
balance at an equilibrium norm where the step turns ``θ`` by a fixed angle
per step, whatever the learning rate ``α``. What follows holds in the paper's
convention (decay ``η_t λ θ`` per step) under Kosson's random-walk assumptions:
successive gradients uncorrelated, ``η λ`` small against ``1 - β``.

**AdamW.** Each gradient ends up moving ``θ`` by ``η α g / sqrt(v)`` in all
(the EMA weights of ``m`` sum to 1), orthogonal to ``θ``: the norm grows by
``(η α)² C`` per step (``C``: entries of the leaf) and the decay removes
``2 η λ r²``, so ``r² = η α² C / (2 λ)`` at equilibrium. One step's move
``η α m̂ / sqrt(v̂)`` has squared norm ``(η α)² C (1-β_1)/(1+β_1)`` (an EMA
of uncorrelated unit gradients), hence the angular update
``sqrt(2 η λ (1-β_1)/(1+β_1))``.

**SGDW** (Algorithm 1: ``m_t = β m_{t-1} + η α g_t``, ``θ_t = θ_{t-1} - m_t
- η λ θ_{t-1}``). Each gradient moves ``θ`` by ``η α g / (1-β)`` in all, so
the balance is ``2 η λ r² = (η α ‖g‖ / (1-β))²``; one step moves it by
``m_t``, ``‖m‖² = (η α ‖g‖)² / (1-β²)``. The ratio gives the **same form**,
``sqrt(2 η λ (1-β)/(1+β))`` with ``β`` the momentum. (Kosson's SGDM, with the
decay inside the momentum, has ``sqrt(2 η λ / (1+β))``: its decay is
``η λ / (1-β)`` per step in effect, which gives the same expression.)

**Time to equilibrium.** For AdamW ``r²`` relaxes as ``dr²/dt = -2ηλ r² +
const``; for SGDW, ``‖g‖ ∝ 1/r`` and ``r⁴`` relaxes as ``dr⁴/dt = -4ηλ r⁴ +
const``. In both cases the angular update is ``ω* / sqrt(1 + δ_0 e^{-t/τ})``
with ``τ = 1/(2ηλ)`` (AdamW) or ``1/(4ηλ)`` (SGDW) and ``δ_0`` the initial
relative excess of ``r²`` (AdamW) or ``r⁴`` (SGDW) over its equilibrium.

**Measured** (``tests/test_diagnostics.py``: an MLP whose first kernel is
followed by a layer normalization, a noisy teacher task, fresh batches):
measured / predicted angular update 0.98 to 1.03 for AdamW at ``α = 1e-3``
and 1.00 to 1.03 for SGDW for ``λ`` from 1e-4 to 1e-1; at ``α = 1e-2`` AdamW
runs 1.02 to 1.19 above the prediction, the most at the smallest ``λ``
(successive gradients are then no longer uncorrelated). From a kernel 20
times too large the fitted relaxation time is within 20 % of ``τ``; from
one far too *small*, the first steps are not small and the approach is
slower (AdamW: Adam's ``v`` remembers the early, large gradients for about
``1/(1-β_2)`` steps).
"""

from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from optax_decoupled._conventions import check_number

_RELAXATION_RATE = {"adamw": 2.0, "sgdw": 4.0}


def _check_optimizer(optimizer: Any) -> None:
  if optimizer not in _RELAXATION_RATE:
    raise ValueError(f"{optimizer=} must be one of {sorted(_RELAXATION_RATE)}")


def _check_unit(name: str, value: Any) -> None:
  check_number(name, value, allow_zero=True)
  if not isinstance(value, jax.core.Tracer) and np.any(np.asarray(value) >= 1):
    raise ValueError(f"{name}={value!r} must be in [0, 1)")


def angular_update(params: Any, new_params: Any) -> Any:
  r"""Per leaf, the relative size of a step: ``‖θ_t - θ_{t-1}‖ / ‖θ_{t-1}‖``.

  For a small step this is the angle (in radians) by which the step turns the
  leaf, plus its relative change of norm (of order ``η λ`` at equilibrium).
  Norms are taken over the whole leaf, in at least float32. A leaf whose
  ``‖θ_{t-1}‖`` is 0 (a bias initialized at zero) has no direction to turn:
  its value is defined as 0, never ``inf`` or ``nan``. Jittable.

  Args:
    params: ``θ_{t-1}``, a pytree of arrays.
    new_params: ``θ_t``, a pytree of the same structure.

  Returns:
    A pytree of the same structure holding a scalar per leaf.

  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> old = {"w": jnp.array([3.0, 4.0]), "b": jnp.zeros(2)}
    >>> new = {"w": jnp.array([3.0, 4.5]), "b": jnp.ones(2)}
    >>> odx.angular_update(old, new)
    {'b': Array(0., dtype=float32), 'w': Array(0.1, dtype=float32)}
  """

  def leaf(p, q):
    p, q = jnp.asarray(p), jnp.asarray(q)
    # At least float32; complex leaves stay complex (their norm is of |θ|).
    if jnp.iscomplexobj(p):
      dtype = jnp.complex128 if p.dtype == jnp.complex128 else jnp.complex64
    else:
      dtype = jnp.float64 if p.dtype == jnp.float64 else jnp.float32
    real = jnp.finfo(dtype).dtype
    p, q = p.astype(dtype), q.astype(dtype)
    step = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(q - p))))
    norm = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(p))))
    return jnp.where(norm > 0, step / jnp.where(norm > 0, norm, 1), 0).astype(real)

  return jax.tree.map(leaf, params, new_params)


def equilibrium_angular_update(
  weight_decay: Any,
  *,
  b1: Any = 0.9,
  schedule_multiplier: Any = 1.0,
  optimizer: str = "adamw",
) -> Any:
  r"""Predicted angular update of a scale-invariant weight at equilibrium.

  .. math::

    ω^* = \sqrt{2 η λ (1 - β) / (1 + β)}

  for :func:`adamw` (``β = β_1``) and for :func:`sgdw` (``β`` its momentum):
  the two derivations (module docstring) give one form. It does not depend
  on the base learning rate ``α``. Compare with :func:`angular_update` of a
  leaf followed by a normalization, averaged over steps, after several
  :func:`equilibrium_steps`. With a schedule, ``η = η_t`` gives the current
  target, which the run follows when ``η_t`` changes slowly against
  :func:`equilibrium_steps`. Not for ``nesterov=True``.

  Args:
    weight_decay: ``λ`` (>= 0), the paper's (not PyTorch's ``λ_torch``).
    b1: ``β``: Adam's ``β_1``, or SGDW's ``momentum``; in [0, 1).
    schedule_multiplier: ``η`` (>= 0), a number.
    optimizer: ``"adamw"`` or ``"sgdw"``.

  Returns:
    ``ω*`` in radians per step (a float, or an array for array arguments).

  Example:
    >>> import optax_decoupled as odx
    >>> round(odx.equilibrium_angular_update(1e-3), 5)  # sqrt(2e-3 / 19)
    0.01026
    >>> round(odx.equilibrium_angular_update(1e-3, b1=0.0, optimizer="sgdw"), 5)
    0.04472

  References:
    Kosson, Messmer & Jaggi, `Rotational Equilibrium: How Weight Decay Balances
    Learning Across Neural Networks <https://arxiv.org/abs/2305.17212>`_, 2023.
  """
  check_number("weight_decay", weight_decay, allow_zero=True)
  _check_unit("b1", b1)
  check_number("schedule_multiplier", schedule_multiplier, allow_zero=True)
  _check_optimizer(optimizer)
  return (2 * weight_decay * schedule_multiplier * (1 - b1) / (1 + b1)) ** 0.5


def equilibrium_steps(
  weight_decay: Any, *, schedule_multiplier: Any = 1.0, optimizer: str = "adamw"
) -> Any:
  r"""Relaxation time ``τ``, in steps, of a scale-invariant weight's equilibrium.

  .. math::

    τ = \frac{1}{2 η λ} \ (\text{adamw}), \qquad τ = \frac{1}{4 η λ} \ (\text{sgdw})

  The initial excess ``δ`` of the squared norm (AdamW) or its square (SGDW)
  over equilibrium shrinks as ``e^{-t/τ}``, and the angular update is
  ``ω* / sqrt(1 + δ_0 e^{-t/τ})`` (module docstring). From an initial norm
  ``k`` times the equilibrium norm, the angular update is within ``ε`` of
  ``ω*`` after about ``τ ln(δ_0 / (2 ε))`` steps, ``δ_0 = k² - 1`` (AdamW)
  or ``k⁴ - 1`` (SGDW): for ``k = 3`` and ``ε = 10 %``, ``3.7 τ`` (AdamW) or
  ``6 τ`` (SGDW). A run much shorter than ``τ`` never reaches equilibrium.

  Args:
    weight_decay: ``λ`` (> 0), the paper's.
    schedule_multiplier: ``η`` (> 0), a number.
    optimizer: ``"adamw"`` or ``"sgdw"``.

  Returns:
    ``τ`` in steps (a float, or an array for array arguments).

  Example:
    >>> import optax_decoupled as odx
    >>> odx.equilibrium_steps(1e-3)  # AdamW: 1 / (2 η λ)
    500.0
    >>> odx.equilibrium_steps(1e-3, optimizer="sgdw")
    250.0
  """
  check_number("weight_decay", weight_decay)
  check_number("schedule_multiplier", schedule_multiplier)
  _check_optimizer(optimizer)
  return 1.0 / (_RELAXATION_RATE[optimizer] * schedule_multiplier * weight_decay)
