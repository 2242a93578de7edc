"""The fast paths against the same float64 reference as the default path.

Fast paths: the one-pass Adam step (used when XLA:CPU's multi-output fusion is
on, tested in a subprocess that turns it on), :func:`odx.flatten_small_leaves`
and the low-precision moment dtypes. Tolerances are those of
``test_optimizers.py``: ``RTOL_64 = 2e-5``, ``ATOL_64 = 2e-6`` against the
NumPy float64 transcription of Algorithm 2 in ``tests/reference.py``.
No timings here: speed is measured by ``benchmarks/bench_adamw.py``.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_decoupled as odx
from optax_decoupled import _fused

RTOL_64, ATOL_64 = 2e-5, 2e-6
STEPS = 30
ALPHA, LAM = 0.05, 0.02

_rng = np.random.default_rng(7)
#: Small leaves (flattened with max_leaf_size=16) and one bigger leaf.
PARAMS = {
  "w": _rng.normal(size=(3, 4)),
  "b": _rng.normal(size=(4,)),
  "s": np.asarray(_rng.normal()),
  "big": _rng.normal(size=(40,)),
}
GRADS = [
  {
    k: _rng.normal(size=np.shape(v)) * (0.3 + i % 3)
    for i, (k, v) in enumerate(PARAMS.items())
  }
  for _ in range(STEPS)
]
MASK = {"w": True, "b": False, "s": False, "big": True}
ETA = _rng.uniform(0.2, 1.2, size=STEPS)
MAX_LEAF = 16


def f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def run(tx, params=PARAMS, grads=GRADS):
  """Params after every step, in one jitted scan."""

  def step(carry, g):
    p, state = carry
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    return (p, state), p

  stacked = f32({k: np.stack([g[k] for g in grads]) for k in grads[0]})
  p = f32(params)
  return jax.jit(lambda p, xs: jax.lax.scan(step, (p, tx.init(p)), xs)[1])(p, stacked)


def assert_close(actual, history, rtol=RTOL_64, atol=ATOL_64):
  for k in history[0]:
    a = np.asarray(actual[k], np.float64)
    e = np.stack([h[k] for h in history])
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=k)


def _eta():
  table = jnp.asarray(ETA, jnp.float32)
  return (lambda c: table[c]), (lambda s: ETA[s])


def _cases():
  """(name, optimizer, reference kwargs): every option the fast paths touch."""
  eta, eta_np = _eta()
  lr = optax.exponential_decay(ALPHA, transition_steps=10, decay_rate=0.5)
  lr_np = lambda s: ALPHA * 0.5 ** (s / 10)
  return [
    ("adamw", odx.adamw(ALPHA, weight_decay=LAM), {}),
    (
      "schedules",
      odx.adamw(lr, weight_decay=LAM, schedule_multiplier=eta),
      {"alpha": lr_np, "eta": eta_np},
    ),
    ("nesterov", odx.adamw(ALPHA, weight_decay=LAM, nesterov=True), {"nesterov": True}),
    ("mask", odx.adamw(ALPHA, weight_decay=LAM, mask=MASK), {"mask": MASK}),
  ]


def _reference(**kw):
  kw = {"alpha": ALPHA, "lam": LAM, **kw}
  return reference.adam(PARAMS, GRADS, **kw)


def _flat(tx_kwargs_or_tx):
  return odx.flatten_small_leaves(tx_kwargs_or_tx, max_leaf_size=MAX_LEAF)


def _masked_flat(**kw):
  """The documented recipe for a mask: flatten Adam, decay per leaf after it."""
  return optax.chain(
    odx.flatten_small_leaves(odx.scale_by_adam(**kw), max_leaf_size=MAX_LEAF),
    optax.scale(-ALPHA),
    odx.add_decoupled_weight_decay(LAM, mask=MASK),
  )


def check_all_paths_match_reference() -> None:
  """Default (or one-pass) adamw, flattened or not, against the reference."""
  for name, tx, ref_kw in _cases():
    expected = _reference(**ref_kw)
    assert_close(run(tx), expected)
    if name != "mask":  # a mask inside tx would see the flat buffer
      assert_close(run(_flat(tx)), expected)
  assert_close(run(_masked_flat()), _reference(mask=MASK))


def big_loop_fusions(tx, n=1 << 16) -> int:
  """Loop fusions over the parameter's shape in a donated AdamW step.

  -1 if the step also copies a parameter-sized buffer (a temporary).
  """

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  p = jnp.ones(n, jnp.float32)
  text = (
    jax.jit(step, donate_argnums=(0, 1)).lower(p, tx.init(p), p).compile().as_text()
  )
  ops = [  # (result type, opcode) of each instruction
    match.groups()
    for match in re.finditer(r"= (\(.*?\)|\S+) ([\w-]+)\(", text[text.index("ENTRY") :])
  ]
  big = [op for kind, op in ops if f"[{n}]" in kind]
  return -1 if "copy" in big else big.count("fusion")


# --- The default path.


def test_default_paths_match_reference():
  check_all_paths_match_reference()


@pytest.mark.skipif(
  "multi_output_fusion" in os.environ.get("XLA_FLAGS", ""),
  reason="XLA_FLAGS turns on the one-pass path",
)
def test_default_step_is_three_loops():
  """Without multi-output fusion: three loops (m, v, then θ), no copies."""
  assert not _fused.multi_output_fusion()
  for kw in ({}, {"mu_dtype": jnp.bfloat16}, {"nu_dtype": jnp.bfloat16}):
    assert big_loop_fusions(odx.adamw(ALPHA, weight_decay=LAM, **kw)) == 3, kw


# --- The one-pass path, in a process with multi-output fusion on.


def one_pass_main() -> None:
  """Body of the subprocess: reference checks and the fusion count."""
  jax.config.update("jax_numpy_dtype_promotion", "strict")
  assert _fused.multi_output_fusion()
  small = _fused.ONE_PASS_MIN_SIZE // 2  # below the size that gets one pass
  loops = {"adamw_small": big_loop_fusions(odx.adamw(ALPHA, weight_decay=LAM), small)}
  _fused.ONE_PASS_MIN_SIZE = 1  # the small test leaves take the one-pass path
  check_all_paths_match_reference()
  loops |= {
    "adamw": big_loop_fusions(odx.adamw(ALPHA, weight_decay=LAM)),
    "adamw_mu_bf16": big_loop_fusions(  # bf16 output: no sibling of f32 ones
      odx.adamw(ALPHA, weight_decay=LAM, mu_dtype=jnp.bfloat16)
    ),
    "adamw_nesterov_mask": big_loop_fusions(
      odx.adamw(ALPHA, weight_decay=LAM, nesterov=True, mask=lambda p: p > 0)
    ),
  }
  with jax.numpy_dtype_promotion("standard"):  # optax needs it
    loops["optax"] = big_loop_fusions(optax.adamw(ALPHA, weight_decay=LAM))
  # The default formulation compiled in the same process: the same arithmetic,
  # up to float32 rounding (multiply-adds may be contracted differently).
  ours = run(odx.adamw(ALPHA, weight_decay=LAM))
  _fused.multi_output_fusion = lambda: False
  default = run(odx.adamw(ALPHA, weight_decay=LAM))
  for k in ours:
    np.testing.assert_allclose(ours[k], default[k], rtol=1e-6, atol=1e-7, err_msg=k)
  print(json.dumps(loops))


def test_one_pass_path_matches_reference_in_one_loop():
  """With multi-output fusion on: the reference, the default's values, one loop."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    f"{_fused.MULTI_OUTPUT_FUSION_FLAG} --xla_force_host_platform_device_count=8"
  )
  env["JAX_PLATFORMS"] = "cpu"
  here = pathlib.Path(__file__).parent
  env["PYTHONPATH"] = os.pathsep.join(
    [str(here), str(here.parent), env.get("PYTHONPATH", "")]
  )
  code = "import test_fast_paths as t; t.one_pass_main()"
  proc = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  loops = json.loads(proc.stdout.strip().splitlines()[-1])
  assert loops == {
    "adamw_small": 2,  # small leaves keep optax's form: m and v merged
    "adamw": 1,
    "adamw_mu_bf16": 2,
    "adamw_nesterov_mask": 1,
    "optax": 2,
  }, loops


