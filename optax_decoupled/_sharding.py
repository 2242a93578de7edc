"""Optimizer state that lives where the parameters live.

``optax.tree.zeros_like`` builds each moment buffer with ``jnp.zeros_like``.
Under ``jax.jit(tx.init)`` with an automatic (not explicit) mesh, a constant
has no tie to its parameter, so XLA places it replicated: a model sharded
FSDP-style silently gets a full copy of its Adam state on every device. The
buffers here are computed *from* the parameter, which carries its sharding
into the compiled program, and are exactly zero for every input (NaN and inf
included).
"""

from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import optax


def zeros_like_param(param: jax.Array, dtype: Any = None) -> jax.Array:
  """Zeros of ``param``'s shape and placement, in ``dtype`` (default: its own).

  The default dtype is canonical (a NumPy float64 parameter gives float32
  zeros when x64 is off), without the warning an explicit float64 would give.
  """
  if not (hasattr(param, "shape") and hasattr(param, "dtype")):
    param = jnp.asarray(param)  # a Python scalar
  dtype = jax.dtypes.canonicalize_dtype(param.dtype) if dtype is None else dtype
  if not isinstance(param, jax.core.Tracer):
    # An uncommitted parameter gets an uncommitted buffer: a committed one
    # would change the jitted step's input signature after its first call and
    # compile it a second time.
    committed = getattr(param, "committed", False)
    device = param.sharding if committed else None
    return jnp.zeros(param.shape, dtype, device=device)
  finite = jnp.where(jnp.isfinite(param), param, jnp.zeros((), param.dtype))
  return jnp.abs(finite * jnp.zeros((), param.dtype)).astype(dtype)


def tree_zeros_like_params(params: Any, dtype: Any = None) -> Any:
  """:func:`zeros_like_param` on every leaf of ``params``."""
  return jax.tree.map(lambda p: zeros_like_param(p, dtype), params)


def trace(decay: Any, *, nesterov: bool = False) -> optax.GradientTransformation:
  """``optax.trace`` (momentum) whose buffer keeps the parameters' sharding.

  Same update and state (``optax.TraceState``) as ``optax.trace``.
  """
  inner = optax.trace(decay=decay, nesterov=nesterov)

  def init_fn(params):
    return optax.TraceState(trace=tree_zeros_like_params(params))

  return optax.GradientTransformation(init_fn, inner.update)
