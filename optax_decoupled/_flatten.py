"""Many small leaves as one flat buffer: fewer, bigger loops per step."""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from optax_decoupled import _checks


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class FlatLayout:
  """Which leaves live in which flat buffer (static: no arrays, part of the treedef).

  ``groups[k]`` lists the leaf indices, in order, concatenated into flat buffer
  ``k`` (all of dtype ``dtypes[k]``); ``rest`` the indices passed through.
  ``treedef`` and ``shapes`` are the parameters' at ``init``: a tree that
  differs later (renamed keys, new shapes) is refused.
  """

  num_leaves: int
  dtypes: tuple[str, ...]
  groups: tuple[tuple[int, ...], ...]
  rest: tuple[int, ...]
  treedef: Any = None
  shapes: tuple[tuple[int, ...], ...] = ()


@jax.tree_util.register_pytree_with_keys_class
class Packed:
  """The packed parameters: one flat buffer per dtype, and the big leaves.

  A pytree node whose static data is the :class:`FlatLayout`: every copy of
  the packed tree in the wrapped state (Adam's ``mu`` and ``nu``, say) carries
  the layout, so the state needs no other field for it, and a state built from
  parameters without leaves (as ``optax.tree.map_params`` builds one) has the
  same structure wherever the parameters are. Reads as the pair ``(flats,
  rest)``.
  """

  def __init__(self, flats: tuple[Any, ...], rest: tuple[Any, ...], layout: FlatLayout):
    self.flats, self.rest, self.layout = flats, rest, layout

  def __iter__(self):
    return iter((self.flats, self.rest))

  def __getitem__(self, index):
    return (self.flats, self.rest)[index]

  def __len__(self):
    return 2

  def __eq__(self, other):
    return (
      isinstance(other, Packed)
      and self.layout == other.layout
      and (self.flats, self.rest) == (other.flats, other.rest)
    )

  __hash__ = None  # pyright: ignore[reportAssignmentType] (mutable contents, as a list)

  def __repr__(self):
    return f"Packed(flats={self.flats!r}, rest={self.rest!r})"

  def tree_flatten_with_keys(self):
    keys = jax.tree_util.GetAttrKey("flats"), jax.tree_util.GetAttrKey("rest")
    return tuple(zip(keys, (self.flats, self.rest), strict=True)), self.layout

  @classmethod
  def tree_unflatten(cls, layout, children):
    flats, rest = children
    return cls(flats, rest, layout)


class FlattenSmallLeavesState(NamedTuple):
  """State of :func:`flatten_small_leaves`.

  ``inner`` is the wrapped transformation's state on the packed parameters
  (a :class:`Packed` tree of flat buffers and big leaves, wherever the inner
  state copies the parameters' tree); ``layout`` says which leaf went where.
  """

  inner: Any

  @property
  def layout(self) -> FlatLayout | None:
    """The layout the state was built with (None if no copy holds it)."""
    return _stored_layout(self.inner)


def _stored_layout(inner: Any) -> FlatLayout | None:
  nodes = jax.tree.leaves(inner, is_leaf=lambda x: isinstance(x, Packed))
  return next((x.layout for x in nodes if isinstance(x, Packed)), None)


def _spans_devices(x: Any) -> bool:
  """True if ``x`` is placed on (or, traced, meshed over) more than one device."""
  if isinstance(x, jax.core.Tracer):
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    return mesh is not None and not mesh.empty and mesh.size > 1
  sharding = getattr(x, "sharding", None)
  return sharding is not None and len(sharding.device_set) > 1


def _as_array(x: Any) -> Any:
  """A leaf with ``shape`` and ``dtype`` (a Python scalar becomes an array)."""
  return x if hasattr(x, "shape") and hasattr(x, "dtype") else jnp.asarray(x)


def _layout(leaves: list[Any], max_leaf_size: int, treedef: Any) -> FlatLayout:
  by_dtype: dict[str, list[int]] = {}
  rest = []
  for i, x in enumerate(leaves):
    if np.size(x) <= max_leaf_size and not _spans_devices(x):
      by_dtype.setdefault(jnp.dtype(x.dtype).name, []).append(i)
    else:
      rest.append(i)
  return FlatLayout(
    num_leaves=len(leaves),
    dtypes=tuple(by_dtype),
    groups=tuple(tuple(g) for g in by_dtype.values()),
    rest=tuple(rest),
    treedef=treedef,
    shapes=tuple(tuple(np.shape(x)) for x in leaves),
  )


