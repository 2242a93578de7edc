"""One process of the two-process AdamWR run of ``test_distributed.py``.

Not a test module: ``test_distributed.py`` starts two of these on localhost,

  python tests/distributed_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR

each with 4 CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``),
joined by ``jax.distributed`` into one mesh of 8. Every process builds the same
problem from a seed, feeds only its own half of each batch, and writes the
final parameters to ``OUT_DIR/params_<id>.npz``.
"""

from __future__ import annotations

import sys

import numpy as np

STEPS = 6
GLOBAL_BATCH = 64


def problem():
  """Initial params and ``STEPS`` global batches, the same in every process."""
  rng = np.random.default_rng(0)
  params = {
    "w": rng.normal(size=(16, 8)).astype(np.float32),
    "b": np.zeros(8, np.float32),
  }
  xs = rng.normal(size=(STEPS, GLOBAL_BATCH, 16)).astype(np.float32)
  ys = rng.normal(size=(STEPS, GLOBAL_BATCH, 8)).astype(np.float32)
  return params, xs, ys


def make_optimizer():
  import optax_decoupled as odx

  return odx.adamwr(
    1e-2, first_cycle_steps=4, weight_decay=1e-2, mask=odx.mask_by_ndim()
  )


def loss(params, x, y):
  import jax.numpy as jnp

  pred = jnp.tanh(x @ params["w"] + params["b"][None, :])
  return jnp.mean((pred - y) ** 2)


def main(process_id: int, num_processes: int, port: int, out_dir: str) -> None:
  import jax
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_numpy_dtype_promotion", "strict")
  jax.config.update("jax_numpy_rank_promotion", "raise")
  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=num_processes,
    process_id=process_id,
  )
  n_local = jax.local_device_count()
  if jax.device_count() != n_local * num_processes:
    raise RuntimeError(f"{jax.device_count()=} with {n_local=}")

  mesh = jax.make_mesh((jax.device_count(),), ("batch",))
  data = NamedSharding(mesh, P("batch"))
  replicated = NamedSharding(mesh, P())

  # The rows of a global batch that this process's devices hold.
  rows = data.addressable_devices_indices_map((GLOBAL_BATCH, 16)).values()
  start = min(r[0].start for r in rows)
  stop = max(r[0].stop for r in rows)
  if stop - start != GLOBAL_BATCH // num_processes:
    raise RuntimeError(f"rows {start}:{stop} are not this process's half")

  params, xs, ys = problem()
  tx = make_optimizer()

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(loss)(params, x, y)  # mean over the global batch
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  with jax.set_mesh(mesh):
    params = jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(replicated, a), params
    )
    state = jax.jit(tx.init)(params)
    for x, y in zip(xs, ys, strict=True):
      # Each process hands over only its own rows of the global batch.
      x = jax.make_array_from_process_local_data(data, x[start:stop])
      y = jax.make_array_from_process_local_data(data, y[start:stop])
      params, state = step(params, state, x, y)

  local = {k: np.asarray(v.addressable_data(0)) for k, v in params.items()}
  np.savez(f"{out_dir}/params_{process_id}.npz", **local)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
