"""Which leaves get weight decay: masks by rank and by path, and a report.

A mask is what ``optax.masked`` takes: a pytree of bools with the structure of
the parameters (or a prefix of it), or a callable that builds one from the
parameters. ``True`` means the leaf is decayed.
"""

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Mask = Any  # a pytree of bools, or a callable from params to one
MaskFn = Callable[[Any], Any]


def path_to_str(path: tuple[Any, ...]) -> str:
  """``('params', 'Dense_0', 'kernel')``-style key path as ``params/Dense_0/kernel``."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _is_bool_leaf(leaf: Any) -> bool:
  """A bool, ``np.bool_`` or an array (NumPy, JAX, traced) of dtype bool."""
  if isinstance(leaf, bool | np.bool_):
    return True
  dtype = getattr(leaf, "dtype", None)
  return dtype is not None and np.dtype(dtype) == np.bool_


_RULE = (
  "must be None, a pytree of bools (Python or NumPy bools, or bool arrays of "
  "the leaf's shape) matching the params or a prefix of them, or a callable "
  "from params to one"
)


def check_mask(name: str, mask: Any) -> None:
  """Checks a ``mask=`` argument when it is given: None, a callable or bools."""
  if mask is None or callable(mask):
    return
  if np.ndim(mask) == 0 and _is_bool_leaf(mask):
    # What optax.inject_hyperparams makes of a mask callable: it takes every
    # callable argument for a schedule and passes on its value at the step.
    raise ValueError(
      f"{name}={mask!r} must be None, a callable or a pytree of bools matching "
      "the params, not one bool; under optax.inject_hyperparams pass "
      f"static_args=({name!r},) so the mask is not taken for a schedule"
    )
  _check_bits(name, mask)


def _check_bits(name: str, mask: Any) -> None:
  bad = [leaf for leaf in jax.tree.leaves(mask) if not _is_bool_leaf(leaf)]
  if bad:
    raise ValueError(f"{name}={mask!r} {_RULE}; it holds {bad[0]!r}")


def resolve_mask(mask: Mask | None, params: Any, name: str = "mask") -> Any:
  """The mask as a pytree of bools (a prefix of ``params``), or None.

  The one rule for masks, applied wherever a mask is used (the optimizers,
  :func:`all_of`, :func:`describe_mask`): a callable's result is checked like
  a mask given directly, the tree must be a prefix of ``params``, and a bool
  array must have shape ``()`` or the shape of every leaf it covers.
  """
  if mask is None:
    return None
  if callable(mask):
    bits = mask(params)
    _check_bits(f"{name}(params)", bits)
  else:
    check_mask(name, mask)
    bits = mask

  def check_leaf(bit, sub):
    if bit is None or np.ndim(bit) == 0:
      return
    for path, leaf in jax.tree_util.tree_flatten_with_path(sub)[0]:
      if np.shape(bit) != np.shape(leaf):
        raise ValueError(
          f"{name} has a bool array of shape {np.shape(bit)} for a parameter "
          f"of shape {np.shape(leaf)} (at {path_to_str(path) or 'the root'} "
          "below it): a per-element mask needs the leaf's shape"
        )

  try:
    jax.tree.map(check_leaf, bits, params, is_leaf=lambda x: x is None)
  except ValueError as e:
    if str(e).startswith(name):
      raise
    raise ValueError(
      f"{name} does not match the params' tree (a mask must be a prefix of it): {e}"
    ) from None
  return bits


def mask_by_ndim(min_ndim: int = 2) -> MaskFn:
  """Decays only leaves of rank ``>= min_ndim``.

  With the default, kernels and embeddings are decayed while biases, norm
  scales and scalars (rank 0 or 1) are not: the usual rule for transformers
  and CNNs.

  Args:
    min_ndim: the smallest rank that is decayed (>= 0).

  Returns:
    A callable from params to a pytree of bools, for ``mask=``.

  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    >>> odx.mask_by_ndim()(params)
    {'b': False, 'w': True}
  """
  if (
    isinstance(min_ndim, bool)
    or not isinstance(min_ndim, int | np.integer)
    or min_ndim < 0
  ):
    raise ValueError(f"min_ndim={min_ndim!r} must be an integer >= 0")
  return lambda params: jax.tree.map(lambda p: np.ndim(p) >= min_ndim, params)


def mask_by_path(*patterns: str, decay: bool = False) -> MaskFn:
  """Sets leaves whose path matches any regex in ``patterns`` to ``decay``.

  A leaf's path is its pytree keys joined by ``/``, as
  ``params/Dense_0/bias`` for Flax Linen or ``layers/0/bias/value`` for an
  ``nnx.State``; a pattern matches anywhere in it (``re.search``). With
  ``decay=False`` (the default) the matching leaves are excluded and all others
  decayed; with ``decay=True`` only the matching leaves are decayed.

  Args:
    *patterns: regular expressions, at least one.
    decay: what matching leaves get.

  Returns:
    A callable from params to a pytree of bools, for ``mask=``.

  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
    ...           "norm": {"scale": jnp.ones(3)}}
    >>> odx.mask_by_path("bias", "norm")(params)
    {'dense': {'bias': False, 'kernel': True}, 'norm': {'scale': False}}
  """
  if not patterns:
    raise ValueError("mask_by_path needs at least one pattern, got patterns=()")
  if not isinstance(decay, bool):
    raise ValueError(f"decay={decay!r} must be True or False")
  compiled = []
  for pattern in patterns:
    if not isinstance(pattern, str):
      raise ValueError(f"pattern={pattern!r} must be a str (a regex)")
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(f"pattern={pattern!r} is not a valid regex: {e}") from None

  def mask_fn(params):
    def leaf(path, _):
      hit = any(c.search(path_to_str(path)) for c in compiled)
      return decay if hit else not decay

    return jax.tree_util.tree_map_with_path(leaf, params)

  return mask_fn


def all_of(*masks: Mask) -> MaskFn:
  """Decays a leaf only where every mask decays it (logical AND).

  Per-element masks (bool arrays) are combined element by element.

  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> params = {"emb": jnp.ones((4, 2)), "w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    >>> odx.all_of(odx.mask_by_ndim(), odx.mask_by_path("emb"))(params)
    {'b': False, 'emb': False, 'w': True}
  """
  if not masks:
    raise ValueError("all_of needs at least one mask, got masks=()")
  for i, mask in enumerate(masks):
    if mask is None:
      raise ValueError(f"masks[{i}]=None must be a mask (None decays all)")
    check_mask(f"masks[{i}]", mask)

  def mask_fn(params):
    trees = [
      broadcast_mask(resolve_mask(m, params, f"masks[{i}]"), params)
      for i, m in enumerate(masks)
    ]
    return jax.tree.map(_and, *trees)

  return mask_fn


def _and(*bits: Any) -> Any:
  if all(isinstance(b, bool | np.bool_) for b in bits):
    return all(bool(b) for b in bits)
  out = bits[0]
  for b in bits[1:]:
    out = jnp.logical_and(out, b)
  return out


def broadcast_mask(mask: Any, params: Any) -> Any:
  """Expands a mask that is a prefix of ``params`` to one entry per leaf.

  A bool becomes a Python bool on every leaf below it (a None entry, False);
  a bool array stays as it is.
  """

  def expand(bit, sub):
    if bit is None or np.ndim(bit) == 0:
      value = False if bit is None else bool(bit)
      return jax.tree.map(lambda _: value, sub)
    return bit

  return jax.tree.map(expand, mask, params, is_leaf=lambda x: x is None)


def _dtype_name(leaf: Any) -> str:
  """An array's dtype, or a Python scalar's type (``float``, ``int``)."""
  return str(leaf.dtype) if hasattr(leaf, "dtype") else type(leaf).__name__


def describe_mask(params: Any, mask: Mask | None) -> str:
  """A table of every leaf: path, shape, dtype and whether it is decayed.

  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    >>> print(odx.describe_mask(params, odx.mask_by_ndim()))
    path  shape   dtype    decay
    b     (3,)    float32  no
    w     (2, 3)  float32  yes
    decayed: 1 of 2 leaves, 6 of 9 parameters
  """
  check_mask("mask", mask)
  bits = resolve_mask(mask, params)
  bits = jax.tree.map(lambda _: True, params) if bits is None else bits
  bits = broadcast_mask(bits, params)
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  flags = jax.tree.leaves(bits)
  rows = [("path", "shape", "dtype", "decay")]
  decayed_leaves = decayed_params = total = 0
  for (path, leaf), flag in zip(leaves, flags, strict=True):
    size = int(np.size(leaf))
    decayed = int(np.sum(np.broadcast_to(np.asarray(flag), np.shape(leaf))))
    total += size
    decayed_params += decayed
    if np.ndim(flag) == 0:
      decayed_leaves += bool(flag)
      label = "yes" if flag else "no"
    else:
      decayed_leaves += decayed > 0
      label = f"{decayed} of {size}"
    rows.append((path_to_str(path), str(np.shape(leaf)), _dtype_name(leaf), label))
  widths = [max(len(r[c]) for r in rows) for c in range(4)]
  lines = [
    "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
  ]
  lines.append(
    f"decayed: {decayed_leaves} of {len(flags)} leaves, "
    f"{decayed_params} of {total} parameters"
  )
  return "\n".join(lines)
