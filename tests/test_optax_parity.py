"""What optax takes, the library takes, with the same result (issue 10).

Complex parameters, trees without leaves, Python scalars, ``None`` updates,
bf16 hyperparameters, optax's own Adam state and signatures optax can read.
Each check compares against optax itself or ``tests/reference.py``.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import optax_decoupled as odx

_rng = np.random.default_rng(10)


def _complex(shape):
  return (_rng.normal(size=shape) + 1j * _rng.normal(size=shape)).astype(np.complex64)


def _optax(fn, *args):
  with jax.numpy_dtype_promotion("standard"):  # optax mixes complex and real
    return fn(*args)


@pytest.mark.parametrize("nesterov", [False, True])
def test_complex_params_match_optax_adam(nesterov):
  """On complex64 leaves Adam's second moment is |g|² (real), as in optax: three
  steps of odx.scale_by_adam and odx.adamw (λ=0) equal optax.adam's."""
  params = {"w": _complex((3, 2)), "b": _complex(4)}
  grads = [jax.tree.map(lambda p: _complex(p.shape), params) for _ in range(3)]
  cases = [
    (odx.scale_by_adam(nesterov=nesterov), optax.scale_by_adam(nesterov=nesterov)),
    (
      odx.adamw(0.1, weight_decay=0.0, nesterov=nesterov),
      optax.adam(0.1, nesterov=nesterov),
    ),
  ]
  for ours, theirs in cases:
    s1, s2 = ours.init(params), _optax(theirs.init, params)
    for g in grads:
      u1, s1 = ours.update(g, s1, params)
      u2, s2 = _optax(theirs.update, g, s2, params)
      for k in params:
        assert u1[k].dtype == np.complex64, u1[k].dtype
        np.testing.assert_allclose(u1[k], u2[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_complex_decoupled_decay_shrinks_both_parts():
  """Decoupled decay on a complex leaf is θ ← θ - ηλθ: both parts shrink alike."""
  params = {"w": _complex(3)}
  tx = odx.add_decoupled_weight_decay(0.1)
  u, _ = tx.update({"w": jnp.zeros(3, jnp.complex64)}, tx.init(params), params)
  np.testing.assert_allclose(u["w"], -0.1 * params["w"], rtol=1e-6)


def test_real_mu_dtype_for_complex_params_is_refused():
  """A real first moment would drop the imaginary part: refused at init."""
  with pytest.raises(ValueError, match="mu_dtype"):
    odx.adamw(0.1, mu_dtype=jnp.float32).init({"w": _complex(2)})


def test_adam_state_is_optax_scale_by_adam_state():
  """odx's Adam state is optax.ScaleByAdamState: isinstance and optax's state
  utilities find it, and optax's state restores into odx's structure."""
  params = {"w": jnp.ones(3)}
  state = odx.adamw(1e-3).init(params)
  assert odx.ScaleByAdamState is optax.ScaleByAdamState
  assert isinstance(state[0], optax.ScaleByAdamState), type(state[0])
  mu = optax.tree_utils.tree_get(state, "mu")
  assert mu is not None and mu["w"].shape == (3,), mu
  theirs = optax.scale_by_adam().init(params)
  assert jax.tree.structure(theirs) == jax.tree.structure(state[0])


PARAMS = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}


@pytest.mark.parametrize(
  "make",
  [
    lambda: odx.adamw(0.1),
    lambda: odx.sgdw(0.1),
    lambda: odx.adamwr(0.1, first_cycle_steps=3),
    lambda: odx.adam_l2(0.1),
  ],
  ids=["adamw", "sgdw", "adamwr", "adam_l2"],
)
def test_trees_without_leaves(make):
  """{} updates, optax.masked with every leaf masked out, and optax.partition
  with a label that owns no parameter: what optax does, no error."""
  tx = make()
  assert tx.update({}, tx.init({}), {})[0] == {}
  masked = optax.masked(make(), {"w": False, "b": False})
  u, _ = masked.update(PARAMS, masked.init(PARAMS), PARAMS)
  np.testing.assert_array_equal(u["w"], PARAMS["w"])  # untouched, as optax
  part = optax.partition(
    {"ours": make(), "sgd": optax.sgd(0.1)}, {"w": "sgd", "b": "sgd"}
  )
  u, _ = part.update(PARAMS, part.init(PARAMS), PARAMS)
  np.testing.assert_allclose(u["w"], -0.1 * PARAMS["w"])


def test_python_scalar_params_follow_the_reference():
  """tx.init({'a': 1.0}) works (optax's does) and two AdamW steps on Python
  floats equal the float64 reference."""
  tx = odx.adamw(0.1, weight_decay=0.01)
  params = {"a": 1.0}
  state = tx.init(params)
  for _ in range(2):
    u, state = tx.update({"a": 0.5}, state, params)
    params = {"a": float(optax.apply_updates(params, u)["a"])}
  expected = reference.adam({"a": 1.0}, [{"a": 0.5}] * 2, 0.1, lam=0.01)[-1]["a"]
  np.testing.assert_allclose(params["a"], expected, rtol=1e-5)


@pytest.mark.parametrize(
  "factory, ref",
  [
    (odx.adamw, lambda g: reference.adam({"a": 1.0}, g, 0.1, lam=0.01)),
    (
      odx.adam_l2,
      lambda g: reference.adam({"a": 1.0}, g, 0.1, lam=0.01, decoupled=False),
    ),
    (odx.sgdw, lambda g: reference.sgd({"a": 1.0}, g, 0.1, lam=0.01)),
    (
      odx.sgd_l2,
      lambda g: reference.sgd({"a": 1.0}, g, 0.1, lam=0.01, decoupled=False),
    ),
  ],
  ids=["adamw", "adam_l2", "sgdw", "sgd_l2"],
)
def test_python_scalar_gradients_follow_the_reference(factory, ref):
  """Python-float gradients and params (optax.sgd takes them; sgdw raised
  AttributeError on ``g.dtype``): two steps equal the float64 reference."""
  tx = factory(0.1, weight_decay=0.01)
  params = {"a": 1.0}
  state = tx.init(params)
  for _ in range(2):
    u, state = tx.update({"a": 0.5}, state, params)
    params = {"a": float(optax.apply_updates(params, u)["a"])}
  expected = ref([{"a": 0.5}] * 2)[-1]["a"]
  np.testing.assert_allclose(params["a"], expected, rtol=1e-5)


@pytest.mark.parametrize(
  "ours, lam_scale",
  [(odx.add_l2(0.1), 1.0), (odx.add_decoupled_weight_decay(0.1), -1.0)],
  ids=["add_l2", "add_decoupled_weight_decay"],
)
def test_none_updates_stay_none(ours, lam_scale):
  """A leaf without a gradient (None, as optax.add_decayed_weights allows)
  stays None; the others get the decay term as in optax."""
  params = {"w": jnp.ones(2), "frozen": jnp.ones(3)}
  updates = {"w": jnp.full(2, 0.5), "frozen": None}
  u, _ = ours.update(updates, ours.init(params), params)
  theirs, _ = optax.add_decayed_weights(0.1).update(updates, None, params)
  assert u["frozen"] is None and theirs["frozen"] is None
  np.testing.assert_allclose(u["w"], 0.5 + lam_scale * (theirs["w"] - 0.5))


def test_bf16_hyperparameters_under_inject_hyperparams():
  """optax.inject_hyperparams makes numbers bf16 on bf16 params: they are
  accepted outside jit, and the step lands where optax.adamw's does (ours
  is compensated: its update is the exact move between bf16 values); a b2
  that rounds to 1.0 in bf16 (0.999) is refused, with the way out in the
  message."""
  params = {"w": jnp.array([1.0, -2.0], jnp.bfloat16)}
  grads = {"w": jnp.array([0.5, 0.25], jnp.bfloat16)}
  kw = dict(learning_rate=0.1, b2=0.99, weight_decay=0.0)
  ours = optax.inject_hyperparams(odx.adamw)(**kw)
  theirs = optax.inject_hyperparams(optax.adamw)(**kw)
  u1, _ = ours.update(grads, ours.init(params), params)
  u2, _ = _optax(theirs.update, grads, _optax(theirs.init, params), params)
  assert u1["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(
    np.float32(optax.apply_updates(params, u1)["w"]),
    np.float32(optax.apply_updates(params, u2)["w"]),
  )
  default = optax.inject_hyperparams(odx.adamw)(learning_rate=0.1)
  with pytest.raises(ValueError, match="hyperparam_dtype"):
    default.init(params)


READY = [odx.adamw, odx.adam_l2, odx.sgdw, odx.sgd_l2, odx.adamwr, odx.sgdwr]


@pytest.mark.parametrize("fn", READY, ids=lambda f: f.__name__)
def test_ready_optimizers_take_keywords_after_learning_rate(fn):
  """Every argument after learning_rate is keyword-only: optax.adamw's
  positional order differs, so a positional call must fail, not mean another
  argument."""
  params = list(inspect.signature(fn).parameters.values())
  assert params[0].name == "learning_rate"
  kinds = {p.name: p.kind for p in params[1:]}
  assert set(kinds.values()) == {inspect.Parameter.KEYWORD_ONLY}, kinds
  with pytest.raises(TypeError):
    fn(1e-3, 0.9)


PUBLIC = [getattr(odx, name) for name in odx.__all__ if callable(getattr(odx, name))]


@pytest.mark.parametrize("fn", PUBLIC, ids=lambda f: getattr(f, "__name__", str(f)))
def test_public_signatures_carry_real_annotations(fn):
  """No annotation is a string (from __future__ import annotations): optax
  and users read ScalarOrSchedule from the signature at run time."""
  if inspect.isclass(fn):
    return
  for p in inspect.signature(fn).parameters.values():
    assert not isinstance(p.annotation, str), (fn.__name__, p.name, p.annotation)
  sig = inspect.signature(fn)
  assert not isinstance(sig.return_annotation, str), (fn.__name__, sig)


def test_learning_rate_annotation_is_optax_scalar_or_schedule():
  assert inspect.signature(odx.adamw).parameters["learning_rate"].annotation == (
    optax.ScalarOrSchedule
  )


# --- flatten_small_leaves


def _flat_adamw():
  return odx.flatten_small_leaves(odx.adamw(0.1), max_leaf_size=4)


def test_flatten_init_on_shape_dtype_structs():
  """Abstract params (jax.ShapeDtypeStruct) give the state of the real ones."""
  params = {"a": jnp.ones(2), "b": jnp.ones(8)}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  tx = _flat_adamw()
  got, want = tx.init(abstract), tx.init(params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, want)


@pytest.mark.parametrize(
  "changed, words",
  [
    ({"a": jnp.ones(3), "b": jnp.ones(8)}, "['a'] has shape (3,)"),
    ({"c": jnp.ones(2), "b": jnp.ones(8)}, "changed since init"),
  ],
  ids=["new shape", "renamed key"],
)
def test_flatten_refuses_a_tree_changed_since_init(changed, words):
  """Another shape, or the same number of leaves under other names, is
  refused with a message saying the tree changed (not a broadcasting error,
  not silently accepted)."""
  tx = _flat_adamw()
  state = tx.init({"a": jnp.ones(2), "b": jnp.ones(8)})
  with pytest.raises(ValueError) as info:
    tx.update(changed, state, changed)
  assert words in str(info.value), str(info.value)
