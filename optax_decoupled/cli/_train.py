"""The command line's model, optimizers and training loop (Flax NNX).

A small MLP classifier trained with one of the paper's optimizers through
``nnx.Optimizer``. The pieces (model, batch order, optimizer recipe, loss) are
shared with the vmapped sweep in ``_sweep.py``, which runs them functionally.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_decoupled as odx
from optax_decoupled.cli._data import Split

#: The optimizers the command line knows, by family.
ADAM_TYPE = ("adamw", "adam_l2", "adamwr")
SGD_TYPE = ("sgdw", "sgd_l2", "sgdwr")
OPTIMIZERS = ("adamw", "adam_l2", "sgdw", "sgd_l2", "adamwr", "sgdwr")
RESTARTS = ("adamwr", "sgdwr")
DECOUPLED = ("adamw", "sgdw", "adamwr", "sgdwr")
_FACTORIES = {
  "adamw": odx.adamw,
  "adam_l2": odx.adam_l2,
  "sgdw": odx.sgdw,
  "sgd_l2": odx.sgd_l2,
  "adamwr": odx.adamwr,
  "sgdwr": odx.sgdwr,
}


class MLP(nnx.Module):
  """``features -> [Linear, LayerNorm?, ReLU] x depth -> Linear -> classes``.

  With ``layer_norm`` the hidden layers are scale-invariant, as the
  batch-normalized ResNets of the paper are: decay then changes the effective
  step size rather than the function.
  """

  def __init__(
    self,
    features: int,
    hidden: int,
    classes: int,
    depth: int,
    *,
    layer_norm: bool,
    rngs,
  ):
    sizes = [features] + [hidden] * depth
    self.hidden = nnx.List(
      [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    )
    self.norms = nnx.List(
      [
        nnx.LayerNorm(hidden, use_scale=False, use_bias=False, rngs=rngs)
        for _ in range(depth if layer_norm else 0)
      ]
    )
    self.out = nnx.Linear(sizes[-1], classes, rngs=rngs)

  def __call__(self, x):
    for i, layer in enumerate(self.hidden):
      x = layer(x)
      if self.norms:
        x = self.norms[i](x)
      x = jax.nn.relu(x)
    return self.out(x)


def make_model(
  features: int, classes: int, hidden: int, depth: int, seed: int, layer_norm: bool
) -> MLP:
  """The MLP initialized from ``seed`` (in one compiled call, not op by op)."""
  create = nnx.jit(
    lambda: MLP(
      features, hidden, classes, depth, layer_norm=layer_norm, rngs=nnx.Rngs(seed)
    )
  )
  return create()


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def batch_indices(key, step, num_examples: int, batch_size: int):
  """Indices of batch ``step``: epochs of a seeded permutation, remainder dropped."""
  per_epoch = num_examples // batch_size
  step = jnp.asarray(step, jnp.int32)
  epoch, position = step // per_epoch, step % per_epoch
  order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  return jax.lax.dynamic_slice(order, (position * batch_size,), (batch_size,))


def batch_key(seed: int):
  """The key of the batch order (independent of the model's init stream)."""
  return jax.random.fold_in(jax.random.key(seed), 1)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Which optimizer, and its ``η_t``/``λ_t`` schedules, for a run of ``steps``.

  ``weight_decay`` is ``λ`` (or ``λ_norm`` when ``normalized``). Optimizers
  without restarts anneal ``η_t`` by one cosine cycle over the run (the
  paper's AdamW/SGDW runs); ``*wr`` restart every ``first_cycle_steps`` steps,
  cycles growing by ``cycle_mult``.
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

  @property
  def restarts(self) -> bool:
    return self.optimizer in RESTARTS

  def eta(self) -> optax.Schedule:
    if self.restarts:
      return odx.cosine_warm_restarts(self.first_cycle_steps, self.cycle_mult)
    return odx.cosine_warm_restarts(self.steps)

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
    factory = _FACTORIES[self.optimizer]
    if self.restarts:
      return factory(
        self.learning_rate,
        first_cycle_steps=self.first_cycle_steps,
        cycle_mult=self.cycle_mult,
        weight_decay=self.weight_decay,
        normalize_weight_decay=self.normalized,
      )
    return factory(
      self.learning_rate, weight_decay=self.lam(), schedule_multiplier=self.eta()
    )

  def effective_decay(self, steps: np.ndarray) -> np.ndarray:
    """Per-step decay: ``η_t λ_t`` (decoupled) or ``η_t α λ`` (L2, nominal)."""
    lam = self.lam()
    lam_t = schedule_values(lam, steps) if callable(lam) else lam
    eta_t = schedule_values(self.eta(), steps)
    scale = 1.0 if self.optimizer in DECOUPLED else self.learning_rate
    return eta_t * lam_t * scale


def schedule_values(schedule, steps: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32)))


