"""Beyond one machine: two processes joined by ``jax.distributed`` on localhost.

Each process has 4 CPU devices; together they form one mesh of 8 and train
AdamWR data-parallel, each process feeding its half of every batch
(``tests/distributed_worker.py``). The result must equal one process training
on the full batches.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import jax
import numpy as np
import optax
import pytest

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 90


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _one_process_run():
  """The same problem, steps and optimizer on one device, full batches."""
  params, xs, ys = worker.problem()
  tx = worker.make_optimizer()
  dev = jax.devices()[0]
  params = jax.device_put(params, dev)

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(worker.loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for x, y in zip(xs, ys, strict=True):
    params, state = step(params, state, jax.device_put(x, dev), jax.device_put(y, dev))
  return jax.tree.map(np.asarray, params)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  """2 processes x 4 devices, jax.distributed on 127.0.0.1, AdamWR through a
  warm restart: both processes end with identical params, equal (rtol 1e-5,
  atol 1e-6) to a single process on the full batches."""
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]),
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
  )
  port = _free_port()
  procs = [
    subprocess.Popen(
      [sys.executable, str(HERE / "distributed_worker.py"), str(i), "2"]
      + [str(port), str(tmp_path)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, p in enumerate(procs):
    log = logs[i] if i < len(logs) else ""
    assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{log[-3000:]}"

  got = [dict(np.load(tmp_path / f"params_{i}.npz")) for i in range(2)]
  want = _one_process_run()
  for k in want:
    np.testing.assert_array_equal(got[0][k], got[1][k], err_msg=k)
    np.testing.assert_allclose(got[0][k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
