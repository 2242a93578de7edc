"""The command line's model, optimizers and training loop (Flax NNX).

A small MLP classifier trained with one of the paper's optimizers through
``nnx.Optimizer``. The batch order and the named optimizers are those of
:mod:`optax_decoupled.sweep`, so that one run here is one cell of a sweep.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_decoupled as odx
from optax_decoupled.cli import _models
from optax_decoupled.cli._data import Split
from optax_decoupled.sweep._engine import batch_indices, batch_key
from optax_decoupled.sweep._optimizers import (
  DECOUPLED,
  OPTIMIZER_TABLE,
  RESTARTS,
  equilibrium_angular_update,
  schedule_values,
)

OPTIMIZERS = tuple(OPTIMIZER_TABLE)
ADAM_TYPE = tuple(n for n in OPTIMIZERS if n.startswith("adam"))
#: ``η_t`` of the optimizers without restarts: one cosine over the run, a
#: constant, the paper's step-drop, warmup-stable-decay (WSD; WSD-S with
#: checkpoints).
SCHEDULES = ("cosine", "constant", "step-drop", "wsd")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Which optimizer, and its ``η_t``/``λ_t`` schedules, for a run of ``steps``.

  ``weight_decay`` is ``λ`` (or ``λ_norm`` when ``normalized``). Optimizers
  without restarts follow ``schedule`` (:data:`SCHEDULES`; by default one
  cosine cycle over the run, the paper's AdamW/SGDW runs); ``*wr`` restart
  every ``first_cycle_steps`` steps, cycles growing by ``cycle_mult``.
  """

  optimizer: str
  learning_rate: float
  weight_decay: float
  steps: int
  batch_size: int
  num_examples: int
  normalized: bool = False
  first_cycle_steps: int | None = None
  cycle_mult: int = 2
  mask: Any = None
  compensation: str | None = "auto"
  #: Storage dtype of Adam's moments (None: the parameters'); Adam-type only.
  moment_dtype: str | None = None
  schedule: str = "cosine"
  #: step-drop: the fractions of the run where η_t is multiplied by ``drop_factor``.
  drop_at: tuple[float, ...] = (0.5, 0.75)
  drop_factor: float = 0.1
  #: wsd: the cool-down's share of the run (of each checkpoint's steps), its
  #: shape, and the steps before the end that get a cool-down of their own.
  cooldown: float = 0.2
  cooldown_shape: str = "1-sqrt"
  checkpoints: tuple[int, ...] = ()

  @property
  def restarts(self) -> bool:
    return self.optimizer in RESTARTS

  def eta(self) -> optax.Schedule:
    if self.restarts:
      return odx.cosine_warm_restarts(self.first_cycle_steps, self.cycle_mult)
    if self.schedule == "constant":
      return odx.with_peak(optax.constant_schedule(1.0), 1.0)
    if self.schedule == "step-drop":
      return odx.step_drop(self.steps, drop_at=self.drop_at, factor=self.drop_factor)
    if self.schedule == "wsd":
      return odx.warmup_stable_decay(
        self.steps,
        decay_fraction=self.cooldown,
        shape=self.cooldown_shape,
        checkpoints=self.checkpoints,
      )
    if self.schedule != "cosine":
      raise ValueError(f"schedule={self.schedule!r} must be one of {SCHEDULES}")
    return odx.cosine_warm_restarts(self.steps)

  def snapshot_steps(self) -> list[int]:
    """Where ``η_t`` ends a cycle or a cool-down: restarts, checkpoints, the end."""
    if self.restarts:
      assert self.first_cycle_steps is not None, "a restarting recipe has cycles"
      ends = odx.restart_steps(self.steps, self.first_cycle_steps, self.cycle_mult)
    else:
      ends = list(self.checkpoints) if self.schedule == "wsd" else []
    return [*ends, self.steps]

  def lam(self) -> optax.Schedule | float:
    """``λ_t`` as the optimizer gets it (a number, or a schedule under restarts)."""
    if not self.normalized:
      return self.weight_decay
    if self.restarts:
      return odx.restart_normalized_weight_decay(
        self.weight_decay,
        first_cycle_steps=self.first_cycle_steps,
        cycle_mult=self.cycle_mult,
      )
    return odx.normalized_weight_decay(
      self.weight_decay,
      batch_size=self.batch_size,
      num_examples=self.num_examples,
      num_epochs=self.steps * self.batch_size / self.num_examples,
    )

  def tx(self) -> optax.GradientTransformation:
    factory, flags = OPTIMIZER_TABLE[self.optimizer]
    factory = functools.partial(factory, compensation=self.compensation, **flags)
    if self.moment_dtype is not None:
      if self.optimizer not in ADAM_TYPE:
        raise ValueError(
          f"moment_dtype applies to Adam-type optimizers, not {self.optimizer}"
        )
      dtype = self.moment_dtype
      factory = functools.partial(factory, mu_dtype=dtype, nu_dtype=dtype)
    if self.restarts:
      return factory(
        self.learning_rate,
        first_cycle_steps=self.first_cycle_steps,
        cycle_mult=self.cycle_mult,
        weight_decay=self.weight_decay,
        normalize_weight_decay=self.normalized,
        mask=self.mask,
      )
    return factory(
      self.learning_rate,
      weight_decay=self.lam(),
      schedule_multiplier=self.eta(),
      mask=self.mask,
    )

  def lam_values(self, steps: np.ndarray) -> np.ndarray:
    """``λ_t`` at ``steps``, times ``η_t / η_max`` for a corrected decay."""
    lam = self.lam()
    lam_t = schedule_values(lam, steps) if callable(lam) else np.full(len(steps), lam)
    if OPTIMIZER_TABLE[self.optimizer][1].get("corrected"):
      eta = self.eta()
      lam_t = lam_t * schedule_values(eta, steps) / eta.schedule_peak  # type: ignore[attr-defined]
    return lam_t

  def effective_decay(self, steps: np.ndarray) -> np.ndarray:
    """Per-step decay: ``η_t λ_t`` (decoupled) or ``η_t α λ`` (L2, nominal)."""
    lam_t = self.lam_values(steps)
    eta_t = schedule_values(self.eta(), steps)
    scale = 1.0 if self.optimizer in DECOUPLED else self.learning_rate
    return eta_t * lam_t * scale


