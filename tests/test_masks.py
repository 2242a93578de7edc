"""Mask helpers: which leaves get weight decay, on plain dicts, Flax Linen and NNX.

Expected masks and tables are written out by hand; the masked optimizer is
checked against ``reference.adam`` with the same mask.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import optax_decoupled as odx


def tree():
  return {
    "dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
    "conv": {"kernel": jnp.ones((2, 2, 1, 3))},
    "norm": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
    "temperature": jnp.float32(1.0),
  }


def test_mask_by_ndim_decays_rank_at_least_min_ndim():
  """Default: kernels (rank >= 2) decayed; biases, scales, scalars not."""
  want = {
    "dense": {"kernel": True, "bias": False},
    "conv": {"kernel": True},
    "norm": {"scale": False, "bias": False},
    "temperature": False,
  }
  assert odx.mask_by_ndim()(tree()) == want
  got3 = odx.mask_by_ndim(3)(tree())
  assert got3["conv"]["kernel"] and not got3["dense"]["kernel"], got3
  assert all(jax.tree.leaves(odx.mask_by_ndim(0)(tree()))), "min_ndim=0 decays all"


def test_mask_by_path_excludes_or_selects_matches():
  """decay=False: matching leaves are excluded; decay=True: only they decay."""
  params = tree()
  got = odx.mask_by_path("bias$", "^norm/")(params)
  want = {
    "dense": {"kernel": True, "bias": False},
    "conv": {"kernel": True},
    "norm": {"scale": False, "bias": False},
    "temperature": True,
  }
  assert got == want, got
  only = odx.mask_by_path(r"kernel", decay=True)(params)
  want_only = {
    "dense": {"kernel": True, "bias": False},
    "conv": {"kernel": True},
    "norm": {"scale": False, "bias": False},
    "temperature": False,
  }
  assert only == want_only, only


def test_all_of_is_logical_and_of_callables_and_prefix_trees():
  """all_of decays a leaf only where every mask does; a bool prefix tree
  counts for the whole subtree."""
  params = tree()
  prefix = {"dense": True, "conv": False, "norm": True, "temperature": True}
  got = odx.all_of(odx.mask_by_ndim(), prefix, odx.mask_by_path("bias"))(params)
  want = {
    "dense": {"kernel": True, "bias": False},
    "conv": {"kernel": False},
    "norm": {"scale": False, "bias": False},
    "temperature": False,
  }
  assert got == want, got


def test_describe_mask_exact_table():
  """Path, shape, dtype and decay of every leaf (sorted keys), then totals."""
  params = {
    "dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
    "emb": jnp.ones((10, 2), jnp.bfloat16),
    "temperature": 1.0,
  }
  got = odx.describe_mask(params, odx.mask_by_ndim())
  want = "\n".join(
    [
      "path          shape    dtype     decay",
      "dense/bias    (4,)     float32   no",
      "dense/kernel  (3, 4)   float32   yes",
      "emb           (10, 2)  bfloat16  yes",
      "temperature   ()       float     no",
      "decayed: 2 of 4 leaves, 32 of 37 parameters",
    ]
  )
  assert got == want, f"\n{got}\n!=\n{want}"
  none = odx.describe_mask(params, None).splitlines()[-1]
  assert none == "decayed: 4 of 4 leaves, 37 of 37 parameters", none


def linen_params():
  nn = pytest.importorskip("flax.linen")

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.LayerNorm()(nn.Dense(4)(x))

  return Net().init(jax.random.key(0), jnp.ones((1, 3)))


def test_masks_on_flax_linen_params():
  """Linen's {'params': {...}} dict: paths params/Dense_0/kernel and so on."""
  params = linen_params()
  table = odx.describe_mask(params, odx.mask_by_ndim())
  lines = table.splitlines()
  assert lines[-1] == "decayed: 1 of 4 leaves, 12 of 24 parameters", table
  by_path = {line.split()[0]: line.split()[-1] for line in lines[1:-1]}
  assert by_path == {
    "params/Dense_0/bias": "no",
    "params/Dense_0/kernel": "yes",
    "params/LayerNorm_0/bias": "no",
    "params/LayerNorm_0/scale": "no",
  }, table
  path_mask = odx.mask_by_path("LayerNorm", "bias$")(params)
  assert path_mask == {
    "params": {
      "Dense_0": {"bias": False, "kernel": True},
      "LayerNorm_0": {"bias": False, "scale": False},
    }
  }, path_mask


def nnx_model():
  nnx = pytest.importorskip("flax.nnx")

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 4, rngs=rngs)
      self.norm = nnx.LayerNorm(4, rngs=rngs)

  return nnx, Net(nnx.Rngs(0))


def test_masks_on_nnx_state():
  """nnx.state(model, nnx.Param): paths end in /value; same decisions."""
  nnx, model = nnx_model()
  state = nnx.state(model, nnx.Param)
  lines = odx.describe_mask(state, odx.mask_by_ndim()).splitlines()
  by_path = {line.split()[0]: line.split()[-1] for line in lines[1:-1]}
  assert by_path == {
    "linear/bias/value": "no",
    "linear/kernel/value": "yes",
    "norm/bias/value": "no",
    "norm/scale/value": "no",
  }, lines
  by_regex = odx.describe_mask(state, odx.mask_by_path("^norm/", "bias"))
  assert by_regex.splitlines()[-1] == "decayed: 1 of 4 leaves, 12 of 24 parameters"