def _pack(leaves: list[Any], layout: FlatLayout) -> Packed:
  def flat(dtype, group):
    if any(isinstance(leaves[i], jax.ShapeDtypeStruct) for i in group):
      # Abstract parameters (init on shapes): an abstract flat buffer.
      size = sum(int(np.prod(leaves[i].shape)) for i in group)
      return jax.ShapeDtypeStruct((size,), jnp.dtype(dtype))
    return jnp.concatenate([jnp.ravel(leaves[i]).astype(dtype) for i in group])

  flats = tuple(
    flat(dtype, group)
    for dtype, group in zip(layout.dtypes, layout.groups, strict=True)
  )
  return Packed(flats, tuple(leaves[i] for i in layout.rest), layout)


def _check_tree(name: str, tree: Any, layout: FlatLayout) -> list[Any]:
  """``tree``'s leaves, if it has the tree and shapes seen at ``init``."""
  leaves, treedef = jax.tree.flatten(tree)
  if len(leaves) != layout.num_leaves:
    raise ValueError(
      f"{name} has {len(leaves)} leaves but the state was built for "
      f"{layout.num_leaves}: the tree changed since init"
    )
  if layout.treedef is not None and treedef != layout.treedef:
    raise ValueError(
      f"{name} is not the tree the state was built for (the tree changed "
      f"since init): got {treedef}, expected {layout.treedef}"
    )
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  for (path, leaf), shape in zip(paths, layout.shapes, strict=True):
    if tuple(np.shape(leaf)) != shape:
      raise ValueError(
        f"{name}{jax.tree_util.keystr(path)} has shape {tuple(np.shape(leaf))} "
        f"but the state was built for shape {shape}: the tree changed since init"
      )
  return [_as_array(x) for x in leaves]


def _opaque_offsets(flat: jax.Array, offsets: list[int]) -> tuple[jax.Array, ...]:
  """``offsets`` as runtime int32 scalars, each its own buffer.

  With a constant offset, every ``leaf_i + slice(flat, offset_i)`` is a distinct
  kernel for XLA, which compiles each one (1000 leaves: minutes). With the
  offsets coming out of a ``lax.cond`` on a runtime predicate (both branches
  give the same values), the per-leaf kernels of one size are identical and
  compiled once.
  """
  if not offsets or flat.size == 0:
    return tuple(jnp.int32(o) for o in offsets)
  consts = np.asarray(offsets, np.int32)
  return jax.lax.cond(
    jnp.isnan(flat[0]),
    lambda: tuple(jnp.int32(o) for o in consts),
    lambda: tuple(jnp.asarray(consts)[i] for i in range(len(consts))),
  )


def _unpack(packed: Any, layout: FlatLayout, like: list[Any]) -> list[Any]:
  """The leaves of ``packed`` (a :class:`Packed` tree) in their shapes and dtypes."""
  flats, rest = packed
  out: list[Any] = [None] * layout.num_leaves
  for flat, group in zip(flats, layout.groups, strict=True):
    sizes = [int(np.size(like[i])) for i in group]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
    for i, start, size in zip(group, _opaque_offsets(flat, starts), sizes, strict=True):
      piece = jax.lax.dynamic_slice(flat, (start,), (size,))
      out[i] = piece.reshape(np.shape(like[i])).astype(like[i].dtype)
  for i, x in zip(layout.rest, rest, strict=True):
    out[i] = x
  return out


