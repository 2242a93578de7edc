r"""The weight decay of other conventions, and of a timescale, as the paper's ``λ``.

In the paper's convention the decay per step is ``η_t λ θ``: not multiplied by
the base learning rate ``α``. PyTorch, optax and Keras multiply the decay by
the whole learning rate, ``α η_t λ_torch θ``, so with the same ``α`` and
``η_t`` the two agree when ``λ = α λ_torch``.

Seen as an exponential moving average of the updates (Wang & Aitchison 2024),
decoupled decay forgets at rate ``η_t λ`` per step: its timescale is
``1 / (η_t λ)`` steps, free of ``α``, or ``B / (b η_t λ)`` epochs with ``B``
training examples and batches of ``b``.
"""

from typing import Any

import jax
import jax.core
import numpy as np


def check_number(name: str, value: Any, *, allow_zero: bool = False) -> None:
  """A finite number (or array of them) > 0 (>= 0 with ``allow_zero``)."""
  if isinstance(value, jax.core.Tracer):
    return
  need = ">= 0" if allow_zero else "> 0"
  array = None
  if not isinstance(value, bool) and not callable(value):
    try:
      array = np.asarray(value)
    except (TypeError, ValueError):
      array = None
  if array is None or not np.issubdtype(array.dtype, np.number):
    raise ValueError(f"{name}={value!r} must be a finite number {need}")
  array = array.astype(np.float64)
  if not np.all(np.isfinite(array)):
    raise ValueError(f"{name}={value!r} must be finite")
  if np.any(array < 0) or (not allow_zero and np.any(array == 0)):
    raise ValueError(f"{name}={value!r} must be {need}")


def weight_decay_from_torch(weight_decay: Any, learning_rate: Any) -> Any:
  r"""The paper's ``λ`` of a PyTorch/optax decoupled decay: ``λ = α λ_torch``.

  ``torch.optim.AdamW(lr=α, weight_decay=λ_torch)`` (and ``optax.adamw``,
  Keras' ``AdamW``) decays by ``lr_t λ_torch θ`` per step. With ``lr_t = α
  η_t`` (a scheduler multiplying the base rate ``α`` by ``η_t``) that is
  ``η_t (α λ_torch) θ``: the paper's decay with ``λ = α λ_torch``. Pass the
  base rate ``α``, and ``η_t`` as ``schedule_multiplier``.

  Args:
    weight_decay: ``λ_torch`` (>= 0), PyTorch's ``weight_decay``.
    learning_rate: ``α`` (> 0), PyTorch's ``lr``, the base rate.

  Returns:
    ``λ = α λ_torch``, for ``weight_decay=`` of :func:`adamw` and the others.

  Example:
    A PyTorch recipe, ``AdamW(lr=3e-4, weight_decay=0.1)`` under a cosine
    ``LambdaLR`` over 1000 steps, in this library:

    >>> import optax, optax_decoupled as odx
    >>> lam = odx.weight_decay_from_torch(0.1, learning_rate=3e-4)
    >>> lam
    3e-05
    >>> eta = odx.with_peak(optax.cosine_decay_schedule(1.0, 1000), 1.0)
    >>> tx = odx.adamw(3e-4, weight_decay=lam, schedule_multiplier=eta)
  """
  check_number("weight_decay", weight_decay, allow_zero=True)
  check_number("learning_rate", learning_rate)
  return weight_decay * learning_rate


def weight_decay_to_torch(weight_decay: Any, learning_rate: Any) -> Any:
  r"""PyTorch's ``weight_decay`` for the paper's ``λ``: ``λ_torch = λ / α``.

  The inverse of :func:`weight_decay_from_torch`: the same per-step decay
  ``η_t λ θ`` from ``torch.optim.AdamW(lr=α, weight_decay=λ / α)`` (or
  ``optax.adamw(α, weight_decay=λ / α)``) with the same schedule ``η_t``.

  Args:
    weight_decay: the paper's ``λ`` (>= 0).
    learning_rate: ``α`` (> 0), the base rate.

  Returns:
    ``λ_torch = λ / α``.

  Example:
    >>> import optax_decoupled as odx
    >>> odx.weight_decay_to_torch(odx.DEFAULT_WEIGHT_DECAY, learning_rate=1e-3)
    0.1
  """
  check_number("weight_decay", weight_decay, allow_zero=True)
  check_number("learning_rate", learning_rate)
  return weight_decay / learning_rate


def weight_decay_from_timescale(
  timescale_epochs: Any, *, num_examples: Any, batch_size: Any
) -> Any:
  r"""The ``λ`` whose averaging timescale is ``τ`` epochs: ``λ = b / (τ B)``.

  Decoupled decay makes the weights an exponential moving average of the
  updates, forgetting a fraction ``η_t λ`` per step: the timescale is
  ``1 / (η_t λ)`` steps (in the paper's convention, free of ``α``). Wang &
  Aitchison (2024) find the best timescale roughly constant in epochs as the
  model and data grow; with ``B / b`` steps per epoch, a timescale of ``τ``
  epochs at ``η_t = 1`` is ``λ = b / (τ B)``. Under a schedule the timescale
  at step ``t`` is ``τ / η_t`` epochs.

  Args:
    timescale_epochs: ``τ`` in epochs (> 0).
    num_examples: ``B``, training examples per epoch (> 0).
    batch_size: ``b`` (> 0).

  Returns:
    ``λ = b / (τ B)``, for ``weight_decay=``.

  Example:
    A timescale of 10 epochs on 50,000 examples in batches of 128:

    >>> import optax_decoupled as odx
    >>> lam = odx.weight_decay_from_timescale(
    ...     10, num_examples=50_000, batch_size=128)
    >>> lam
    0.000256
    >>> tx = odx.adamw(1e-3, weight_decay=lam)
    >>> odx.weight_decay_to_torch(lam, learning_rate=1e-3)  # the same in torch
    0.256

  References:
    Wang & Aitchison, `How to set AdamW's weight decay as you scale model and
    dataset size <https://arxiv.org/abs/2405.13698>`_, 2024.
  """
  check_number("timescale_epochs", timescale_epochs)
  check_number("num_examples", num_examples)
  check_number("batch_size", batch_size)
  return batch_size / (timescale_epochs * num_examples)
