"""Running a sweep: every (α, λ, seed) is one training run of one program.

The runs are ``jax.vmap``-ed over a configuration axis, which is sharded over
a mesh of devices (all of them, across processes, by default) and cut into
chunks that fit in memory. Each run is a ``lax.scan`` over steps whose batches
are drawn in the program from the data's arrays.
"""

import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_decoupled as odx
from optax_decoupled.sweep import _memory

INT32_MAX = 2**31 - 1


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


def batch_table(seed: int, steps: int, num_examples: int, batch_size: int):
  """All batch indices of a run, (steps, batch_size)."""
  key = batch_key(seed)
  table = jax.jit(jax.vmap(lambda t: batch_indices(key, t, num_examples, batch_size)))
  return table(jnp.arange(steps, dtype=jnp.int32))


def angle_window(steps: int) -> slice:
  """The middle half of a run, where the angular update is averaged."""
  return slice(steps // 4, max(steps // 4 + 1, (3 * steps) // 4))


def init_states(init: Callable, seeds: list[int]):
  """``(params, state)`` for each seed, stacked: ``init(jax.random.key(seed))``."""
  jitted = jax.jit(init)
  states = []
  for seed in seeds:
    out = jitted(jax.random.key(seed))
    if not (isinstance(out, tuple) and len(out) == 2):
      raise TypeError(
        f"init(key) returned a {type(out).__name__}; it must return a pair "
        "(params, state): (params, None) for a model without state"
      )
    states.append(out)
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def selected(mask, params) -> list:
  """The leaves of ``params`` where ``mask`` (a bool pytree or a callable
  params -> bool pytree, as optax's ``mask=``) is True."""
  flags = mask(params) if callable(mask) else mask
  leaves = jax.tree.leaves(params)
  chosen = jax.tree.leaves(flags)
  if len(chosen) != len(leaves):
    raise ValueError(
      f"angular= gives {len(chosen)} flags for the {len(leaves)} leaves of params; "
      "pass a pytree of bools shaped like params, or a callable params -> bools"
    )
  return [leaf for leaf, keep in zip(leaves, chosen, strict=True) if keep]


def make_run(
  loss: Callable,
  evaluate: Callable,
  make_tx: Callable,
  *,
  steps: int,
  angular: Any,
) -> Callable:
  """``one(lr, wd, seed_index, inits, tables, data) -> metrics``: one whole run.

  ``inits`` and ``tables`` hold every seed's initial ``(params, state)`` and
  batch indices; the run takes row ``seed_index`` of each. ``metrics`` are
  ``evaluate``'s, and ``angular_update``: the mean ``‖Δθ‖/‖θ‖`` of the
  ``angular`` leaves over :func:`angle_window`.
  """
  window = angle_window(steps)
  grad = jax.value_and_grad(loss, has_aux=True)

  def one(learning_rate, weight_decay, seed_index, inits, tables, data):
    params, state = jax.tree.map(lambda a: a[seed_index], inits)
    tx = make_tx(learning_rate, weight_decay)

    def step(carry, idx):
      params, state, opt_state = carry
      batch = jax.tree.map(lambda a: a[idx], data)
      (_, state), grads = grad(params, state, batch)
      updates, opt_state = tx.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      angles = odx.angular_update(
        selected(angular, params), selected(angular, new_params)
      )
      angle = jnp.mean(jnp.stack(angles)) if angles else jnp.float32(0.0)
      return (new_params, state, opt_state), angle

    carry = (params, state, tx.init(params))
    (params, state, _), angles = jax.lax.scan(step, carry, tables[seed_index])
    metrics = dict(evaluate(params, state))
    metrics["angular_update"] = jnp.mean(angles[window])
    return metrics

  return one


def configs(learning_rates, weight_decays, seeds) -> np.ndarray:
  """``(lr, wd, seed index)`` of every run, lr-major: (n, 3) float64."""
  return np.asarray(
    [
      (a, w, k)
      for a, w, k in itertools.product(learning_rates, weight_decays, range(len(seeds)))
    ],
    np.float64,
  )


def default_mesh() -> Mesh:
  """All devices of all processes, one axis: ``configs``."""
  return Mesh(np.asarray(jax.devices()), ("configs",))


def _global(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array of ``host`` (the same in every process) laid out by ``sharding``."""
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _to_host(tree):
  """A pytree of global arrays as NumPy arrays on every process."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)


class Program:
  """One sweep's compiled run function, laid out over ``mesh``, in chunks."""

  def __init__(self, one: Callable, inits, tables, data, mesh: Mesh):
    self.mesh = mesh
    self.devices = mesh.devices.size
    axes = P(mesh.axis_names)
    self.split = NamedSharding(mesh, axes)
    self.replicated = NamedSharding(mesh, P())
    host = jax.tree.map(np.asarray, (inits, tables, data))
    self.fixed = jax.tree.map(lambda a: _global(a, self.replicated), host)
    self._compiled: dict[int, Any] = {}
    self.compile_seconds = 0.0  # every size compiled, the memory probes included
    # Each device vmaps its own configurations: the numbers of a device
    # depend only on how many configurations it trains at once.
    batched = jax.vmap(one, in_axes=(0, 0, 0, None, None, None))

    self.function = jax.jit(
      jax.shard_map(
        batched,
        mesh=mesh,
        in_specs=(axes, axes, axes, P(), P(), P()),
        out_specs=axes,
      )
    )

  def _inputs(self, rows: np.ndarray):
    lr = _global(rows[:, 0].astype(np.float32), self.split)
    wd = _global(rows[:, 1].astype(np.float32), self.split)
    k = _global(rows[:, 2].astype(np.int32), self.split)
    return lr, wd, k, *self.fixed

  def compile(self, size: int):
    """The program for ``size`` configurations (a multiple of the devices),
    compiled once."""
    if size in self._compiled:
      return self._compiled[size]
    shapes = [
      jax.ShapeDtypeStruct((size,), dtype, sharding=self.split)
      for dtype in (jnp.float32, jnp.float32, jnp.int32)
    ]
    start = time.perf_counter()
    self._compiled[size] = self.function.lower(*shapes, *self.fixed).compile()
    self.compile_seconds += time.perf_counter() - start
    return self._compiled[size]

  def bytes_per_device(self, size: int) -> int | None:
    return _memory.compiled_bytes(self.compile(size))

  def run(self, rows: np.ndarray, chunk: int, *, progress: bool) -> tuple[dict, dict]:
    """Every row of ``rows`` in chunks of ``chunk``; NumPy metrics per row.

    ``chunk`` is a multiple of the device count; the last chunk is padded with
    copies of the first row (its results dropped), so one program serves all.
    """
    n = len(rows)
    chunks = math.ceil(n / chunk)
    padded = np.concatenate([rows, np.repeat(rows[:1], chunks * chunk - n, 0)])
    compiled = self.compile(chunk)
    outputs = []
    bar = _progress(chunks, progress)
    for c in range(chunks):
      t = time.perf_counter()
      out = _to_host(compiled(*self._inputs(padded[c * chunk : (c + 1) * chunk])))
      outputs.append(out)
      if c == 0 and chunks > 1:
        first = time.perf_counter() - t
        bar.write(
          f"{chunks} chunks of {chunk} configurations; the first took "
          f"{first:.1f} s, so about {first * (chunks - 1):.0f} s more"
        )
      bar.update(1)
    bar.close()
    metrics = {k: np.concatenate([o[k] for o in outputs])[:n] for k in outputs[0]}
    info = {
      "devices": self.devices,
      "processes": jax.process_count(),
      "chunks": chunks,
      "configs_per_chunk": chunk,
      "compile_seconds": self.compile_seconds,
      "memory_per_device_bytes": _memory.compiled_bytes(compiled),
    }
    return metrics, info


class _Quiet:
  """What the loop asks of a progress bar, when none is shown."""

  def update(self, n: int) -> None:
    del n

  def write(self, line: str) -> None:
    del line

  def close(self) -> None:
    pass


def _progress(total: int, enabled: bool):
  """A tqdm bar over chunks (process 0, more than one chunk, ``enabled``)."""
  if not enabled or total == 1 or jax.process_index() != 0:
    return _Quiet()
  from tqdm.auto import tqdm  # the sweep extra

  return tqdm(total=total, unit="chunk", desc="sweep")


def _agreed(budget: int | None) -> int | None:
  """The smallest budget of all processes, so that all run the same chunks."""
  if jax.process_count() == 1:
    return budget
  found = multihost_utils.process_allgather(np.int64(-1 if budget is None else budget))
  known = [int(b) for b in np.ravel(found) if b >= 0]
  return min(known) if known else None


def choose_chunk(
  program: Program, n: int, *, chunk_size: int | None, memory: int | None
) -> int:
  """Configurations per chunk: ``chunk_size``, or the most that fit in
  ``memory`` bytes per device (default: what each device has free now), by
  XLA's account of the compiled program."""
  d = program.devices
  whole = d * math.ceil(n / d)
  if chunk_size is not None:
    return min(chunk_size, whole)
  budget = _agreed(_memory.budget(program.mesh, memory))
  if budget is None:
    return whole
  full = program.bytes_per_device(whole)
  if full is None or full <= budget:
    return whole
  one = program.bytes_per_device(d)
  assert one is not None  # the same backend answered for the whole grid
  if one > budget:
    given = f"memory={memory}" if memory is not None else "the memory free"
    raise ValueError(
      f"{given} ({_memory.size(budget)} per device) is less than one "
      f"configuration per device needs ({one} bytes, {_memory.size(one)}); lower "
      "steps, batch_size or the model's size, or give more memory"
    )
  # Memory grows about linearly with the configurations per device; check
  # the estimate on the compiled chunk, and shrink it if it is over.
  per_config = (full - one) / max(whole // d - 1, 1)
  chunk = d * max(1, min(1 + int((budget - one) // max(per_config, 1)), whole // d))
  for _ in range(3):
    used = program.bytes_per_device(chunk)
    if used is None or used <= budget or chunk == d:
      break
    chunk = d * max(1, int(chunk // d * budget / used))
  return chunk
