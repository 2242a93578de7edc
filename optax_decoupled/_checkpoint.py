"""A checkpoint's tree against the tree it is restored into.

Orbax refuses most mismatched restores, but its message calls the restore item
"Source" and the checkpoint "Target", reports an optimizer of another kind as
a list-length difference, and silently casts a leaf saved in one dtype to
another. :func:`check_restore_target` names the first differing leaf, with
both shapes and dtypes, before anything is read. It needs only ``.shape`` and
``.dtype`` on each leaf, so orbax stays an optional dependency.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from optax_decoupled._masks import path_to_str


def _leaves_by_path(tree: Any) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_to_str(path): leaf for path, leaf in leaves}


def _describe(leaf: Any) -> str:
  return f"shape {tuple(np.shape(leaf))} {np.dtype(leaf.dtype).name}"


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
  have, want = _leaves_by_path(saved), _leaves_by_path(target)
  problem = None
  for path, leaf in want.items():
    if path not in have:
      problem = f"{path} is in the target ({_describe(leaf)}) but not in the checkpoint"
    elif tuple(np.shape(have[path])) != tuple(np.shape(leaf)) or np.dtype(
      have[path].dtype
    ) != np.dtype(leaf.dtype):
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
