"""Optimizer state through Orbax checkpoints: resume, reshard, refuse mismatches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_decoupled as odx

ocp = pytest.importorskip("orbax.checkpoint")

TOTAL, STOP_AT = 10, 6  # cycles of 4 then 8 steps: step 6 is mid-cycle


def _data(seed=0):
  rng = np.random.default_rng(seed)
  params = {
    "w1": rng.normal(size=(8, 16)).astype(np.float32),
    "b1": np.zeros(16, np.float32),
    "w2": rng.normal(size=(16, 4)).astype(np.float32),
  }
  xs = rng.normal(size=(TOTAL, 32, 8)).astype(np.float32)
  ys = rng.normal(size=(TOTAL, 32, 4)).astype(np.float32)
  return params, xs, ys


def _loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
  return jnp.mean((h @ params["w2"] - y) ** 2)


def _adamwr():
  return odx.adamwr(
    1e-2, first_cycle_steps=4, cycle_mult=2, weight_decay=1e-2, mask=odx.mask_by_ndim()
  )


def _make_step(tx):
  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _train(step, params, state, xs, ys, start, stop):
  for t in range(start, stop):  # the batch depends on the step: resumable
    params, state = step(params, state, xs[t], ys[t])
  return params, state


def _manager(directory):
  """A CheckpointManager that can read a step's metadata before restoring."""
  registry = ocp.handlers.create_default_handler_registry(
    default=ocp.StandardCheckpointHandler()
  )
  return ocp.CheckpointManager(directory, handler_registry=registry)


def test_resume_mid_restart_cycle_is_bitwise_identical(tmp_path):
  """AdamWR (cycles of 4, 8 steps) stopped at step 6, saved with a
  CheckpointManager, restored into a freshly built optimizer and continued to
  step 10: params and state bit for bit those of the uninterrupted run."""
  params0, xs, ys = _data()
  tx = _adamwr()
  step_fn = _make_step(tx)
  want_params, want_state = _train(step_fn, params0, tx.init(params0), xs, ys, 0, TOTAL)

  # First run: stop mid-cycle and save.
  p, s = _train(step_fn, params0, tx.init(params0), xs, ys, 0, STOP_AT)
  assert int(s[0].count) == STOP_AT
  with _manager(tmp_path / "ckpt") as mngr:
    mngr.save(STOP_AT, args=ocp.args.StandardSave({"params": p, "opt_state": s}))
    mngr.wait_until_finished()

  # Second run, as a new process would: rebuild, restore the latest step.
  tx = _adamwr()
  fresh = jax.tree.map(np.zeros_like, params0)
  target = jax.tree.map(
    ocp.utils.to_shape_dtype_struct, {"params": fresh, "opt_state": tx.init(fresh)}
  )
  with _manager(tmp_path / "ckpt") as mngr:
    step = mngr.latest_step()
    odx.check_restore_target(mngr.metadata(step).item_metadata, target)
    restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
  assert step == STOP_AT
  assert type(restored["opt_state"][0]) is odx.ScaleByAdamState
  p, s = _train(
    _make_step(tx), restored["params"], restored["opt_state"], xs, ys, step, TOTAL
  )

  for k in want_params:
    np.testing.assert_array_equal(p[k], want_params[k], err_msg=k)
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(want_state), strict=True):
    np.testing.assert_array_equal(a, b)
  # The restart happened and the run moved: not a trivially equal result.
  assert not np.array_equal(want_params["w1"], params0["w1"])


