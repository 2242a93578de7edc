"""The optimizers a sweep knows by name, with one cosine ``η_t`` over the run.

A named optimizer is the library's factory with ``optax.inject_hyperparams``,
so that α and λ are arrays of its state: one compiled program serves every
cell of the grid. Its ``η_t`` and per-unit ``λ_t`` are known, which gives the
rotational-equilibrium prediction of the angular update.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_decoupled as odx

#: Name -> (library factory, its flags). ``*_cautious`` decays only where the
#: step already moves a weight toward zero; ``*_corrected`` scales λ by
#: ``η_t / η_max`` (decay ``λ η_t² / η_max``).
OPTIMIZER_TABLE: dict[str, tuple[Callable[..., Any], dict[str, bool]]] = {
  "adamw": (odx.adamw, {}),
  "adam_l2": (odx.adam_l2, {}),
  "sgdw": (odx.sgdw, {}),
  "sgd_l2": (odx.sgd_l2, {}),
  "adamwr": (odx.adamwr, {}),
  "sgdwr": (odx.sgdwr, {}),
  "adamw_cautious": (odx.adamw, {"cautious": True}),
  "adamw_corrected": (odx.adamw, {"corrected": True}),
  "sgdw_cautious": (odx.sgdw, {"cautious": True}),
  "sgdw_corrected": (odx.sgdw, {"corrected": True}),
}
RESTARTS = ("adamwr", "sgdwr")
#: The names a sweep accepts (no restarts: one cosine cycle per run).
OPTIMIZERS = tuple(n for n in OPTIMIZER_TABLE if n not in RESTARTS)
DECOUPLED = tuple(n for n in OPTIMIZER_TABLE if not n.endswith("_l2"))
#: β1 of Adam and the momentum of SGD in the named optimizers.
B1 = 0.9


def check_name(optimizer: str) -> None:
  if optimizer not in OPTIMIZERS:
    raise ValueError(
      f"optimizer={optimizer!r} is not one of {', '.join(OPTIMIZERS)}; or pass a "
      "factory (learning_rate, weight_decay) -> optax.GradientTransformation"
    )


def factory(
  optimizer: str, steps: int, *, mask: Any = None, compensation: str | None = "auto"
) -> Callable[[jax.Array, jax.Array], optax.GradientTransformation]:
  """``(learning_rate, weight_decay) -> tx`` of a named optimizer, η_t one
  cosine over ``steps``."""
  base, flags = OPTIMIZER_TABLE[optimizer]
  # float32 hyperparameters whatever the parameters' dtype: in bfloat16,
  # b2 = 0.999 would round to 1.
  injected = optax.inject_hyperparams(
    base,
    static_args=("schedule_multiplier", "mask", "compensation", *flags),
    hyperparam_dtype=jnp.float32,
  )
  eta = odx.cosine_warm_restarts(steps)

  def make(learning_rate, weight_decay):
    return injected(
      learning_rate=learning_rate,
      weight_decay=weight_decay,
      schedule_multiplier=eta,
      mask=mask,
      compensation=compensation,
      **flags,
    )

  return make


def schedule_values(schedule, steps: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32)))


def unit_decay(optimizer: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """``(η_t, λ_t per unit λ)`` at every step: λ_t is 1, or ``η_t / η_max`` for
  a corrected decay."""
  eta = odx.cosine_warm_restarts(steps)
  eta_t = schedule_values(eta, np.arange(steps))
  lam_t = np.full(steps, 1.0)
  if OPTIMIZER_TABLE[optimizer][1].get("corrected"):
    lam_t = lam_t * eta_t / eta.schedule_peak  # type: ignore[attr-defined]
  return eta_t, lam_t


def prediction(
  optimizer: str, steps: int, weight_decays: np.ndarray, window: slice
) -> tuple[np.ndarray, float]:
  """Per λ, the rotational-equilibrium angular update averaged over
  ``window``; and the run's mean decay rate per unit λ (for the time to
  reach equilibrium)."""
  eta_t, lam_t = unit_decay(optimizer, steps)
  predicted = np.asarray(
    [
      np.mean(equilibrium_angular_update(w * lam_t[window], eta_t[window]))
      for w in weight_decays
    ]
  )
  return predicted, float((eta_t * lam_t * 1.0).mean())


def equilibrium_angular_update(weight_decay, eta):
  """``odx.equilibrium_angular_update`` at every step: ``sqrt(2 λ_t η_t
  (1-β1)/(1+β1))``, the same form for AdamW and SGDW."""
  return np.asarray(
    odx.equilibrium_angular_update(
      np.asarray(weight_decay, np.float64),
      b1=B1,
      schedule_multiplier=np.asarray(eta, np.float64),
    )
  )
