"""The paper's Figure 2 at small scale: a learning-rate x weight-decay grid.

Every (learning rate, weight decay, seed) of one optimizer trains in one
compiled program: ``optax.inject_hyperparams`` turns the two hyperparameters
into arrays of the optimizer state, and ``jax.vmap`` maps the whole training
run (a ``lax.scan`` over steps of a functional copy of the NNX model) over them.
"""

from __future__ import annotations

import functools
import itertools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from optax_decoupled.cli import _train
from optax_decoupled.cli._data import Split

#: The optimizers a sweep accepts (no restarts: one cosine cycle per run).
SWEEP_OPTIMIZERS = ("adam_l2", "adamw", "sgd_l2", "sgdw")


def log_grid(lo: float, hi: float, n: int) -> np.ndarray:
  return np.geomspace(lo, hi, n) if n > 1 else np.asarray([np.sqrt(lo * hi)])


def make_run(
  optimizer: str,
  data: Split,
  *,
  steps: int,
  batch_size: int,
  hidden: int,
  depth: int,
  layer_norm: bool,
):
  """``run(lr, wd, params, batches) -> (train_loss, test_loss, test_error)``.

  One whole training run as a pure function of arrays, ready for ``jax.vmap``
  or ``jax.jit``. ``params`` is the model's state from :func:`init_params`,
  ``batches`` the (steps, batch_size) indices from :func:`batch_table`.
  """
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  n = x.shape[0]
  graphdef = _graphdef(data, hidden, depth, layer_norm)
  # The recipe's numbers are placeholders: inject_hyperparams replaces them.
  recipe = _train.Recipe(optimizer, 0.0, 0.0, steps, batch_size, n)
  factory = optax.inject_hyperparams(
    _train._FACTORIES[optimizer], static_args=("schedule_multiplier",)
  )

  def apply(params, inputs):
    return nnx.merge(graphdef, params)(inputs)

  def run(learning_rate, weight_decay, params, batches):
    tx = factory(
      learning_rate=learning_rate,
      weight_decay=weight_decay,
      schedule_multiplier=recipe.eta(),
    )

    def step(carry, idx):
      params, opt_state = carry
      grads = jax.grad(lambda p: _train.cross_entropy(apply(p, x[idx]), y[idx]))(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    carry = (params, tx.init(params))
    (params, _), _ = jax.lax.scan(step, carry, batches)
    train_loss, _ = _train.loss_and_error(apply(params, x), y)
    test_loss, test_error = _train.loss_and_error(apply(params, x_test), y_test)
    return train_loss, test_loss, test_error

  return run


def _stack(trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _graphdef(data: Split, hidden: int, depth: int, layer_norm: bool):
  model = nnx.eval_shape(
    lambda: _train.MLP(
      data.x_train.shape[1],
      hidden,
      data.num_classes,
      depth,
      layer_norm=layer_norm,
      rngs=nnx.Rngs(0),
    )
  )
  return nnx.split(model)[0]


def batch_table(seed: int, steps: int, num_examples: int, batch_size: int):
  """All batch indices of a run, (steps, batch_size): the same as ``train``'s."""
  key = _train.batch_key(seed)
  table = jax.jit(
    jax.vmap(lambda t: _train.batch_indices(key, t, num_examples, batch_size))
  )
  return table(jnp.arange(steps, dtype=jnp.int32))


def init_params(data: Split, seed: int, *, hidden: int, depth: int, layer_norm: bool):
  """The model's state for ``seed``: the same init as ``train``'s."""
  model = _train.make_model(
    data.x_train.shape[1], data.num_classes, hidden, depth, seed, layer_norm
  )
  return nnx.split(model)[1]


def sweep(
  optimizer: str,
  data: Split,
  learning_rates: np.ndarray,
  weight_decays: np.ndarray,
  seeds: list[int],
  *,
  steps: int,
  batch_size: int,
  hidden: int,
  depth: int,
  layer_norm: bool,
  sequential_configs: int = 3,
) -> dict[str, Any]:
  """Trains the whole grid at once; returns one row per (lr, wd) and timings.

  ``test_error`` and ``train_loss`` of a row are means over the seeds. For
  comparison, ``sequential_configs`` configurations are also run one at a
  time, and the time of the whole grid run that way is extrapolated from
  them, two ways: through the same function jitted without ``vmap`` (compiled
  once, hyperparameters as arguments), and as a loop of separate runs does it
  (hyperparameters as constants, so each configuration compiles anew).
  """
  configs = list(itertools.product(learning_rates, weight_decays, seeds))
  lr = jnp.asarray([c[0] for c in configs], jnp.float32)
  wd = jnp.asarray([c[1] for c in configs], jnp.float32)
  which = jnp.asarray([seeds.index(c[2]) for c in configs])
  n = len(data.y_train)
  params = _stack(
    [
      init_params(data, s, hidden=hidden, depth=depth, layer_norm=layer_norm)
      for s in seeds
    ]
  )
  batches = jnp.stack([batch_table(s, steps, n, batch_size) for s in seeds])
  params, batches = jax.tree.map(lambda a: a[which], (params, batches))
  run = make_run(
    optimizer,
    data,
    steps=steps,
    batch_size=batch_size,
    hidden=hidden,
    depth=depth,
    layer_norm=layer_norm,
  )

  start = time.perf_counter()
  train_loss, _, test_error = jax.block_until_ready(
    jax.jit(jax.vmap(run))(lr, wd, params, batches)
  )
  vmapped_seconds = time.perf_counter() - start

  def config(j):
    return lr[j], wd[j], *jax.tree.map(lambda a: a[j], (params, batches))

  def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start

  # One at a time, compiled once: the first call compiles, the next k run.
  k = max(1, min(sequential_configs, len(configs) - 1))
  single = jax.jit(run)
  first = timed(single, *config(0))
  per_config = float(np.mean([timed(single, *config(j + 1)) for j in range(k)]))
  # One at a time as a plain loop of runs does it: hyperparameters are Python
  # numbers baked into each run's program, so every configuration compiles.
  naive = [
    timed(jax.jit(functools.partial(run, float(lr[j]), float(wd[j]))), *config(j)[2:])
    for j in range(k)
  ]

  shape = (len(learning_rates), len(weight_decays), len(seeds))
  errors = np.asarray(test_error).reshape(shape)
  losses = np.asarray(train_loss).reshape(shape)
  rows = [
    {
      "optimizer": optimizer,
      "learning_rate": float(a),
      "weight_decay": float(w),
      "test_error": float(errors[i, j].mean()),
      "test_error_per_seed": [float(e) for e in errors[i, j]],
      "train_loss": float(losses[i, j].mean()),
      "train_loss_per_seed": [float(v) for v in losses[i, j]],
    }
    for (i, a), (j, w) in itertools.product(
      enumerate(learning_rates), enumerate(weight_decays)
    )
  ]
  return {
    "rows": rows,
    "timing": {
      "configs": len(configs),
      "vmapped_seconds": vmapped_seconds,
      "sequential_configs_timed": k,
      "sequential_compile_seconds": max(first - per_config, 0.0),
      "sequential_seconds_per_config": per_config,
      "sequential_seconds_estimate": first + per_config * (len(configs) - 1),
      "recompiling_seconds_per_config": float(np.mean(naive)),
      "recompiling_seconds_estimate": float(np.mean(naive)) * len(configs),
    },
  }