# --- flatten_small_leaves.


def test_flatten_layout_groups_by_dtype_and_size():
  params = {
    "a": jnp.ones(3),
    "h": jnp.ones((2, 2), jnp.bfloat16),
    "w": jnp.ones(100),
    "z": jnp.ones(5),
  }
  state = odx.flatten_small_leaves(odx.adamw(0.1), max_leaf_size=8).init(params)
  layout = state.layout
  assert layout.dtypes == ("float32", "bfloat16")
  assert layout.groups == ((0, 3), (1,))
  assert layout.rest == (2,)
  flat_mu, rest_mu = state.inner[0].mu
  assert [x.shape for x in flat_mu] == [(8,), (4,)]
  assert [x.dtype for x in flat_mu] == [jnp.float32, jnp.bfloat16]
  assert rest_mu[0].shape == (100,)
  assert jax.jit(odx.flatten_small_leaves(odx.adamw(0.1), 8).init)(params).layout == (
    layout
  )


def test_flatten_equals_unflattened_with_mixed_dtypes():
  """bf16 and f32 small leaves: the same updates as without the wrapper."""
  params = {
    "a": jnp.linspace(-1, 1, 6),
    "h": jnp.linspace(-2, 2, 4).astype(jnp.bfloat16),
    "w": jnp.linspace(0, 1, 50),
  }
  grads = jax.tree.map(lambda x: jnp.cos(3 * x), params)
  tx = odx.adamw(0.1, weight_decay=0.01, nesterov=True)
  flat = odx.flatten_small_leaves(tx, max_leaf_size=10)
  s1, s2 = tx.init(params), flat.init(params)
  for _ in range(3):
    u1, s1 = tx.update(grads, s1, params)
    u2, s2 = jax.jit(flat.update)(grads, s2, params)
    for k in params:
      assert u2[k].dtype == u1[k].dtype and u2[k].shape == u1[k].shape
      np.testing.assert_allclose(
        np.asarray(u2[k], np.float64), np.asarray(u1[k], np.float64), rtol=1e-6
      )


