"""Updates that survive rounding to low-precision parameters.

``optax.apply_updates`` forms ``(θ + u).astype(θ.dtype)``. For a bfloat16
``θ`` (8 significand bits) a ``u`` below half a unit in the last place of
``θ`` rounds away: ``θ(1 - η_t λ)`` equals ``θ`` whenever ``η_t λ < 2^-9``,
and small Adam steps on large weights vanish too. The transformation here ends
a chain and hands back the update that makes ``apply_updates`` land on a
compensated value:

* **Kahan**: a buffer ``c`` per leaf, in the leaf's dtype, holds what rounding
  dropped; the next step adds it back. With ``y = u + c`` (in float32),
  ``θ' = round(θ + y)`` and ``c' = y - (θ' - θ)``: ``θ' + c'`` is the exact
  sum, to the rounding of ``c'`` itself. That rounding is decided against a
  deterministic dither (:func:`_weyl_bits`), so that the buffer's own 8 bits
  do not stall once the steps fall below half of *its* ulp.
* **Stochastic rounding**: ``θ + u`` (in float32) rounds to one of its two
  neighbours in the leaf's dtype, up with probability equal to the distance
  from the lower one in units of their spacing, so that the expected
  parameter is the exact one. The bits come from the seed in the state,
  folded with the step and the leaf's index.

Both hand back ``u' = θ' - θ`` in the leaf's dtype, computed with the very
roundings ``apply_updates`` makes (:func:`round_nearest`). ``θ + u'`` is
``θ'`` whenever ``θ'`` and ``θ`` lie within a factor of two of each other
(Sterbenz), which is every step but a jump across zero or past a doubling. In
those rare steps Kahan's ``c'`` is taken from the value ``apply_updates``
actually produces, and stochastic rounding picks between the two steps next
to ``u``, so nothing is lost either way.
"""

import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from optax_decoupled import _checks
from optax_decoupled._adam import compute_dtype
from optax_decoupled._decay_variants import PEAK_ATTRIBUTE
from optax_decoupled._masks import Mask, broadcast_mask, path_to_str, resolve_mask
from optax_decoupled._sharding import zeros_like_param

#: The values of ``compensation=``.
COMPENSATIONS = ("auto", "kahan", "stochastic", None)

#: float32's significand bits: leaves with fewer are "low precision".
_FULL_PRECISION_BITS = 24


