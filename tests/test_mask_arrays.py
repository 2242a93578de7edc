"""One mask rule everywhere: bool arrays per element, callables checked,
and the trees people have (Linen FrozenDict, NNX State, Equinox modules).

The optimizers are checked against ``reference.adam``/``reference.sgd`` with
the same per-element mask; tables and masks are written out by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import optax_decoupled as odx

_rng = np.random.default_rng(3)
PARAMS = {
  "w": _rng.uniform(0.5, 1.5, (2, 3)).astype(np.float32),
  "b": _rng.uniform(0.5, 1.5, (3,)).astype(np.float32),
}
GRADS = [
  {k: _rng.normal(size=v.shape).astype(np.float32) for k, v in PARAMS.items()}
  for _ in range(3)
]
# Per-element masks, as NumPy bools and as jnp bools; inverting them (or taking
# them for one bool per leaf) changes which elements decay.
ELEMENT_MASK = {
  "w": np.array([[True, False, True], [False, False, True]]),
  "b": jnp.array([False, True, False]),
}
LAM = 0.2


def _run(tx, params=PARAMS):
  state = tx.init(params)
  history = []
  for g in GRADS:
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    history.append(params)
  return history


@pytest.mark.parametrize(
  "make, ref",
  [
    (
      lambda m: odx.adamw(0.05, weight_decay=LAM, mask=m),
      lambda: reference.adam(PARAMS, GRADS, 0.05, lam=LAM, mask=ELEMENT_MASK),
    ),
    (
      lambda m: odx.adam_l2(0.05, weight_decay=LAM, mask=m),
      lambda: reference.adam(
        PARAMS, GRADS, 0.05, lam=LAM, mask=ELEMENT_MASK, decoupled=False
      ),
    ),
    (
      lambda m: odx.sgdw(0.05, weight_decay=LAM, mask=m),
      lambda: reference.sgd(PARAMS, GRADS, 0.05, lam=LAM, mask=ELEMENT_MASK),
    ),
    (
      lambda m: odx.sgd_l2(0.05, weight_decay=LAM, mask=m),
      lambda: reference.sgd(
        PARAMS, GRADS, 0.05, lam=LAM, mask=ELEMENT_MASK, decoupled=False
      ),
    ),
  ],
  ids=["adamw", "adam_l2", "sgdw", "sgd_l2"],
)
@pytest.mark.parametrize("as_callable", [False, True], ids=["tree", "callable"])
def test_per_element_bool_arrays_match_the_reference(make, ref, as_callable):
  """Only the True elements decay, in every optimizer, as a tree or from a
  callable (np.bool_ arrays and jnp bool arrays alike)."""
  mask = (lambda p: ELEMENT_MASK) if as_callable else ELEMENT_MASK
  got, want = _run(make(mask))[-1], ref()[-1]
  for k in PARAMS:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_describe_mask_and_all_of_with_bool_arrays():
  """describe_mask counts decayed elements; all_of ANDs element by element."""
  table = odx.describe_mask(PARAMS, ELEMENT_MASK)
  assert table.splitlines() == [
    "path  shape   dtype    decay",
    "b     (3,)    float32  1 of 3",
    "w     (2, 3)  float32  3 of 6",
    "decayed: 2 of 2 leaves, 4 of 9 parameters",
  ], table
  both = odx.all_of(ELEMENT_MASK, {"w": True, "b": np.bool_(False)})(PARAMS)
  np.testing.assert_array_equal(both["w"], ELEMENT_MASK["w"])
  np.testing.assert_array_equal(both["b"], [False, False, False])


@pytest.mark.parametrize(
  "mask, words",
  [
    (lambda p: {"w": 0.5, "b": True}, "mask(params)="),
    (lambda p: {"w": "yes", "b": True}, "mask(params)="),
    (lambda p: {"w": np.ones(3, bool), "b": True}, "shape (3,)"),
    (lambda p: {"w": True}, "does not match"),
  ],
  ids=["0.5", "str", "wrong shape", "wrong tree"],
)
def test_mask_callable_results_follow_the_rule(mask, words):
  """A callable's result is checked like a mask given directly: {'w': 0.5}
  used to decay w fully."""
  tx = odx.adamw(0.1, mask=mask)
  with pytest.raises(ValueError) as info:
    tx.update(PARAMS, tx.init(PARAMS), PARAMS)
  assert words in str(info.value), str(info.value)
  with pytest.raises(ValueError):
    odx.describe_mask(PARAMS, mask)


@pytest.mark.parametrize("mask", ["bias", 0.5, {"w": 1, "b": True}])
def test_describe_mask_refuses_what_the_optimizers_refuse(mask):
  """describe_mask(params, 'bias') reported every leaf decayed."""
  with pytest.raises(ValueError):
    odx.adamw(0.1, mask=mask)
  with pytest.raises(ValueError):
    odx.describe_mask(PARAMS, mask)


def _decayed(tx, params):
  """Which elements the decay moved, with zero gradients (SGDW, α=0)."""
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  return jax.tree.map(lambda x: np.asarray(x != 0), u)


def test_masks_on_linen_frozen_dict():
  flax_core = pytest.importorskip("flax.core")
  params = flax_core.FrozenDict(
    {"params": {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}}
  )
  mask = odx.all_of(odx.mask_by_ndim(), odx.mask_by_path("bias"))
  moved = _decayed(odx.sgdw(0.0, weight_decay=0.1, mask=mask), params)
  assert moved["params"]["Dense_0"]["kernel"].all()
  assert not moved["params"]["Dense_0"]["bias"].any()
  assert "decayed: 1 of 2 leaves" in odx.describe_mask(params, mask)


def test_masks_on_nnx_state_with_bool_arrays():
  nnx = pytest.importorskip("flax.nnx")
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  # Decay the first column of the kernel only, per element; not the bias.
  mask = lambda p: jax.tree.map(  # noqa: E731
    lambda x: jnp.zeros(x.shape, bool).at[..., 0].set(x.ndim == 2), p
  )
  moved = _decayed(odx.sgdw(0.0, weight_decay=0.1, mask=mask), state)
  kernel = np.asarray(jax.tree.leaves(moved["kernel"])[0])
  np.testing.assert_array_equal(kernel, [[True, False, False]] * 2)
  assert not np.asarray(jax.tree.leaves(moved["bias"])[0]).any()
  assert "2 of 6" in odx.describe_mask(state, mask)


def test_masks_on_equinox_module_with_non_array_leaves():
  """eqx.filter leaves None where the module holds functions and ints; the
  masks, the optimizers and describe_mask take such trees."""
  eqx = pytest.importorskip("equinox")
  model = eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(0))
  params = eqx.filter(model, eqx.is_array)
  mask = odx.all_of(odx.mask_by_ndim(), lambda p: jax.tree.map(lambda _: True, p))
  moved = _decayed(odx.adamw(0.0, weight_decay=0.1, mask=mask), params)
  for layer in moved.layers:
    assert layer.weight.all() and not layer.bias.any()
  assert "decayed: 2 of 4 leaves" in odx.describe_mask(params, mask)


READY = {
  "adamw": (
    odx.adamw,
    {},
    lambda m: reference.adam(PARAMS, GRADS, 0.05, lam=LAM, mask=m),
  ),
  "adam_l2": (
    odx.adam_l2,
    {},
    lambda m: reference.adam(PARAMS, GRADS, 0.05, lam=LAM, mask=m, decoupled=False),
  ),
  "sgdw": (odx.sgdw, {}, lambda m: reference.sgd(PARAMS, GRADS, 0.05, lam=LAM, mask=m)),
  "sgd_l2": (
    odx.sgd_l2,
    {},
    lambda m: reference.sgd(PARAMS, GRADS, 0.05, lam=LAM, mask=m, decoupled=False),
  ),
  "adamwr": (
    odx.adamwr,
    {"first_cycle_steps": 2},
    lambda m: reference.adam(
      PARAMS, GRADS, 0.05, lam=LAM, mask=m, eta=lambda s: reference.sgdr(s, 2)
    ),
  ),
  "sgdwr": (
    odx.sgdwr,
    {"first_cycle_steps": 2},
    lambda m: reference.sgd(
      PARAMS, GRADS, 0.05, lam=LAM, mask=m, eta=lambda s: reference.sgdr(s, 2)
    ),
  ),
}
# Every form of mask the docs name, and the per-leaf decay it means.
MASK_FORMS = {
  "none_entry": ({"w": True, "b": None}, {"w": True, "b": False}),
  "numpy_bools": ({"w": np.bool_(False), "b": np.bool_(True)}, {"w": False, "b": True}),
  # A bool at the root is refused (optax.inject_hyperparams makes one of a
  # mask callable); a callable may return one.
  "callable_root_true": (lambda p: True, {"w": True, "b": True}),
  "callable_root_false": (lambda p: np.bool_(False), {"w": False, "b": False}),
  "callable_none_entry": (lambda p: {"w": None, "b": True}, {"w": False, "b": True}),
  "jnp_scalar_bools": (
    {"w": jnp.bool_(True), "b": jnp.bool_(False)},
    {"w": True, "b": False},
  ),
}


@pytest.mark.parametrize("form", MASK_FORMS)
@pytest.mark.parametrize("name", READY)
def test_every_mask_form_in_every_optimizer(name, form):
  """A None entry is not decayed, a callable's bool at the root covers the
  whole tree, NumPy and JAX bools count as bools, a callable may return None
  entries: in
  every ready optimizer, against the float64 reference with the same decay
  per leaf. (Inverting any of them changes the result: the decay is λ = 0.2.)"""
  factory, extra, ref = READY[name]
  mask, meaning = MASK_FORMS[form]
  got = _run(factory(0.05, weight_decay=LAM, mask=mask, **extra))[-1]
  want = ref(meaning)[-1]
  for k in PARAMS:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  flipped = ref({k: not v for k, v in meaning.items()})[-1]
  assert any(not np.allclose(got[k], flipped[k], rtol=1e-4) for k in PARAMS)
