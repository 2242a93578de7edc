"""``run``: the paper's Figure 2 on the caller's model, every input checked first."""

import numbers
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from optax_decoupled.sweep import _engine, _optimizers
from optax_decoupled.sweep._result import SweepResult


def _grid(name: str, values) -> np.ndarray:
  try:
    grid = np.asarray(values, np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"{name}={values!r} must be a sequence of numbers") from None
  if grid.ndim != 1 or grid.size == 0:
    raise ValueError(f"{name}={values!r} must be a non-empty 1-D sequence")
  if not (np.all(np.isfinite(grid)) and np.all(grid > 0)):
    raise ValueError(f"{name}={values!r}: every value must be finite and > 0")
  if len(np.unique(grid)) != grid.size:
    raise ValueError(f"{name}={values!r} repeats a value")
  return grid


def _count(name: str, value, low: int = 1, high: int = _engine.INT32_MAX) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name}={value!r} must be an int")
  if not low <= int(value) <= high:
    raise ValueError(f"{name}={value!r} must be in [{low}, {high}]")
  return int(value)


def _seeds(seeds) -> list[int]:
  seeds = [seeds] if isinstance(seeds, numbers.Integral) else list(seeds)
  if not seeds:
    raise ValueError("seeds=[] must name at least one seed")
  for s in seeds:
    _count("seeds", s, 0, 2**32 - 1)
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds={seeds!r} repeats a seed")
  return [int(s) for s in seeds]


def _examples(data) -> int:
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise ValueError("data has no arrays; pass e.g. (x, y) with examples first")
  sizes = {np.shape(a)[0] if np.ndim(a) else None for a in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
      f"data's arrays must share their first axis (the examples); got "
      f"{[np.shape(a) for a in leaves]}"
    )
  return sizes.pop()  # type: ignore[return-value]


def _check_loss(loss, params, state, batch) -> None:
  """``loss(params, state, batch)`` must return ``(scalar, state)``."""
  out = jax.eval_shape(loss, params, state, batch)
  spec = jax.tree.map(lambda a: (a.shape, a.dtype), state)
  if not (isinstance(out, tuple) and len(out) == 2):
    raise ValueError(
      f"loss(params, state, batch) returned {out}; it must return a pair "
      "(loss, state): a scalar and the model state (the state it was given, "
      "updated), e.g. (loss, None) for a model without state"
    )
  value, new_state = out
  if value.shape != () or not jnp.issubdtype(value.dtype, jnp.floating):
    raise ValueError(
      f"loss(params, state, batch) returned a loss of shape {value.shape} and "
      f"dtype {value.dtype}; it must be a float scalar (take the batch mean)"
    )
  try:
    same = jax.tree.map(lambda a: (a.shape, a.dtype), new_state) == spec
  except ValueError:
    same = False
  if not same or jax.tree.structure(new_state) != jax.tree.structure(state):
    raise ValueError(
      "loss(params, state, batch) returned a state that is not shaped like "
      f"the one init gave ({jax.tree.structure(new_state)} against "
      f"{jax.tree.structure(state)}); return the updated state, or the same "
      "state unchanged"
    )


def _check_metrics(evaluate, params, state, metric: str) -> None:
  out = jax.eval_shape(evaluate, params, state)
  if not isinstance(out, dict) or not all(isinstance(k, str) for k in out):
    raise ValueError(
      f"evaluate(params, state) returned {out}; it must return a dict of "
      "named scalars, e.g. {'test_error': ...}"
    )
  bad = {k: v.shape for k, v in out.items() if v.shape != ()}
  if bad:
    raise ValueError(f"evaluate(params, state) returned non-scalar metrics {bad}")
  if metric not in out:
    raise ValueError(
      f"metric={metric!r} is not one of evaluate's metrics {sorted(out)}"
    )
  if "angular_update" in out:
    raise ValueError("evaluate's metrics must not be named 'angular_update'")