def test_flatten_with_inject_hyperparams_and_vmap():
  """Hyperparameters as traced scalars, vmapped: each lane is the reference."""
  alphas = jnp.asarray([0.01, 0.05], jnp.float32)

  def lane(alpha):
    inner = optax.inject_hyperparams(odx.adamw)(learning_rate=alpha, weight_decay=LAM)
    return run(_flat(inner))

  out = jax.vmap(lane)(alphas)
  for i, alpha in enumerate([0.01, 0.05]):
    assert_close({k: v[i] for k, v in out.items()}, _reference(alpha=alpha))


def test_flatten_leaves_sharded_and_big_leaves_alone():
  """Leaves on several devices keep their own, still sharded, state."""
  if jax.device_count() < 2:
    pytest.skip("needs several devices (tests/conftest.py asks for 8)")
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("d",))
  params = {
    "big": jnp.arange(64.0),
    "replicated": jax.device_put(jnp.arange(4.0), NamedSharding(mesh, P())),
    "sharded": jax.device_put(jnp.arange(2.0 * n), NamedSharding(mesh, P("d"))),
    "small": jnp.arange(4.0),
  }
  tx = odx.flatten_small_leaves(odx.adamw(0.1, weight_decay=0.01), max_leaf_size=32)
  for init in (tx.init, jax.jit(tx.init)):
    state = init(params)
    assert state.layout.groups == ((3,),) and state.layout.rest == (0, 1, 2)
    _, rest_mu = state.inner[0].mu
    assert rest_mu[2].sharding.spec == P("d"), rest_mu[2].sharding
    assert len(rest_mu[1].sharding.device_set) == n
  grads = jax.tree.map(lambda x: jnp.sin(x), params)

  @jax.jit
  def step(p, s):
    u, s = tx.update(grads, s, p)
    return optax.apply_updates(p, u), s

  new, state = step(params, tx.init(params))
  assert new["sharded"].sharding.spec == P("d")
  assert state.inner[0].mu[1][2].sharding.spec == P("d")
  plain = odx.adamw(0.1, weight_decay=0.01)
  u, _ = plain.update(grads, plain.init(params), params)
  for k in params:
    np.testing.assert_allclose(new[k], params[k] + u[k], rtol=1e-6, err_msg=k)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "8"])
def test_flatten_rejects_bad_max_leaf_size(bad):
  with pytest.raises(ValueError, match="max_leaf_size"):
    odx.flatten_small_leaves(odx.adamw(0.1), max_leaf_size=bad)


def test_flatten_rejects_another_tree():
  tx = odx.flatten_small_leaves(odx.adamw(0.1), max_leaf_size=8)
  state = tx.init({"a": jnp.ones(2), "b": jnp.ones(2)})
  with pytest.raises(ValueError, match="updates has 1 leaves"):
    tx.update({"a": jnp.ones(2)}, state, {"a": jnp.ones(2)})


