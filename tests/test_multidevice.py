"""Many devices on one host (the 8 CPU devices of conftest.py).

Data parallelism (``jax.pmap`` and ``jax.shard_map`` with ``lax.pmean``) and
FSDP-style sharded parameters (``jax.jit`` with ``NamedSharding``, on an Auto
and on an Explicit mesh) must give the numbers of one device on the full
batch, and the optimizer state must live where the parameters live.

Tolerance: float32 runs whose gradients are reduced in another order agree to
``rtol=1e-5, atol=1e-6`` after 6 steps (Adam's normalization and SGD's
momentum do not amplify the last-bit differences at these sizes).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_decoupled as odx

N_DEV = 8
STEPS = 6
RTOL, ATOL = 1e-5, 1e-6
SEED = 0

OPTIMIZERS = {
  # first_cycle_steps=3: the 6 steps cross a warm restart
  "adamwr": lambda: odx.adamwr(
    1e-2, first_cycle_steps=3, weight_decay=1e-2, mask=odx.mask_by_ndim()
  ),
  # SGD is not scale invariant: a sum instead of a mean of gradients shows up
  "sgdwr": lambda: odx.sgdwr(
    0.1, first_cycle_steps=3, weight_decay=1e-2, mask=odx.mask_by_ndim()
  ),
  "adamwr_cautious_corrected": lambda: odx.adamwr(
    1e-2,
    first_cycle_steps=3,
    max_value=2.0,
    weight_decay=1e-1,
    mask=odx.mask_by_ndim(),
    cautious=True,
    corrected=True,
  ),
}


def _problem(seed):
  rng = np.random.default_rng(seed)
  params = {
    "w": rng.normal(size=(16, 8)).astype(np.float32),
    "b": rng.normal(size=(8,)).astype(np.float32),
  }
  x = rng.normal(size=(64, 16)).astype(np.float32)
  y = rng.normal(size=(64, 8)).astype(np.float32)
  return params, x, y


def _loss(params, x, y):
  pred = jnp.tanh(x @ params["w"] + params["b"][None, :])
  return jnp.mean((pred - y) ** 2)


@functools.cache
def _one_device_run(name, seed):
  """The baseline: one device, the full batch, plain ``jax.jit``."""
  tx = OPTIMIZERS[name]()
  params, x, y = _problem(seed)
  dev = jax.devices()[0]
  params, x, y = jax.device_put((params, x, y), dev)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(STEPS):
    params, state = step(params, state)
  return jax.tree.map(np.asarray, params)


def _assert_close(got, want):
  for k in want:
    np.testing.assert_allclose(
      np.asarray(got[k]), want[k], rtol=RTOL, atol=ATOL, err_msg=k
    )


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pmap_pmean_matches_one_device_full_batch(name):
  """pmap over 8 devices, each on 1/8 of the batch, grads averaged with
  lax.pmean: the same params as one device on the whole batch."""
  tx = OPTIMIZERS[name]()
  params, x, y = _problem(SEED)
  want = _one_device_run(name, SEED)

  def step(params, state, x, y):
    grads = lax.pmean(jax.grad(_loss)(params, x, y), "batch")
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  pstep = jax.pmap(step, axis_name="batch")
  replicated = jax.tree.map(lambda a: np.stack([a] * N_DEV), params)
  state = jax.pmap(tx.init)(replicated)
  xs, ys = x.reshape(N_DEV, -1, 16), y.reshape(N_DEV, -1, 8)
  p = replicated
  for _ in range(STEPS):
    p, state = pstep(p, state, xs, ys)
  for k in p:  # every device holds the same copy
    np.testing.assert_array_equal(p[k][0], p[k][N_DEV - 1], err_msg=k)
  _assert_close(jax.tree.map(lambda a: a[0], p), want)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_shard_map_pmean_matches_one_device_full_batch(name):
  """jax.shard_map data parallelism: replicated params, batch split over 8
  devices, the loss averaged with lax.pmean before jax.grad: the same params
  as one device on the whole batch."""
  tx = OPTIMIZERS[name]()
  params, x, y = _problem(SEED)
  want = _one_device_run(name, SEED)
  mesh = jax.make_mesh((N_DEV,), ("batch",))

  def local_step(params, state, x, y):
    # Under shard_map's default check_vma=True, jax.grad of a per-device loss
    # with respect to replicated params is already *summed* over devices;
    # averaging the loss first gives the mean gradient.
    grads = jax.grad(lambda p: lax.pmean(_loss(p, x, y), "batch"))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(
    jax.shard_map(
      local_step,
      mesh=mesh,
      in_specs=(P(), P(), P("batch"), P("batch")),
      out_specs=(P(), P()),
    )
  )
  p = jax.device_put(params, NamedSharding(mesh, P()))
  state = tx.init(p)
  xs, ys = jax.device_put((x, y), NamedSharding(mesh, P("batch")))
  for _ in range(STEPS):
    p, state = step(p, state, xs, ys)
  _assert_close(p, want)


def _mesh(kind):
  if kind == "auto":
    return jax.make_mesh((N_DEV,), ("fsdp",), axis_types=(AxisType.Auto,))
  mesh = jax.make_mesh((N_DEV,), ("fsdp",))  # jax's default: Explicit axes
  assert mesh.axis_types == (AxisType.Explicit,), mesh.axis_types
  return mesh


def _fsdp_params(mesh, params):
  """Every parameter split over its first axis across the 8 devices."""
  return {
    "w": jax.device_put(params["w"], NamedSharding(mesh, P("fsdp", None))),
    "b": jax.device_put(params["b"], NamedSharding(mesh, P("fsdp"))),
  }


def _param_like(state, params):
  """The subtrees of ``state`` shaped like ``params`` (Adam's mu and nu,
  SGD's momentum), found by tree structure."""
  structure = jax.tree.structure(params)
  found = jax.tree.leaves(state, is_leaf=lambda t: jax.tree.structure(t) == structure)
  return [t for t in found if jax.tree.structure(t) == structure]


def _sharding_mismatches(state, params):
  """``(key, param sharding, state sharding)`` where a state buffer is not
  placed like its parameter."""
  out = []
  for tree in _param_like(state, params):
    for k in params:
      s, p = tree[k].sharding, params[k].sharding
      if not s.is_equivalent_to(p, params[k].ndim):
        out.append((k, p, s))
  return out


STATE_CASES = {
  "odx.adamw": (lambda: odx.adamw(1e-3), 2),
  "odx.adamwr": (lambda: odx.adamwr(1e-3, first_cycle_steps=10), 2),
  "odx.sgdw": (lambda: odx.sgdw(1e-2), 1),
  "odx.adam_l2": (lambda: odx.adam_l2(1e-3), 2),
}


@pytest.mark.parametrize("kind", ["auto", "explicit"])
@pytest.mark.parametrize("name", sorted(STATE_CASES))
def test_state_has_the_parameters_sharding(kind, name):
  """Every per-parameter state buffer has its parameter's sharding, after
  tx.init(params) and after jax.jit(tx.init)(params)."""
  make_tx, n_buffers = STATE_CASES[name]
  tx = make_tx()
  mesh = _mesh(kind)
  with jax.set_mesh(mesh):
    params = _fsdp_params(mesh, _problem(SEED)[0])
    for how, init in [("eager", tx.init), ("jit", jax.jit(tx.init))]:
      state = init(params)
      assert len(_param_like(state, params)) == n_buffers, (how, state)
      assert _sharding_mismatches(state, params) == [], how


def test_optax_adamw_jit_init_loses_sharding_on_auto_mesh():
  """The control that makes the test above meaningful: optax.adamw's moments,
  built by jax.jit(tx.init) on an Auto mesh, are replicated, not sharded."""
  mesh = _mesh("auto")
  with jax.set_mesh(mesh):
    params = _fsdp_params(mesh, _problem(SEED)[0])
    state = jax.jit(optax.adamw(1e-3).init)(params)
  bad = _sharding_mismatches(state, params)
  assert {k for k, _, _ in bad} == {"w", "b"}, bad
  assert all(s.is_fully_replicated for _, _, s in bad), bad


@pytest.mark.parametrize("kind", ["auto", "explicit"])
def test_fsdp_jit_training_matches_unsharded(kind):
  """jax.jit on params sharded over 8 devices (AdamWR, through a restart):
  the same params as one unsharded device, and params and moments are still
  sharded after training."""
  tx = OPTIMIZERS["adamwr"]()
  params, x, y = _problem(SEED)
  want = _one_device_run("adamwr", SEED)
  mesh = _mesh(kind)
  with jax.set_mesh(mesh):
    p = _fsdp_params(mesh, params)
    xs, ys = jax.device_put((x, y), NamedSharding(mesh, P()))

    @jax.jit
    def step(params, state):
      grads = jax.grad(_loss)(params, xs, ys)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    state = jax.jit(tx.init)(p)
    for _ in range(STEPS):
      p, state = step(p, state)
    assert p["w"].sharding.spec[0] == "fsdp", p["w"].sharding
    assert _sharding_mismatches(state, p) == []
  _assert_close(p, want)


@pytest.mark.parametrize("name", sorted(STATE_CASES))
def test_init_from_numpy_float64_params_is_silent_like_optax(name):
  """Params given as NumPy float64 arrays (x64 off): tx.init builds float32
  state without a dtype warning, as optax's own init does."""
  params = {"w": np.zeros((2, 3)), "b": np.zeros(3)}  # float64
  optax.adam(1e-3).init(params)  # the control: optax does not warn
  state = STATE_CASES[name][0]().init(params)  # warnings are errors here
  for tree in _param_like(state, params):
    assert {a.dtype for a in jax.tree.leaves(tree)} == {jnp.dtype("float32")}, tree