def run(
  init: Callable[[jax.Array], tuple[Any, Any]],
  loss: Callable[[Any, Any, Any], tuple[jax.Array, Any]],
  evaluate: Callable[[Any, Any], dict[str, jax.Array]],
  data: Any,
  *,
  optimizer: str | Callable[[jax.Array, jax.Array], optax.GradientTransformation],
  learning_rates: Sequence[float],
  weight_decays: Sequence[float],
  seeds: int | Sequence[int] = (0,),
  steps: int,
  batch_size: int,
  mask: Any = None,
  compensation: str | None = "auto",
  angular: Any = None,
  metric: str = "test_error",
  name: str | None = None,
  mesh: Mesh | None = None,
  chunk_size: int | None = None,
  memory: int | None = None,
  progress: bool = True,
) -> SweepResult:
  """Trains every (learning rate α, weight decay λ, seed) and measures it.

  Each run starts from ``init(jax.random.key(seed))``, takes ``steps`` steps
  on batches of ``batch_size`` examples of ``data`` (epochs of a permutation
  seeded by ``seed``, the remainder of each epoch dropped), and ends with
  ``evaluate``. All runs are one compiled program, ``jax.vmap``-ed over the
  configurations; the configurations are sharded over ``mesh`` (by default
  every device of every process, so under ``jax.distributed.initialize()``
  every host takes its share, and every process gets the whole result), and
  cut into chunks when the whole grid does not fit in memory. Everything is
  checked, with ``jax.eval_shape``, before anything trains.

  Args:
    init: ``key -> (params, state)``; ``state`` is what the model carries
      besides its parameters (BatchNorm statistics), or None.
    loss: ``(params, state, batch) -> (loss, state)``: the mean loss of a
      batch, differentiated with respect to ``params``, and the new state.
    evaluate: ``(params, state) -> {name: scalar}`` at the end of a run.
    data: a pytree of arrays with the examples on their first axis; a batch
      is the same pytree indexed by the batch's example indices.
    optimizer: a name (``adamw``, ``adam_l2``, ``sgdw``, ``sgd_l2``, and the
      ``_cautious`` and ``_corrected`` variants of the decoupled ones; one
      cosine ``η_t`` over the run, λ not multiplied by α), or a factory
      ``(learning_rate, weight_decay) -> optax.GradientTransformation`` that
      accepts traced scalars.
    learning_rates, weight_decays: the grid's axes, finite and positive.
    seeds: an int or distinct ints; each seeds the init and the batch order.
    steps, batch_size: of every run.
    mask: which leaves a named optimizer decays (``mask=`` of the library).
    compensation: of a named optimizer (``compensation=`` of the library).
    angular: which leaves' angular update ``‖Δθ‖/‖θ‖`` is recorded (a bool
      pytree or a callable, like ``mask``); default ``mask``, else every leaf
      of rank >= 2.
    metric: the metric of ``evaluate`` that the summary minimizes.
    name: the optimizer's name in the result (default: the name given, or
      the factory's ``__name__``).
    mesh: the devices to shard the configurations over (every axis of it).
    chunk_size: configurations per chunk, a multiple of the mesh's size
      (default: the most that fit in ``memory``).
    memory: bytes each device may use (default: 80 % of what it has free).
    progress: a progress bar over chunks, and a time estimate after the first.

  Returns:
    A :class:`SweepResult`.
  """
  lrs = _grid("learning_rates", learning_rates)
  wds = _grid("weight_decays", weight_decays)
  seeds = _seeds(seeds)
  steps = _count("steps", steps)
  num = _examples(data)
  batch_size = _count("batch_size", batch_size, 1, num)
  if not isinstance(metric, str):
    raise TypeError(f"metric={metric!r} must be the name of one of evaluate's metrics")
  if isinstance(optimizer, str):
    _optimizers.check_name(optimizer)
    make_tx = _optimizers.factory(
      optimizer, steps, mask=mask, compensation=compensation
    )
    label = name or optimizer
  elif callable(optimizer):
    make_tx = optimizer
    label = name or getattr(optimizer, "__name__", "custom")
  else:
    raise TypeError(
      f"optimizer={optimizer!r} must be a name or a factory "
      "(learning_rate, weight_decay) -> optax.GradientTransformation"
    )
  if mesh is None:
    mesh = _engine.default_mesh()
  elif not isinstance(mesh, Mesh):
    raise TypeError(f"mesh={mesh!r} must be a jax.sharding.Mesh")
  if chunk_size is not None:
    _count("chunk_size", chunk_size)
    if chunk_size % mesh.size:
      raise ValueError(
        f"chunk_size={chunk_size} is not a multiple of the mesh's {mesh.size} "
        f"devices; pass a multiple of {mesh.size}, or None to fit the memory"
      )
  if memory is not None:
    _count("memory", memory, 1, 2**62)
  if angular is None:
    angular = (
      mask if mask is not None else (lambda p: jax.tree.map(lambda a: a.ndim >= 2, p))
    )

  start = time.perf_counter()
  inits = _engine.init_states(init, seeds)
  params, state = jax.tree.map(lambda a: a[0], inits)
  batch = jax.tree.map(lambda a: np.asarray(a)[:batch_size], data)
  _check_loss(loss, params, state, batch)
  _check_metrics(evaluate, params, state, metric)
  _engine.selected(angular, params)  # its flags fit the params
  tx = make_tx(jnp.float32(1.0), jnp.float32(1.0))
  if not isinstance(tx, optax.GradientTransformation):
    raise TypeError(
      f"optimizer(learning_rate, weight_decay) returned {tx!r}, not an "
      "optax.GradientTransformation"
    )
  tables = jnp.stack([_engine.batch_table(s, steps, num, batch_size) for s in seeds])
  one = _engine.make_run(loss, evaluate, make_tx, steps=steps, angular=angular)
  program = _engine.Program(one, inits, tables, data, mesh)
  rows = _engine.configs(lrs, wds, seeds)
  chunk = _engine.choose_chunk(program, len(rows), chunk_size=chunk_size, memory=memory)
  metrics, info = program.run(rows, chunk, progress=progress)
  info["seconds"] = time.perf_counter() - start
  shape = (len(lrs), len(wds), len(seeds))
  metrics = {k: np.asarray(v, np.float64).reshape(shape) for k, v in metrics.items()}

  decoupled = predicted = eta_mean = None
  if isinstance(optimizer, str):
    decoupled = optimizer in _optimizers.DECOUPLED
    if decoupled:
      predicted, eta_mean = _optimizers.prediction(
        optimizer, steps, wds, _engine.angle_window(steps)
      )
  return SweepResult(
    optimizer=label,
    learning_rates=lrs,
    weight_decays=wds,
    seeds=seeds,
    metrics=metrics,
    metric=metric,
    steps=steps,
    batch_size=batch_size,
    decoupled=decoupled,
    predicted_angular_update=predicted,
    eta_mean=eta_mean,
    run=info,
  )
