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

from optax_decoupled.cli import _models, _train
from optax_decoupled.cli._data import Split

#: The optimizers a sweep accepts (no restarts: one cosine cycle per run).
SWEEP_OPTIMIZERS = tuple(n for n in _train.OPTIMIZERS if n not in _train.RESTARTS)


def log_grid(lo: float, hi: float, n: int) -> np.ndarray:
  return np.geomspace(lo, hi, n) if n > 1 else np.asarray([np.sqrt(lo * hi)])


def make_run(
  optimizer: str,
  data: Split,
  arch: _models.Architecture,
  *,
  steps: int,
  batch_size: int,
  compensation: str | None = "auto",
):
  """``run(lr, wd, params, rest, batches) -> (train_loss, test_error, angles)``.

  One whole training run as a pure function of arrays, ready for ``jax.vmap``
  or ``jax.jit``. ``params, rest`` are the model's ``nnx.Param`` state and the
  rest (BatchNorm statistics) from :func:`init_state`, ``batches`` the
  (steps, batch_size) indices from :func:`batch_table`. ``angles`` is the
  hidden kernels' angular update at every step.
  """
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  graphdef = arch.graphdef(x.shape[1], data.num_classes)
  # The recipe's numbers are placeholders: inject_hyperparams replaces them.
  recipe = _train.Recipe(optimizer, 0.0, 0.0, steps, batch_size, x.shape[0])
  base, flags = _train.OPTIMIZER_TABLE[optimizer]
  # float32 hyperparameters whatever the parameters' dtype: in bfloat16,
  # b2 = 0.999 would round to 1.
  factory = optax.inject_hyperparams(
    base,
    static_args=("schedule_multiplier", "mask", "compensation", *flags),
    hyperparam_dtype=jnp.float32,
  )

  def run(learning_rate, weight_decay, params, rest, batches):
    tx = factory(
      learning_rate=learning_rate,
      weight_decay=weight_decay,
      schedule_multiplier=recipe.eta(),
      mask=arch.decay_mask(),
      compensation=compensation,
      **flags,
    )

    def step(carry, idx):
      params, rest, opt_state = carry
      params, rest, opt_state, angle = train_step(
        graphdef, x, y, tx, params, rest, opt_state, idx
      )
      return (params, rest, opt_state), angle

    carry = (params, rest, tx.init(params))
    (params, rest, _), angles = jax.lax.scan(step, carry, batches)
    model = nnx.merge(graphdef, params, rest)
    train_loss, _, _, test_error = _models.evaluate(model, x, y, x_test, y_test)
    return train_loss, test_error, angles

  return run


def train_step(graphdef, x, y, tx, params, rest, opt_state, idx):
  """One step on the batch ``idx``: ``(params, rest, opt_state, angle)``.

  ``angle`` is the hidden kernels' angular update. nnx.grad, not jax.grad:
  BatchNorm writes its statistics as it runs, so they come back in ``rest``.
  """
  model = nnx.merge(graphdef, params, rest)
  grads = nnx.grad(
    lambda model: _models.cross_entropy(model(x[idx]), y[idx]),
    argnums=nnx.DiffState(0, nnx.Param),
  )(model)
  updates, opt_state = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  angle = _models.kernel_angular_update(params, new_params)
  return new_params, nnx.split(model, nnx.Param, ...)[2], opt_state, angle