def flatten_small_leaves(
  tx: optax.GradientTransformation, max_leaf_size: int = 16384
) -> optax.GradientTransformationExtraArgs:
  r"""Runs ``tx`` on one flat buffer holding all the small leaves.

  A step over a tree of many small leaves costs a few loops *per leaf*; on a
  CPU that overhead, not memory traffic, dominates. This wrapper keeps the
  leaves with at most ``max_leaf_size`` elements, per dtype, concatenated in
  one flat vector: ``tx``'s state for them is flat, each step concatenates the
  small gradients and parameters, and the update is cut back into leaves.
  Bigger leaves, and leaves placed on more than one device (a sharded or
  replicated ``jax.Array``), pass through untouched, with their own state.

  .. math::

    (u_{small}, u_{big}) = tx(\mathrm{concat}(g_{small}), g_{big}),
    \quad u_i = u_{small}[o_i : o_i + n_i]

  The result is the same as ``tx`` on the tree **if** ``tx`` treats every
  element alike (Adam, AdamW or SGD without a mask; per-leaf norms, as in
  LARS or LAMB, would see the flat buffer as one leaf). ``tx`` sees the packed
  parameters ``(flat buffers, big leaves)``, so a callable or pytree ``mask``
  inside ``tx`` does not describe the original tree: put the mask after the
  wrapper, for instance ``optax.chain(flatten_small_leaves(scale_by_adam()),
  optax.scale(-lr), add_decoupled_weight_decay(lam, mask=...))``; the per-leaf
  scaling and decay then fuse with the per-leaf unpacking.

  Args:
    tx: the transformation to run on the packed tree.
    max_leaf_size: largest leaf (in elements) to flatten, >= 1.

  The state works with optax's tree tools: ``optax.tree.get``, ``set`` and
  ``map_params`` (which applies its function to the flat buffers and big
  leaves, the state's copies of the parameters; a second tree shaped like the
  parameters, such as sharding specs, does not match them).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`FlattenSmallLeavesState` (the layout is static, in the treedef of
    the packed trees).

  Example:
    >>> import jax.numpy as jnp, optax, optax_decoupled as odx
    >>> tx = odx.flatten_small_leaves(odx.adamw(0.1, weight_decay=0.0),
    ...                               max_leaf_size=4)
    >>> params = {"b": jnp.zeros(2), "c": jnp.ones(3), "w": jnp.ones(5)}
    >>> state = tx.init(params)
    >>> state.layout.groups, state.layout.rest  # b and c flat, w on its own
    (((0, 1),), (2,))
    >>> grads = {"b": jnp.ones(2), "c": -jnp.ones(3), "w": jnp.ones(5)}
    >>> updates, state = tx.update(grads, state, params)
    >>> updates["c"]  # first Adam step: -α sign(g)
    Array([0.1, 0.1, 0.1], dtype=float32)
  """
  _checks.check_transformation("tx", tx)
  if isinstance(max_leaf_size, bool) or not isinstance(
    max_leaf_size, (int, np.integer)
  ):
    raise ValueError(f"max_leaf_size={max_leaf_size!r} must be an int >= 1")
  _checks.check_at_least("max_leaf_size", max_leaf_size, 1)
  tx = optax.with_extra_args_support(tx)

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    if not leaves:  # nothing to pack (or optax.tree.map_params' placeholder)
      return FlattenSmallLeavesState(tx.init(params))
    leaves = [_as_array(x) for x in leaves]
    layout = _layout(leaves, int(max_leaf_size), treedef)
    return FlattenSmallLeavesState(tx.init(_pack(leaves, layout)))

  def update_fn(updates, state, params=None, **extra_args):
    if not jax.tree.leaves(updates):
      inner_updates, inner = tx.update(updates, state.inner, params, **extra_args)
      return inner_updates, FlattenSmallLeavesState(inner)
    # A state that holds no copy of the parameters (plain SGD) does not care
    # how they are packed: the layout is then made again from the updates.
    layout = state.layout or _layout(
      [_as_array(x) for x in jax.tree.leaves(updates)],
      int(max_leaf_size),
      jax.tree.structure(updates),
    )
    treedef = jax.tree.structure(updates)
    leaves = _check_tree("updates", updates, layout)
    param_leaves = None if params is None else _check_tree("params", params, layout)
    packed_params = None if param_leaves is None else _pack(param_leaves, layout)
    packed, inner = tx.update(
      _pack(leaves, layout), state.inner, packed_params, **extra_args
    )
    out = _unpack(packed, layout, leaves)
    return treedef.unflatten(out), FlattenSmallLeavesState(inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)  # pyright: ignore[reportArgumentType]