def train(
  recipe: Recipe,
  data: Split,
  *,
  arch: _models.Architecture,
  seed: int,
  progress: bool = True,
) -> dict[str, Any]:
  """Trains the MLP; returns metrics and per-step curves (numpy).

  Besides the batch loss, every step records the angular update of the hidden
  kernels (``‖Δθ‖/‖θ‖``, averaged over the kernels) and their gradient's norm.
  """
  from tqdm.auto import tqdm

  started = time.perf_counter()
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  model = arch.make(x.shape[1], data.num_classes, seed)
  optimizer = nnx.Optimizer(model, recipe.tx(), wrt=nnx.Param)
  key = batch_key(seed)
  n, b = x.shape[0], recipe.batch_size

  graphdef, state = nnx.split((model, optimizer))

  def one_step(t, carry):
    state, curves = carry
    model, optimizer = nnx.merge(graphdef, state)
    idx = batch_indices(key, t, n, b)
    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))  # not a view
    loss, grads = nnx.value_and_grad(
      lambda model: _models.cross_entropy(model(x[idx]), y[idx])
    )(model)
    optimizer.update(model, grads)
    values = {
      "loss": loss,
      "angle": _models.kernel_angular_update(before, nnx.state(model, nnx.Param)),
      "grad_norm": _norm(_models.hidden_kernels(grads)),
      "kernel_norm": _norm(_models.hidden_kernels(nnx.state(model, nnx.Param))),
    }
    curves = {k: curves[k].at[t].set(v) for k, v in values.items()}
    return nnx.state((model, optimizer)), curves

  @jax.jit
  def run(state, curves, start, stop):
    """Steps ``start .. stop-1`` in one call (one compile for every chunk)."""
    return jax.lax.fori_loop(start, stop, one_step, (state, curves))

  steps = np.arange(recipe.steps)
  eta = schedule_values(recipe.eta(), steps)
  curves = {
    k: jnp.zeros([recipe.steps], jnp.float32)
    for k in ("loss", "angle", "grad_norm", "kernel_norm")
  }
  chunk = max(1, recipe.steps // 50)
  with tqdm(total=recipe.steps, disable=not progress, desc=recipe.optimizer) as bar:
    for start in range(0, recipe.steps, chunk):
      stop = min(start + chunk, recipe.steps)
      state, curves = run(state, curves, jnp.int32(start), jnp.int32(stop))
      bar.update(stop - start)
      bar.set_postfix(
        loss=f"{float(curves['loss'][stop - 1]):.4f}",
        eta=f"{eta[stop - 1]:.3f}",
        angular_update=f"{float(curves['angle'][stop - 1]):.2e}",
      )
  nnx.update((model, optimizer), state)
  train_loss, train_error, test_loss, test_error = map(
    float, _evaluate(model, x, y, jnp.asarray(data.x_test), jnp.asarray(data.y_test))
  )
  return {
    "test_accuracy": 1.0 - test_error,
    "test_loss": test_loss,
    "train_loss": train_loss,
    "train_accuracy": 1.0 - train_error,
    "elapsed_seconds": time.perf_counter() - started,
    "curves": {
      "step": steps,
      "batch_loss": np.asarray(curves["loss"]),
      "angular_update": np.asarray(curves["angle"]),
      "grad_norm": np.asarray(curves["grad_norm"]),
      "kernel_norm": np.asarray(curves["kernel_norm"]),
      "eta": eta,
      "effective_decay": recipe.effective_decay(steps),
      **(
        {
          "equilibrium_angular_update": equilibrium_angular_update(
            recipe.lam_values(steps), eta
          )
        }
        if recipe.optimizer in DECOUPLED
        else {}
      ),
    },
  }


def _norm(arrays) -> jax.Array:
  """The norm of arrays taken together, in float32 (a bf16 sum would round)."""
  return jnp.linalg.norm(
    jnp.concatenate([a.astype(jnp.float32).ravel() for a in arrays])
  )


_evaluate = nnx.jit(_models.evaluate)