def _stack(trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def batch_table(seed: int, steps: int, num_examples: int, batch_size: int):
  """All batch indices of a run, (steps, batch_size): the same as ``train``'s."""
  key = _train.batch_key(seed)
  table = jax.jit(
    jax.vmap(lambda t: _train.batch_indices(key, t, num_examples, batch_size))
  )
  return table(jnp.arange(steps, dtype=jnp.int32))


def init_state(data: Split, arch: _models.Architecture, seed: int):
  """``(params, rest)`` of the model for ``seed``: the same init as ``train``'s."""
  model = arch.make(data.x_train.shape[1], data.num_classes, seed)
  _, params, rest = nnx.split(model, nnx.Param, ...)
  return params, rest


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
) -> tuple[dict[str, np.ndarray], float, Any]:
  """Every (lr, wd, seed) in one vmapped program.

  Returns arrays of shape (lr, wd, seed) (``train_loss``, ``test_error``, and
  ``angular_update``: the mean over :func:`_train.angle_window`), the seconds it took
  (compile included), and ``(run, configs)`` for timing single runs.
  """
  configs = list(itertools.product(learning_rates, weight_decays, seeds))
  lr = jnp.asarray([c[0] for c in configs], jnp.float32)
  wd = jnp.asarray([c[1] for c in configs], jnp.float32)
  which = jnp.asarray([seeds.index(c[2]) for c in configs])
  n = len(data.y_train)
  state = _stack([init_state(data, arch, s) for s in seeds])
  batches = jnp.stack([batch_table(s, steps, n, batch_size) for s in seeds])
  state, batches = jax.tree.map(lambda a: a[which], (state, batches))
  run = make_run(
    optimizer, data, arch, steps=steps, batch_size=batch_size, compensation=compensation
  )

  window = _train.angle_window(steps)

  def summarized(*args):
    train_loss, test_error, angles = run(*args)
    return train_loss, test_error, jnp.mean(angles[window])

  start = time.perf_counter()
  outputs = jax.block_until_ready(
    jax.jit(jax.vmap(summarized))(lr, wd, *state, batches)
  )
  seconds = time.perf_counter() - start
  shape = (len(learning_rates), len(weight_decays), len(seeds))
  names = ("train_loss", "test_error", "angular_update")
  arrays = {
    k: np.asarray(v, np.float64).reshape(shape)
    for k, v in zip(names, outputs, strict=True)
  }

  def config(j):
    return lr[j], wd[j], *jax.tree.map(lambda a: a[j], (*state, batches))

  return arrays, seconds, (summarized, config, len(configs))


def time_one_at_a_time(summarized, config, num_configs: int, k: int) -> dict[str, Any]:
  """Runs ``k`` configurations one at a time and extrapolates to all of them.

  Two ways: through the same function jitted without ``vmap`` (compiled once,
  hyperparameters as arguments), and as a loop of separate runs does it
  (hyperparameters as constants, so each configuration compiles anew).
  """

  def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start

  k = max(1, min(k, num_configs - 1))
  single = jax.jit(summarized)
  first = timed(single, *config(0))
  per_config = float(np.mean([timed(single, *config(j + 1)) for j in range(k)]))
  naive = [
    timed(
      jax.jit(functools.partial(summarized, float(config(j)[0]), float(config(j)[1]))),
      *config(j)[2:],
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
) -> dict[str, Any]:
  """Trains the whole grid at once; returns one row per (lr, wd) and timings.

  ``test_error``, ``train_loss`` and ``angular_update`` of a row are means
  over the seeds; ``predicted_angular_update`` is the rotational-equilibrium
  prediction for the row's λ over the same window (decoupled optimizers).
  With ``sequential_configs > 0``, that many configurations are also run one
  at a time for the speed comparison (:func:`time_one_at_a_time`).
  """
  arrays, seconds, (summarized, config, num_configs) = run_grid(
    optimizer,
    data,
    arch,
    learning_rates,
    weight_decays,
    seeds,
    steps=steps,
    batch_size=batch_size,
    compensation=compensation,
  )
  timing: dict[str, Any] = {"configs": num_configs, "vmapped_seconds": seconds}
  if sequential_configs and num_configs > 1:  # one config: nothing to compare
    timing.update(
      time_one_at_a_time(summarized, config, num_configs, sequential_configs)
    )
  # η_t, and λ_t per unit λ (η_t / η_max for a corrected decay), over the window.
  unit = _train.Recipe(optimizer, 0.0, 1.0, steps, batch_size, 1)
  window = _train.angle_window(steps)
  eta_window = _train.schedule_values(unit.eta(), np.arange(steps))[window]
  lam_window = unit.lam_values(np.arange(steps))[window]
  rows = []
  for (i, a), (j, w) in itertools.product(
    enumerate(learning_rates), enumerate(weight_decays)
  ):
    row = {"optimizer": optimizer, "learning_rate": float(a), "weight_decay": float(w)}
    for key, values in arrays.items():
      row[key] = _finite_or_none(values[i, j].mean())
      row[f"{key}_per_seed"] = [_finite_or_none(v) for v in values[i, j]]
    if optimizer in _train.DECOUPLED:
      row["predicted_angular_update"] = float(
        np.mean(_train.equilibrium_angular_update(float(w) * lam_window, eta_window))
      )
    rows.append(row)
  return {"rows": rows, "timing": timing}


def _finite_or_none(value) -> float | None:
  """A number for JSON: None (null) for a diverged run's NaN or infinity."""
  value = float(value)
  return value if np.isfinite(value) else None