def loss_and_error(logits, labels):
  """Mean cross-entropy and error rate (the fraction misclassified)."""
  wrong = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
  return cross_entropy(logits, labels), jnp.mean(wrong)


@nnx.jit
def _evaluate(model, x, y):
  return loss_and_error(model(x), y)


def evaluate(model, x, y) -> tuple[float, float]:
  """(mean cross-entropy, accuracy) of ``model`` on ``x, y``."""
  loss, error = _evaluate(model, jnp.asarray(x), jnp.asarray(y))
  return float(loss), 1.0 - float(error)


def train(
  recipe: Recipe,
  data: Split,
  *,
  hidden: int,
  depth: int,
  layer_norm: bool,
  seed: int,
  progress: bool = True,
) -> dict[str, Any]:
  """Trains the MLP; returns metrics and per-step curves (numpy)."""
  from tqdm.auto import tqdm

  started = time.perf_counter()
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  model = make_model(x.shape[1], data.num_classes, hidden, depth, seed, layer_norm)
  optimizer = nnx.Optimizer(model, recipe.tx(), wrt=nnx.Param)
  key = batch_key(seed)
  n, b = x.shape[0], recipe.batch_size

  graphdef, state = nnx.split((model, optimizer))

  def one_step(t, carry):
    state, losses = carry
    model, optimizer = nnx.merge(graphdef, state)
    idx = batch_indices(key, t, n, b)
    loss, grads = nnx.value_and_grad(
      lambda model: cross_entropy(model(x[idx]), y[idx])
    )(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), losses.at[t].set(loss)

  @jax.jit
  def run(state, losses, start, stop):
    """Steps ``start .. stop-1`` in one call (one compile for every chunk)."""
    return jax.lax.fori_loop(start, stop, one_step, (state, losses))

  steps = np.arange(recipe.steps)
  eta = schedule_values(recipe.eta(), steps)
  losses = jnp.zeros([recipe.steps], jnp.float32)
  chunk = max(1, recipe.steps // 50)
  with tqdm(total=recipe.steps, disable=not progress, desc=recipe.optimizer) as bar:
    for start in range(0, recipe.steps, chunk):
      stop = min(start + chunk, recipe.steps)
      state, losses = run(state, losses, jnp.int32(start), jnp.int32(stop))
      bar.update(stop - start)
      bar.set_postfix(loss=f"{float(losses[stop - 1]):.4f}", eta=f"{eta[stop - 1]:.3f}")
  nnx.update((model, optimizer), state)
  train_loss, train_accuracy = evaluate(model, data.x_train, data.y_train)
  test_loss, test_accuracy = evaluate(model, data.x_test, data.y_test)
  return {
    "test_accuracy": test_accuracy,
    "test_loss": test_loss,
    "train_loss": train_loss,
    "train_accuracy": train_accuracy,
    "elapsed_seconds": time.perf_counter() - started,
    "curves": {
      "step": steps,
      "batch_loss": np.asarray(losses),
      "eta": eta,
      "effective_decay": recipe.effective_decay(steps),
    },
  }