class CompensationState(NamedTuple):
  """State of :func:`compensate_rounding`.

  ``count`` is the step and ``seed`` the int32 seed of stochastic rounding
  (the key of a step is ``fold_in(key(seed), count)``); both are scalars, so
  a state sharded like the parameters replicates them. ``residual`` is each
  leaf's Kahan buffer, in its dtype (what rounding dropped, times
  ``2^nmant``), or ``optax.MaskedNode()`` for a leaf that has none. The fields
  are the same for every ``compensation``.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride] (int32)
  seed: jax.Array
  residual: Any


def check_compensation(compensation: Any, seed: Any) -> None:
  """Checks ``compensation=`` and ``seed=`` when an optimizer is built."""
  if compensation not in COMPENSATIONS or isinstance(compensation, bool):
    raise ValueError(
      f"compensation={compensation!r} must be one of 'auto' (Kahan on "
      "low-precision leaves), 'kahan', 'stochastic' or None"
    )
  if isinstance(seed, jax.core.Tracer):
    if not jnp.issubdtype(seed.dtype, jnp.integer) or seed.ndim != 0:
      raise _checks.ArgumentTypeError(
        f"seed={seed!r} must be an integer scalar; under "
        "optax.inject_hyperparams pass static_args=('seed',) or an int"
      )
    return
  try:
    kind = np.asarray(seed).dtype
  except (TypeError, ValueError):  # a PRNG key, an object
    kind = np.dtype(object)
  if isinstance(seed, bool | np.bool_) or not jnp.issubdtype(kind, jnp.integer):
    raise _checks.ArgumentTypeError(f"seed={seed!r} must be an integer")
  if np.ndim(seed) != 0:
    raise _checks.ArgumentTypeError(f"seed={seed!r} must be an integer scalar")
  if not -(2**31) <= int(seed) < 2**31:
    raise ValueError(f"seed={seed!r} must be an integer in int32's range")


def is_low_precision(dtype: Any) -> bool:
  """True for a real floating dtype with fewer significand bits than float32."""
  return bool(
    jnp.issubdtype(dtype, jnp.floating)
    and jnp.finfo(dtype).nmant + 1 < _FULL_PRECISION_BITS
  )


def method_for(dtype: Any, compensation: str | None) -> str | None:
  """The method a leaf of ``dtype`` gets: "kahan", "stochastic" or None.

  "auto": Kahan on low-precision leaves. "kahan": on every real floating
  leaf (float32 and float64 too, computed in their own dtype). "stochastic":
  low-precision leaves only (there is nothing wider to round from otherwise).
  Complex and integer leaves are never touched.
  """
  if compensation is None or not jnp.issubdtype(dtype, jnp.floating):
    return None
  if compensation == "kahan":
    return "kahan"
  if not is_low_precision(dtype):
    return None
  return "kahan" if compensation == "auto" else "stochastic"


def _as_array(x: Any) -> Any:
  return x if hasattr(x, "dtype") and hasattr(x, "shape") else jnp.asarray(x)


def _buffer_scale(dtype: Any) -> float:
  """The Kahan buffer holds ``c · 2^nmant``: the size of ``θ``, not of its ulp.

  A residual is below an ulp of ``θ`` (``|θ| 2^-nmant``); stored as it is, a
  float16 buffer would be subnormal for every ``|θ| < 2^-3``. Scaled by a
  power of two it keeps its significand, exactly.
  """
  return 2.0 ** int(jnp.finfo(dtype).nmant) if is_low_precision(dtype) else 1.0


def _weyl_bits(p: jax.Array, count: jax.Array) -> jax.Array:
  """32 bits per element, equidistributed over the steps (no PRNG).

  ``h(θ) + t φ mod 2^32``, ``h`` a multiplicative hash of the parameter's
  bits and ``φ`` the golden ratio's 32-bit constant (an additive recurrence).
  For a fixed element the sequence over the steps fills the range evenly, so
  a rounding decided by it is unbiased over time, for a few integer
  operations (a PRNG costs tens). It depends on nothing but the value and the
  step: the same wherever the leaf lives (flattened, sharded, mapped).
  """
  raw = jax.lax.bitcast_convert_type(p, jnp.dtype(f"uint{p.dtype.itemsize * 8}"))
  return raw.astype(jnp.uint32) * jnp.uint32(0x9E3779B9) + count.astype(
    jnp.uint32
  ) * jnp.uint32(0x7F4A7C15)


def round_nearest(x: jax.Array, dtype: Any) -> jax.Array:
  """Float32 ``x`` rounded to nearest (ties to even) in ``dtype``, as float32.

  Spelled out instead of ``x.astype(dtype).astype(float32)``: XLA may drop
  such a pair of conversions (it allows "excess precision"), and the update
  must be computed with the very roundings ``optax.apply_updates`` makes.
  Subnormals of a narrower exponent range (float16) are kept, as a
  conversion keeps them.
  """
  if not is_low_precision(dtype):
    return x
  info = jnp.finfo(dtype)
  out = jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)
  if info.nexp < jnp.finfo(jnp.float32).nexp:
    quantum = float(info.smallest_subnormal)
    below = jnp.round(x / quantum) * quantum
    out = jnp.where(jnp.abs(x) < float(info.smallest_normal), below, out)
  return out


def round_against(x: jax.Array, dtype: Any, bits: jax.Array) -> jax.Array:
  """Float32 ``x`` rounded to ``dtype`` (as float32), up with probability
  equal to the distance from the lower neighbour in units of their gap.

  ``bits`` are 32 uniform bits per element, of which only the top 16 are
  read. The significand bits of ``x`` below ``dtype``'s are summed with as
  many of them and cut off (the carry
  rounds the magnitude up exactly with that probability; torchao's rule), so
  with uniform bits ``E[round(x)] = x`` exactly. Subnormals of a narrower
  exponent range round on their fixed grid the same way. Integer arithmetic
  throughout: no conversion for XLA to drop. NaN stays NaN.
  """
  info = jnp.finfo(dtype)
  drop = int(jnp.finfo(jnp.float32).nmant - info.nmant)
  raw = jax.lax.bitcast_convert_type(x, jnp.uint32)
  dither = bits >> jnp.uint32(32 - drop)
  cut = jnp.uint32(~(2**drop - 1) & 0xFFFFFFFF)
  out = jax.lax.bitcast_convert_type((raw + dither) & cut, jnp.float32)
  out = jnp.where(jnp.isnan(x), x, out)
  if info.nexp < jnp.finfo(jnp.float32).nexp:
    quantum = float(info.smallest_subnormal)
    uniform = (bits >> jnp.uint32(16)).astype(jnp.float32) * 2.0**-16
    below = jnp.floor(x / quantum + uniform) * quantum
    out = jnp.where(jnp.abs(x) < float(info.smallest_normal), below, out)
  return out


def _kahan(u: jax.Array, p: jax.Array, c: jax.Array, count: jax.Array):
  """The update and the new buffer for one leaf (Kahan-compensated sum).

  The residual is rounded into the buffer against a dither
  (:func:`_weyl_bits`): to nearest it would stall once the steps fall below
  half an ulp of the residual itself (for bfloat16, ``2^-17 |θ|``), and a
  small decay would be lost again. Where the sum is not finite (an infinite
  weight or update, or an overflow) the update passes as it came and the
  buffer restarts at zero, so ``apply_updates`` gives what it gives without
  compensation.
  """
  dt = compute_dtype(p.dtype)
  scale = _buffer_scale(p.dtype)
  pd, ud = p.astype(dt), u.astype(dt)
  y = ud + c.astype(dt) / scale
  target = round_nearest(pd + y, p.dtype)
  step = round_nearest(target - pd, p.dtype)
  landed = round_nearest(pd + step, p.dtype)  # what optax.apply_updates gives
  residual = (y - (landed - pd)) * scale
  if is_low_precision(c.dtype):
    residual = round_against(residual, c.dtype, _weyl_bits(p, count))
  finite = jnp.isfinite(target) & jnp.isfinite(pd)
  step = jnp.where(finite, step, ud)
  residual = jnp.where(finite, residual, jnp.zeros_like(residual))
  return step.astype(p.dtype), residual.astype(c.dtype)


def _stochastic(u: jax.Array, p: jax.Array, key: jax.Array) -> jax.Array:
  """The update that lands ``p`` on a stochastic rounding of ``x = p + u``.

  Where a neighbour of ``x`` is not ``p`` plus a representable step (a step
  across zero or past a doubling of ``|p|``), the update is instead one of the
  two steps next to ``u``, chosen so that the mean of where ``apply_updates``
  lands is ``x``; if both land on the same value (every step there ends on a
  tie), that value is within an ulp of ``x``.
  """
  pd, ud = p.astype(jnp.float32), u.astype(jnp.float32)
  x = pd + ud
  bits = jax.random.bits(key, p.shape, jnp.uint32)
  zeros, ones = jnp.zeros_like(bits), jnp.full_like(bits, 0xFFFFFFFF)

  def reachable(target):
    step = target - pd
    return round_nearest(step, p.dtype) == step

  # Both neighbours of x, whatever the draw, so that the choice of method
  # does not depend on it.
  ends = round_against(x, p.dtype, zeros), round_against(x, p.dtype, ones)
  exact = reachable(ends[0]) & reachable(ends[1])
  step = round_against(x, p.dtype, bits) - pd
  toward, away = round_against(ud, p.dtype, zeros), round_against(ud, p.dtype, ones)
  down, up = jnp.minimum(toward, away), jnp.maximum(toward, away)
  lands_down = round_nearest(pd + down, p.dtype)
  span = round_nearest(pd + up, p.dtype) - lands_down
  chance = jnp.where(span > 0, (x - lands_down) / jnp.where(span > 0, span, 1), 0)
  # The coin reads the low 16 bits; round_against reads only the top 16.
  uniform = (bits & jnp.uint32(0xFFFF)).astype(jnp.float32) * 2.0**-16
  step = jnp.where(exact, step, jnp.where(uniform < chance, up, down))
  return step.astype(p.dtype)


def compensate_rounding(
  compensation: str | None = "auto", *, seed: jax.typing.ArrayLike = 0
) -> optax.GradientTransformation:
  r"""Ends a chain so that low-precision parameters keep every small step.

  Put it **last** in a chain: it takes the final update ``u`` (learning rate
  and weight decay included) and hands back ``u'``, in the parameter's dtype,
  such that ``optax.apply_updates(θ, u')`` is the compensated parameter.

  .. math::

    \text{Kahan:}\quad y = u + c,\quad θ' = \mathrm{round}(θ + y),\quad
    c' = y - (θ' - θ),\quad u' = θ' - θ

  ``c`` is a buffer per leaf in the leaf's dtype (holding ``c · 2^nmant``, so
  that a float16 buffer stays a normal number), the arithmetic is float32 for
  low-precision leaves, and ``c'`` is rounded into the buffer against a
  deterministic dither, which keeps increments far below the buffer's own
  ulp. Stochastic rounding instead rounds ``θ + u`` up or down at random with
  the probability that makes the expected ``θ'`` exact, and needs no buffer.
  Both land where ``optax.apply_updates`` (or ``nnx.Optimizer.update``) then
  puts the parameter, bit for bit.

  Args:
    compensation: ``"auto"`` (Kahan on every leaf with fewer significand bits
      than float32: bfloat16, float16; float32, float64 and complex leaves
      pass through bitwise unchanged, at no cost), ``"kahan"`` (Kahan on
      every real floating leaf, float32 and float64 included), ``"stochastic"``
      (stochastic rounding on the low-precision leaves) or None (nothing).
    seed: the integer that seeds stochastic rounding's key.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``, with
    state :class:`CompensationState`.

  Raises:
    ValueError: an unknown ``compensation``.
    TypeError: a ``seed`` that is not an integer.

  Example:
    >>> import jax.numpy as jnp, optax, optax_decoupled as odx
    >>> tx = optax.chain(optax.sgd(1e-3), odx.compensate_rounding())
    >>> params = {"w": jnp.ones(2, jnp.bfloat16)}
    >>> state = tx.init(params)
    >>> for _ in range(100):  # 1e-3 per step, below bfloat16's half ulp at 1
    ...   updates, state = tx.update({"w": jnp.ones(2, jnp.bfloat16)}, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params["w"]  # 1 - 0.1, to bfloat16's spacing (without: 1.0)
    Array([0.898438, 0.898438], dtype=bfloat16)

  References:
    Kahan, `Further remarks on reducing truncation errors
    <https://doi.org/10.1145/363707.363723>`_, CACM 1965. Zamirai et al.,
    `Revisiting BFloat16 Training <https://arxiv.org/abs/2010.06192>`_, 2020.
  """
  check_compensation(compensation, seed)

  def init_fn(params):
    def buffer(p):
      p = _as_array(p)
      if method_for(p.dtype, compensation) == "kahan":
        return zeros_like_param(p)
      return optax.MaskedNode()

    return CompensationState(
      count=jnp.zeros([], jnp.int32),
      seed=jnp.asarray(seed, jnp.int32),
      residual=jax.tree.map(buffer, params),
    )

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
        "compensate_rounding needs the parameters: call update(updates, "
        "state, params), got params=None"
      )
    treedef = jax.tree.structure(params)
    step_key = jax.random.fold_in(jax.random.key(state.seed), state.count)
    leaves = []
    for i, (u, p, c) in enumerate(
      zip(
        treedef.flatten_up_to(updates),
        treedef.flatten_up_to(params),
        treedef.flatten_up_to(state.residual),
        strict=True,
      )
    ):
      leaves.append(_leaf(u, p, c, compensation, state.count, step_key, i))
    new_updates = treedef.unflatten([u for u, _ in leaves])
    residual = treedef.unflatten([c for _, c in leaves])
    return new_updates, CompensationState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      seed=state.seed,
      residual=residual,
    )

  return optax.GradientTransformation(init_fn, update_fn)


def _leaf(u, p, c, compensation, count, key, index):
  """One leaf's compensated update and residual buffer."""
  if u is None:
    return None, c
  p = jnp.asarray(p)  # a NumPy float64 leaf as JAX stores it (float32 without x64)
  method = method_for(p.dtype, compensation)
  if method is None:
    return u, c
  u = jnp.asarray(u)
  if method == "kahan":
    return _kahan(u, p, c, count)
  return _stochastic(u, p, jax.random.fold_in(key, index)), c


def carry_in_float32() -> optax.GradientTransformation:
  """Passes low-precision updates on as float32 (for :func:`compensate_rounding`).

  Put after the preconditioner of a ready optimizer that ends in
  :func:`compensate_rounding`: the learning rate and the decay term are then
  applied in float32 and the update is rounded once, at the end. Only leaves
  whose parameter is low precision are widened (a bfloat16 gradient of a
  float32 parameter stays as it is, as without compensation).
  """

  def widen(u, p):
    if u is None:
      return None
    u = _as_array(u)
    low = is_low_precision(u.dtype) and is_low_precision(_as_array(p).dtype)
    return u.astype(jnp.float32) if low else u

  def update_fn(updates, state, params=None):
    if params is None:  # widen by the update's dtype alone
      params = updates
    return jax.tree.map(widen, updates, params, is_leaf=lambda x: x is None), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def decay_per_step(weight_decay: Any, schedule_multiplier: Any) -> float | None:
  """``η_max λ`` when both are known when the optimizer is built, else None.

  ``η_max`` is the peak a schedule carries (:func:`with_peak`), otherwise its
  value at step 0; a schedule ``λ_t`` is taken at step 0 too.
  """

  def at_start(value):
    if not callable(value):
      return _checks.concrete_value(value)
    try:
      with jax.ensure_compile_time_eval():
        return _checks.concrete_value(value(0))
    except Exception:  # a schedule that cannot run outside its program
      return None

  lam = at_start(weight_decay)
  if schedule_multiplier is None:
    eta = 1.0
  else:
    peak = getattr(schedule_multiplier, PEAK_ATTRIBUTE, None)
    eta = (
      _checks.concrete_value(peak)
      if peak is not None
      else at_start(schedule_multiplier)
    )
  return None if lam is None or eta is None else lam * eta


def warn_if_decay_rounds_away(
  params: Any, per_step: float | None, mask: Mask | None, name: str
) -> None:
  """Warns when ``θ(1 - η_max λ)`` rounds back to ``θ`` on a decayed leaf.

  Called at ``init`` by the ready optimizers built with ``compensation=None``;
  ``per_step`` is ``η_max λ`` (None: unknown, no warning). The threshold is
  half the dtype's relative spacing ``ε/2``: below it the product rounds back
  to ``θ`` for some magnitudes (more as it falls), below ``ε/4`` for all.
  """
  if per_step is None or per_step <= 0:
    return
  lost = []
  for path, leaf in _decayed_leaves(params, resolve_mask(mask, params)):
    dtype = _as_array(leaf).dtype
    if is_low_precision(dtype) and per_step < float(jnp.finfo(dtype).eps) / 2:
      lost.append((path, jnp.dtype(dtype).name))
  if not lost:
    return
  path, dtype = lost[0]
  half = float(jnp.finfo(dtype).eps) / 2
  more = f" and {len(lost) - 1} more leaves" if len(lost) > 1 else ""
  warnings.warn(
    f"{name}(compensation=None): the decay per step η_max·λ = {per_step:.3g} "
    f"is below half the relative spacing of {dtype} ({half:.3g}), so "
    f"θ(1 - η_t λ) rounds back to θ for many values of θ (all, below "
    f"{half / 2:.3g}) and the decay of {path or '(root)'} ({dtype}){more} is "
    "partly or wholly lost. Pass compensation='auto' (Kahan, the default) "
    "or 'stochastic', or keep these parameters in float32",
    UserWarning,
    stacklevel=4,
  )


def _decayed_leaves(params: Any, bits: Any) -> Iterable[tuple[str, Any]]:
  """``(path, leaf)`` of every leaf some entry of which the mask decays."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  if bits is None:
    return [(path_to_str(p), x) for p, x in leaves]
  flags = jax.tree.leaves(broadcast_mask(bits, params))
  return [
    (path_to_str(p), x)
    for (p, x), flag in zip(leaves, flags, strict=True)
    if not (isinstance(flag, bool | np.bool_) and not flag)
  ]