def flat(tree):
  """{"linear/kernel": array, ...}: leaves by key path, Variable wrappers dropped."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  keys = lambda path: "/".join(str(getattr(k, "key", "")) for k in path).strip("/")
  return {keys(path): np.asarray(leaf) for path, leaf in leaves}


def test_nnx_optimizer_leaves_masked_params_undecayed():
  """nnx.Optimizer with adamw(mask=mask_by_ndim()): with zero gradients and
  α = 0 only the decay acts: the kernel shrinks by 1 - λ, the rest stays."""
  nnx, model = nnx_model()
  before = flat(nnx.state(model, nnx.Param))
  lam = 0.25
  tx = odx.adamw(0.0, weight_decay=lam, mask=odx.mask_by_ndim())
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  optimizer.update(model, grads)
  after = flat(nnx.state(model, nnx.Param))
  assert sorted(after) == ["linear/bias", "linear/kernel", "norm/bias", "norm/scale"]
  kernel = "linear/kernel"
  np.testing.assert_allclose(after[kernel], (1 - lam) * before[kernel], rtol=1e-6)
  for path in ["linear/bias", "norm/bias", "norm/scale"]:
    np.testing.assert_array_equal(after[path], before[path], err_msg=path)


def test_adamw_with_mask_matches_reference():
  """odx.adamw(mask=mask_by_ndim()) equals reference.adam with the same mask
  over 6 steps: the bias is not decayed, the kernel is."""
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
  grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(6)]
  lam, alpha = 0.1, 0.01
  want = reference.adam(params, grads, alpha, lam=lam, mask={"w": True, "b": False})
  unmasked = reference.adam(params, grads, alpha, lam=lam)
  tx = odx.adamw(alpha, weight_decay=lam, mask=odx.mask_by_ndim())
  theta = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(theta)
  step = jax.jit(tx.update)
  for t, g in enumerate(grads):
    g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g)
    updates, state = step(g, state, theta)
    theta = jax.tree.map(lambda p, u: p + u, theta, updates)
    for k in params:
      np.testing.assert_allclose(
        theta[k], want[t][k], rtol=1e-5, atol=1e-6, err_msg=f"{k} step {t}"
      )
  gap = np.abs(want[-1]["b"] - unmasked[-1]["b"]).max()
  assert gap > 1e-4, f"the mask must matter for the bias: gap {gap}"


@pytest.mark.parametrize(
  "build, text",
  [
    (lambda: odx.mask_by_ndim(-1), "min_ndim=-1"),
    (lambda: odx.mask_by_ndim(1.5), "min_ndim=1.5"),
    (lambda: odx.mask_by_ndim(True), "min_ndim=True"),
    (lambda: odx.mask_by_ndim("2"), "min_ndim='2'"),
    (lambda: odx.mask_by_path(), "patterns=()"),
    (lambda: odx.mask_by_path("bias["), "pattern='bias['"),
    (lambda: odx.mask_by_path(5), "pattern=5"),
    (lambda: odx.mask_by_path(b"bias"), "pattern=b'bias'"),
    (lambda: odx.mask_by_path("bias", decay="yes"), "decay='yes'"),
    (lambda: odx.all_of(), "masks=()"),
    (lambda: odx.all_of(odx.mask_by_ndim(), "bias"), "masks[1]='bias'"),
    (lambda: odx.all_of(None), "masks[0]=None"),
    (lambda: odx.adamw(1e-3, mask="bias"), "mask='bias'"),
    (lambda: odx.sgdw(0.1, mask={"w": 1}), "mask={'w': 1}"),
    (lambda: odx.add_l2(1e-4, mask=[True, "no"]), "mask=[True, 'no']"),
    (lambda: odx.add_decoupled_weight_decay(1e-4, mask=3), "mask=3"),
  ],
)
def test_bad_mask_arguments_raise_naming_them(build, text):
  """Bad mask arguments raise ValueError showing the argument and its value."""
  with pytest.raises(ValueError) as info:
    build()
  assert text in str(info.value), f"{text!r} not in: {info.value}"


def test_good_mask_arguments_are_accepted():
  """np.int64 ranks, bool arrays and NumPy bools are valid."""
  assert odx.mask_by_ndim(np.int64(1))({"b": jnp.ones(2)}) == {"b": True}
  odx.adamw(1e-3, mask={"w": np.bool_(True), "b": jnp.asarray(False)})


def test_inject_hyperparams_without_static_mask_is_refused_with_the_fix():
  """inject_hyperparams takes a mask callable for a schedule and would pass its
  value at the step (one bool: decay nothing); the optimizer refuses that bool
  and says to use static_args, which works."""
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  with pytest.raises(ValueError, match=r"mask=False .*static_args=\('mask',\)"):
    optax.inject_hyperparams(odx.adamw)(0.1, mask=odx.mask_by_ndim()).init(params)
  tx = optax.inject_hyperparams(odx.adamw, static_args=("mask",))(
    0.1, weight_decay=0.5, mask=odx.mask_by_ndim()
  )
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["b"], np.zeros(2))