def test_checkpoint_saved_on_8_devices_restores_on_4(tmp_path):
  """Params and AdamW moments sharded over 8 devices, saved, restored with
  targets sharded over a 4-device mesh: equal values, the new shardings."""
  params0, xs, ys = _data(seed=1)
  auto = (AxisType.Auto,)
  mesh8 = jax.make_mesh((8,), ("fsdp",), axis_types=auto)
  tx = odx.adamw(1e-2, weight_decay=1e-2)

  def shard(tree, mesh):
    return jax.tree.map(
      lambda a: NamedSharding(mesh, P("fsdp") if a.ndim else P()), tree
    )

  with jax.set_mesh(mesh8):
    params = jax.device_put(params0, shard(params0, mesh8))
    p, s = _train(_make_step(tx), params, tx.init(params), xs, ys, 0, 3)
  assert p["w1"].sharding.num_devices == 8
  assert s[0].mu["w1"].sharding.is_equivalent_to(p["w1"].sharding, 2)
  saved = {"params": p, "opt_state": s}
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(tmp_path / "ckpt", saved)
  ckptr.wait_until_finished()

  mesh4 = jax.make_mesh((4,), ("fsdp",), axis_types=auto, devices=jax.devices()[:4])
  target = jax.tree.map(
    lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
    saved,
    shard(saved, mesh4),
  )
  odx.check_restore_target(ckptr.metadata(tmp_path / "ckpt").item_metadata, target)
  restored = ckptr.restore(tmp_path / "ckpt", target)

  for got, want, t in zip(
    jax.tree.leaves(restored),
    jax.tree.leaves(saved),
    jax.tree.leaves(target),
    strict=True,
  ):
    assert got.sharding == t.sharding, (got.sharding, t.sharding)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert restored["opt_state"][0].mu["w1"].sharding.num_devices == 4


PARAMS = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}

MISMATCHES = {
  # name: (target opt_state builder, path the error must name, what orbax does)
  "sgdw state": (
    lambda: odx.sgdw(1e-2).init(PARAMS),
    "opt_state/1/trace/b",
    "refuses",
  ),
  "other param names": (
    lambda: odx.adamw(1e-3).init({"w": PARAMS["w"], "c": PARAMS["b"]}),
    "opt_state/0/mu/c",
    "refuses",
  ),
  "other shapes": (
    lambda: odx.adamw(1e-3).init(
      {"w": np.ones((4, 5), np.float32), "b": np.zeros(5, np.float32)}
    ),
    "opt_state/0/mu/b",
    # orbax 0.12 refuses too, but only midway through reading, and the reads
    # it abandons are reported later as unraisable exceptions: not exercised.
    None,
  ),
  "bf16 moments": (
    lambda: odx.adamw(1e-3, mu_dtype=jnp.bfloat16).init(PARAMS),
    "opt_state/0/mu/b",
    "casts",  # float32 moments restored as bfloat16 without a word
  ),
}


@pytest.fixture(scope="module")
def adamw_checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("adamw") / "ckpt"
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, {"params": PARAMS, "opt_state": odx.adamw(1e-3).init(PARAMS)})
  ckptr.wait_until_finished()
  return path


@pytest.mark.parametrize("name", sorted(MISMATCHES))
def test_restore_into_another_optimizer_is_refused(adamw_checkpoint, name):
  """An adamw checkpoint checked against another optimizer's state: a
  ValueError naming the first differing path; orbax alone refuses the
  structural cases but casts other dtypes without a word."""
  make_state, path, orbax = MISMATCHES[name]
  target = {"params": PARAMS, "opt_state": make_state()}
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(adamw_checkpoint).item_metadata
  with pytest.raises(ValueError, match=f"restore target: {path} "):
    odx.check_restore_target(meta, target)
  if orbax == "refuses":
    with pytest.raises(ValueError, match="tree structures do not match"):
      ckptr.restore(adamw_checkpoint, target)
  elif orbax == "casts":
    restored = ckptr.restore(adamw_checkpoint, target)
    assert restored["opt_state"][0].mu["b"].dtype == jnp.bfloat16


def test_other_mask_same_state_is_accepted(adamw_checkpoint):
  """The mask is configuration, not state: adamw with another mask has the
  same state tree, so the check passes and the restore works."""
  tx = odx.adamw(1e-3, mask=odx.mask_by_path("b"))
  target = {"params": PARAMS, "opt_state": tx.init(PARAMS)}
  ckptr = ocp.StandardCheckpointer()
  odx.check_restore_target(ckptr.metadata(adamw_checkpoint).item_metadata, target)
  restored = ckptr.restore(adamw_checkpoint, target)
  assert int(restored["opt_state"][0].count) == 0