# --- Low-precision moments: what they save and what they cost.


def test_moment_dtypes_memory_and_accuracy_cost():
  """bf16 moments: 3/4 or 1/2 of the state; error vs float64, in steps of α.

  Measured on 200 steps with gradients shrinking 100x (so ``v`` must decay):
  max |θ - θ_ref| is 5e-7 (f32), 4.5e-4 (mu bf16), 8.9e-4 (nu bf16),
  8.8e-4 (both), i.e. up to 0.09 of one step ``α = 0.01``.
  """
  rng = np.random.default_rng(0)
  steps, alpha = 200, 0.01
  params = {"w": rng.normal(size=(64,)), "b": rng.normal(size=(16,))}
  scale = np.geomspace(1.0, 0.01, steps)
  grads = [
    {k: scale[t] * (rng.normal(size=v.shape) + 0.1) for k, v in params.items()}
    for t in range(steps)
  ]
  history = reference.adam(params, grads, alpha, lam=LAM)
  f32_bytes = None
  bounds = {  # dtype options -> (max error, fraction of the f32 state bytes)
    (): (5e-6, 1.0),
    (("mu_dtype", jnp.bfloat16),): (2e-3, 0.75),
    (("nu_dtype", jnp.bfloat16),): (3e-3, 0.75),
    (("mu_dtype", jnp.bfloat16), ("nu_dtype", jnp.bfloat16)): (3e-3, 0.5),
  }
  for options, (bound, fraction) in bounds.items():
    tx = odx.adamw(alpha, weight_decay=LAM, **dict(options))
    leaves = jax.tree.leaves(tx.init(f32(params)))
    state_bytes = sum(x.size * x.dtype.itemsize for x in leaves)
    f32_bytes = f32_bytes or state_bytes
    # The scalars: the chain's int32 step counts and the rounding seed.
    counts = sum(x.dtype.itemsize for x in leaves if x.ndim == 0)
    assert state_bytes - counts == pytest.approx(fraction * (f32_bytes - counts))
    actual = run(tx, params, grads)
    err = max(
      np.abs(
        np.asarray(actual[k], np.float64) - np.stack([h[k] for h in history])
      ).max()
      for k in params
    )
    assert err < bound, (options, err)


def test_bf16_second_moment_does_not_decay():
  """The documented caveat: with b2 = 0.999 a bf16 ``v`` ignores g = 0 steps."""
  g1, g0 = {"w": jnp.ones(4)}, {"w": jnp.zeros(4)}
  nus = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    tx = odx.scale_by_adam(nu_dtype=dtype)
    _, state = tx.update(g1, tx.init(g1))
    update = jax.jit(tx.update)
    for _ in range(100):
      _, state = update(g0, state)
    nus[dtype] = float(state.nu["w"][0])
  assert nus[jnp.float32] == pytest.approx(1e-3 * 0.999**100, rel=1e-4)
  assert nus[jnp.bfloat16] == pytest.approx(1e-3, rel=4e-3)


def test_flatten_state_works_with_optax_tree_tools():
  """optax.tree.map_params maps over the state's copies of the parameters (the
  flat buffers and big leaves), leaving counts alone; get and set find the
  inner fields. The layout rides in the packed trees, so a state built from a
  leafless placeholder has the same structure (map_params failed before)."""
  params = {"a": jnp.ones(3), "w": jnp.ones(100), "z": jnp.ones(5)}
  tx = odx.flatten_small_leaves(odx.adamw(0.1), max_leaf_size=8)
  state = tx.init(params)
  state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)[1]
  doubled = optax.tree.map_params(tx, lambda x: 2 * x, state)
  flat_mu, rest_mu = doubled.inner[0].mu
  np.testing.assert_allclose(flat_mu[0], 2 * state.inner[0].mu.flats[0])
  np.testing.assert_allclose(rest_mu[0], 2 * state.inner[0].mu.rest[0])
  assert int(doubled.inner[0].count) == int(state.inner[0].count) == 1
  assert doubled.layout == state.layout
  nu = optax.tree.get(state, "nu")  # the Adam state's field, found inside
  assert nu.layout == state.layout
  reset = optax.tree.set(state, nu=jax.tree.map(jnp.zeros_like, nu))
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(reset.inner[0].nu))
  # The mapped state still steps.
  tx.update(jax.tree.map(jnp.ones_like, params), doubled, params)
