"""Several processes, one sweep: ``jax.distributed`` from the environment.

Launch the same command once per process (one per host, or several on one
host) with the same ``--out``::

  JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \\
    optax-decoupled sweep --out runs/sweep
  JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 \\
    optax-decoupled sweep --out runs/sweep

or pass ``--distributed`` where ``jax.distributed.initialize()`` finds the
cluster by itself (SLURM, Open MPI, Cloud TPU). Process 0 claims and writes
``--out``; the others train their share and write nothing.
"""

from __future__ import annotations

import os

from optax_decoupled.cli import _args

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _env_int(name: str) -> int | None:
  text = os.environ.get(name)
  if text is None:
    return None
  try:
    return int(text)
  except ValueError:
    raise _args.UsageError(f"{name}={text!r} must be an integer") from None


def requested(args) -> bool:
  return bool(getattr(args, "distributed", False)) or any(n in os.environ for n in _ENV)


def initialize(args) -> None:
  """``jax.distributed.initialize`` when the environment or ``--distributed``
  asks for it; a no-op otherwise."""
  if not requested(args):
    return
  import jax

  count, index = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
  if count is not None and count < 1:
    raise _args.UsageError(f"JAX_NUM_PROCESSES={count} must be >= 1")
  if index is not None and count is not None and not 0 <= index < count:
    raise _args.UsageError(
      f"JAX_PROCESS_ID={index} must be in [0, {count}) (JAX_NUM_PROCESSES={count})"
    )
  if "cpu" in os.environ.get("JAX_PLATFORMS", "cpu"):
    # Host devices of several processes talk through gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=os.environ.get("JAX_COORDINATOR_ADDRESS"),
    num_processes=count,
    process_id=index,
  )


def claim_out(out: str, *, overwrite: bool) -> bool:
  """Claims ``--out`` on process 0 (the others wait for its answer); True on
  the process that writes. A refusal stops every process, before training."""
  import jax

  from optax_decoupled.cli import _outputs

  if jax.process_count() == 1:
    _outputs.check_out(out, overwrite=overwrite)
    return True
  import numpy as np
  from jax.experimental import multihost_utils

  error = None
  if jax.process_index() == 0:
    try:
      _outputs.check_out(out, overwrite=overwrite)
    except ValueError as e:
      error = e
  ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
  if error is not None:
    raise error
  if not int(ok):
    raise _args.UsageError(f"--out {out!r}: process 0 refused it (see its message)")
  return jax.process_index() == 0
