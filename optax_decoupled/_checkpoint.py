"""A checkpoint's tree against the tree it is restored into.

Orbax refuses most mismatched restores, but its message calls the restore item
"Source" and the checkpoint "Target", reports an optimizer of another kind as
a list-length difference, and silently casts a leaf saved in one dtype to
another. :func:`check_restore_target` names the first differing leaf, with
both shapes and dtypes, before anything is read. It needs only ``.shape`` and
``.dtype`` on each leaf, so orbax stays an optional dependency.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_decoupled._checks import ArgumentTypeError
from optax_decoupled._masks import path_to_str


def _shape_dtype(name: str, path: str, leaf: Any) -> tuple[tuple[int, ...], str]:
  """A leaf's shape and dtype name; a Python scalar as JAX would store it."""
  if isinstance(leaf, bool | int | float | complex) and not hasattr(leaf, "dtype"):
    return (), jnp.asarray(leaf).dtype.name
  shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
  try:
    return tuple(int(d) for d in shape), np.dtype(dtype).name  # type: ignore[union-attr]
  except TypeError:
    raise ArgumentTypeError(
      f"{name} leaf {path or '(root)'}={leaf!r} has no shape and dtype: pass "
      "arrays, jax.ShapeDtypeStruct or orbax metadata"
    ) from None


def _leaves_by_path(name: str, tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {}
  for path, leaf in leaves:
    key = path_to_str(path)
    out[key] = _shape_dtype(name, key, leaf)
  return out


def _describe(shape_dtype: tuple[tuple[int, ...], str]) -> str:
  return f"shape {shape_dtype[0]} {shape_dtype[1]}"


def check_restore_target(saved: Any, target: Any) -> None:
  """Raises ``ValueError`` unless ``saved`` and ``target`` have the same leaves.

  Leaves are matched by path (``opt_state/0/mu/w``; a NamedTuple's fields and
  a dict's keys both count as names, a tuple's and a list's positions as
  indices, as orbax stores them) and must agree in shape and dtype. Use it
  before restoring an optimizer state, so that the state of another
  optimizer (``sgdw`` for ``adamw``), of another model, or with other moment
  dtypes is refused with the path that differs instead of being restored.

  The weight-decay ``mask`` is not part of the state: a checkpoint restores
  into the same optimizer with another mask, which then applies from the
  next step on.

  Args:
    saved: the checkpoint's tree, e.g.
      ``ocp.StandardCheckpointer().metadata(path).item_metadata``, or any
      pytree whose leaves have ``shape`` and ``dtype``.
    target: the tree to restore into (arrays or ``jax.ShapeDtypeStruct``).

  Raises:
    TypeError: a leaf that has neither ``shape`` and ``dtype`` nor is a
      Python scalar (a Python scalar counts as shape ``()`` in JAX's dtype).
    ValueError: naming the first leaf, in ``target``'s order, that is missing
      from either tree or differs in shape or dtype.

  Example:
    >>> import jax.numpy as jnp, optax_decoupled as odx
    >>> params = {"w": jnp.zeros((2, 3))}
    >>> saved = odx.adamw(1e-3).init(params)
    >>> odx.check_restore_target(saved, odx.adamw(1e-2).init(params))
    >>> odx.check_restore_target(saved, odx.sgdw(1e-2).init(params))
    Traceback (most recent call last):
    ...
    ValueError: the checkpoint does not match the restore target: 1/trace/w is in the target (shape (2, 3) float32) but not in the checkpoint ...
  """
  have, want = _leaves_by_path("saved", saved), _leaves_by_path("target", target)
  problem = None
  for path, leaf in want.items():
    if path not in have:
      problem = f"{path} is in the target ({_describe(leaf)}) but not in the checkpoint"
    elif have[path] != leaf:
      problem = (
        f"{path} is saved with {_describe(have[path])}, "
        f"the target has {_describe(leaf)}"
      )
    if problem:
      break
  else:
    extra = [p for p in have if p not in want]
    if extra:
      problem = f"{extra[0]} is in the checkpoint but not in the target"
  if problem:
    raise ValueError(
      f"the checkpoint does not match the restore target: {problem} (was it "
      "saved from another optimizer, model or dtype?)"
    )
