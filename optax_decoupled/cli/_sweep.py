"""The command line's sweep: its MLPs through :mod:`optax_decoupled.sweep`.

Every (learning rate, weight decay, seed) of one optimizer trains in one
compiled program (see :func:`optax_decoupled.sweep.run`); this module adapts
the command line's NNX models and data to it, and adds the one-at-a-time
timing of ``--sequential-configs``.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_decoupled import sweep as odx_sweep
from optax_decoupled.cli import _models
from optax_decoupled.cli._data import Split
from optax_decoupled.sweep import _engine, _optimizers

#: The optimizers a sweep accepts (no restarts: one cosine cycle per run).
SWEEP_OPTIMIZERS = _optimizers.OPTIMIZERS


def log_grid(lo: float, hi: float, n: int) -> np.ndarray:
  return np.geomspace(lo, hi, n) if n > 1 else np.asarray([np.sqrt(lo * hi)])


def model(data: Split, arch: _models.Architecture) -> odx_sweep.Model:
  """The MLP as the sweep's ``(init, loss, evaluate)``; ``data`` for the sweep
  is ``(x_train, y_train)``. ``evaluate`` gives the train loss (on the whole
  training set, which also sets BatchNorm's statistics) and the test error."""
  x, y = data.x_train, data.y_train
  x_test, y_test = data.x_test, data.y_test
  features, classes = x.shape[1], data.num_classes

  def loss(module, batch):
    xb, yb = batch
    return _models.cross_entropy(module(xb), yb)

  def evaluate(module):
    train_loss, _, _, test_error = _models.evaluate(module, x, y, x_test, y_test)
    return {"train_loss": train_loss, "test_error": test_error}

  return odx_sweep.from_nnx(
    lambda rngs: arch.module(features, classes, rngs), loss, evaluate
  )


def run_grid(
  optimizer: str,
  data: Split,
  arch: _models.Architecture,
  learning_rates,
  weight_decays,
  seeds: list[int],
  *,
  steps: int,
  batch_size: int,
  compensation: str | None = "auto",
  **options: Any,
) -> odx_sweep.SweepResult:
  """Every (lr, wd, seed) of the MLP; ``options`` go to :func:`odx_sweep.run`
  (``mesh``, ``chunk_size``, ``memory``, ``progress``)."""
  return odx_sweep.run(
    *model(data, arch),
    (data.x_train, data.y_train),
    optimizer=optimizer,
    learning_rates=learning_rates,
    weight_decays=weight_decays,
    seeds=seeds,
    steps=steps,
    batch_size=batch_size,
    mask=arch.decay_mask(),
    compensation=compensation,
    angular=angular_leaves(),
    **options,
  )


def angular_leaves():
  """The leaves whose angular update the command line records: the hidden
  kernels, scale-invariant in the normalized models."""
  import optax_decoupled as odx

  return odx.mask_by_path(_models.HIDDEN_KERNELS, decay=True)


def time_one_at_a_time(
  optimizer: str,
  data: Split,
  arch: _models.Architecture,
  result: odx_sweep.SweepResult,
  k: int,
  *,
  compensation: str | None = "auto",
) -> dict[str, Any]:
  """Runs ``k`` configurations of ``result``'s grid one at a time and
  extrapolates to all of them.

  Two ways: through the same run function jitted without ``vmap`` (compiled
  once, hyperparameters as arguments), and as a loop of separate runs does it
  (hyperparameters as constants, so each configuration compiles anew).
  """
  init, loss, evaluate = model(data, arch)
  steps, batch_size = result.steps, result.batch_size
  make_tx = _optimizers.factory(
    optimizer, steps, mask=arch.decay_mask(), compensation=compensation
  )
  one = _engine.make_run(loss, evaluate, make_tx, steps=steps, angular=angular_leaves())
  n = len(data.y_train)
  inits = _engine.init_states(init, result.seeds)
  tables = jnp.stack(
    [_engine.batch_table(s, steps, n, batch_size) for s in result.seeds]
  )
  rows = _engine.configs(result.learning_rates, result.weight_decays, result.seeds)
  fixed = (inits, tables, (data.x_train, data.y_train))

  def config(j):
    lr, wd, s = rows[j]
    return jnp.float32(lr), jnp.float32(wd), jnp.int32(s)

  def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start

  num_configs = len(rows)
  k = max(1, min(k, num_configs - 1))
  single = jax.jit(one)
  first = timed(single, *config(0), *fixed)
  per_config = float(np.mean([timed(single, *config(j + 1), *fixed) for j in range(k)]))
  naive = [
    timed(
      jax.jit(functools.partial(one, float(rows[j][0]), float(rows[j][1]))),
      config(j)[2],
      *fixed,
    )
    for j in range(k)
  ]
  return {
    "sequential_configs_timed": k,
    "sequential_compile_seconds": max(first - per_config, 0.0),
    "sequential_seconds_per_config": per_config,
    "sequential_seconds_estimate": first + per_config * (num_configs - 1),
    "recompiling_seconds_per_config": float(np.mean(naive)),
    "recompiling_seconds_estimate": float(np.mean(naive)) * num_configs,
  }


def sweep(
  optimizer: str,
  data: Split,
  arch: _models.Architecture,
  learning_rates: np.ndarray,
  weight_decays: np.ndarray,
  seeds: list[int],
  *,
  steps: int,
  batch_size: int,
  sequential_configs: int = 1,
  compensation: str | None = "auto",
  **options: Any,
) -> odx_sweep.SweepResult:
  """The whole grid at once; with ``sequential_configs > 0`` that many
  configurations are also run one at a time for the speed comparison, into
  ``result.run``."""
  result = run_grid(
    optimizer,
    data,
    arch,
    learning_rates,
    weight_decays,
    seeds,
    steps=steps,
    batch_size=batch_size,
    compensation=compensation,
    **options,
  )
  num_configs = len(learning_rates) * len(weight_decays) * len(seeds)
  if sequential_configs and num_configs > 1:  # one config: nothing to compare
    result.run.update(
      time_one_at_a_time(
        optimizer, data, arch, result, sequential_configs, compensation=compensation
      )
    )
  return result
