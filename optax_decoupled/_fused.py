"""One pass over memory for Adam's step on XLA:CPU, when the compiler allows it.

An AdamW step on a big leaf is pure memory traffic: read ``θ, g, m, v``, write
``θ, m, v``, seven arrays. By default XLA:CPU compiles it into three loops (new
``m``, new ``v``, new ``θ`` from the new ``m`` and ``v``), ten arrays of
traffic, because it has no multi-output fusion unless asked for:

.. code-block:: bash

  XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion

That pass only merges *sibling* loops, loops reading the same inputs. So when
it is on, :func:`scale_by_adam` computes the step of every leaf of at least
``ONE_PASS_MIN_SIZE`` elements from the old moments a second time instead of
reading the new moments back (the same arithmetic; the values
agree up to float32 rounding, as the compiler may contract multiply-adds
differently): the three loops then all read ``m, v, g`` and become one loop
with three outputs, seven arrays of traffic. Without the pass the same program
would need two temporary buffers, so the rewrite is used only when a probe
compilation shows the pass is active. The library never sets the flag: it is
process-wide, set it in the environment before JAX starts.
"""

import functools

import jax
import jax.numpy as jnp

#: The ``XLA_FLAGS`` setting that turns on XLA:CPU's multi-output fusion.
MULTI_OUTPUT_FUSION_FLAG = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"

#: Smallest leaf (in elements) given the one-pass form. A smaller leaf stays
#: in the cache, where a step costs per kernel, not per byte: there the
#: rewrite only adds compile time (1000 leaves of 1000: 2.1x optax's compile
#: time against 1.4x, the same step time).
ONE_PASS_MIN_SIZE = 16384


@functools.cache
def _probe(backend: str) -> bool:
  """Compiles two sibling elementwise loops; True if XLA made them one."""
  del backend  # the cache key: the default backend of the process
  shape = jax.ShapeDtypeStruct((4096,), jnp.float32)
  try:
    text = (
      jax.jit(lambda a, b: (a * 2.0 + b, a * 3.0 - b))
      .lower(shape, shape)
      .compile()
      .as_text()
    )
  except Exception:  # noqa: BLE001 - no probe, no rewrite
    return False
  return "(f32[4096]{0}, f32[4096]{0}) fusion(" in (text or "")


def multi_output_fusion() -> bool:
  """Whether the default backend is XLA:CPU with multi-output fusion on."""
  backend = jax.default_backend()
  return backend == "cpu" and _probe(backend)


def distinct(*values: jax.Array) -> tuple[jax.Array, ...]:
  """The same values as new HLO values, so XLA's CSE cannot merge their uses."""
  return jax.lax.optimization_barrier(values)
