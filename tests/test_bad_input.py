"""Bad arguments raise ValueError when the optimizer or schedule is built.

Table-driven: every builder with every bad value; the message must name the
argument and show its value. Traced values (under jit or inject_hyperparams)
are not checked, since their value is unknown when the builder runs.
"""

import math

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_decoupled as odx

NAN, INF = math.nan, math.inf

# Bad values per kind of argument. Strings and bools are never numbers.
NOT_NUMBERS = [True, "0.1", None]
NON_NEGATIVE = [-0.1, -1, NAN, INF, -INF, *NOT_NUMBERS]
UNIT_INTERVAL = [1.0, 1.5, -0.1, NAN, INF, *NOT_NUMBERS]
POSITIVE = [0, -1, NAN, INF, *NOT_NUMBERS]
AT_LEAST_ONE = [0, 0.5, -3, NAN, INF, *NOT_NUMBERS]

RESTART = dict(first_cycle_steps=10)
BUILDERS = {
  # name: (builder, required kwargs, {argument: bad values})
  "cosine_warm_restarts": (
    odx.cosine_warm_restarts,
    RESTART,
    {
      "first_cycle_steps": AT_LEAST_ONE,
      "cycle_mult": AT_LEAST_ONE,
      "min_value": NON_NEGATIVE,
      "max_value": NON_NEGATIVE,
      "cycle_decay": [0.0, -0.5, 1.5, NAN, *NOT_NUMBERS],
      "warmup_steps": NON_NEGATIVE,
    },
  ),
  "normalized_weight_decay": (
    odx.normalized_weight_decay,
    dict(lambda_norm=0.05, batch_size=128, num_examples=50_000, num_epochs=100),
    {
      "lambda_norm": NON_NEGATIVE,
      "batch_size": POSITIVE,
      "num_examples": POSITIVE,
      "num_epochs": POSITIVE,
    },
  ),
  "restart_normalized_weight_decay": (
    odx.restart_normalized_weight_decay,
    dict(lambda_norm=0.05, first_cycle_steps=10),
    {
      "lambda_norm": NON_NEGATIVE,
      "first_cycle_steps": AT_LEAST_ONE,
      "cycle_mult": AT_LEAST_ONE,
      "warmup_steps": NON_NEGATIVE,
    },
  ),
  "add_l2": (odx.add_l2, dict(weight_decay=1e-4), {"weight_decay": NON_NEGATIVE}),
  "add_decoupled_weight_decay": (
    odx.add_decoupled_weight_decay,
    dict(weight_decay=1e-4),
    {"weight_decay": NON_NEGATIVE, "schedule_multiplier": [-1.0, NAN, "cos", True]},
  ),
  "scale_by_adam": (
    odx.scale_by_adam,
    {},
    {
      "b1": UNIT_INTERVAL,
      "b2": UNIT_INTERVAL,
      "eps": NON_NEGATIVE,
      "eps_root": NON_NEGATIVE,
    },
  ),
}
ADAM_ARGS = {
  "learning_rate": NON_NEGATIVE,
  "b1": UNIT_INTERVAL,
  "b2": UNIT_INTERVAL,
  "eps": NON_NEGATIVE,
  "eps_root": NON_NEGATIVE,
  "weight_decay": NON_NEGATIVE,
  "schedule_multiplier": [-1.0, NAN, "cos", True],
}
SGD_ARGS = {
  "learning_rate": NON_NEGATIVE,
  "momentum": UNIT_INTERVAL,
  "weight_decay": NON_NEGATIVE,
  "schedule_multiplier": [-1.0, NAN, "cos", True],
}
RESTART_ARGS = {
  "first_cycle_steps": AT_LEAST_ONE,
  "cycle_mult": AT_LEAST_ONE,
  "min_value": NON_NEGATIVE,
  "max_value": NON_NEGATIVE,
  "cycle_decay": [0.0, 1.5, NAN],
  "warmup_steps": NON_NEGATIVE,
}
for name, fn in [("adamw", odx.adamw), ("adam_l2", odx.adam_l2)]:
  BUILDERS[name] = (fn, dict(learning_rate=1e-3), ADAM_ARGS)
for name, fn in [("sgdw", odx.sgdw), ("sgd_l2", odx.sgd_l2)]:
  BUILDERS[name] = (fn, dict(learning_rate=0.1), SGD_ARGS)
# The restart forms' schedule multiplier is their cosine_warm_restarts.
BUILDERS["adamwr"] = (
  odx.adamwr,
  dict(learning_rate=1e-3, **RESTART),
  {k: v for k, v in (ADAM_ARGS | RESTART_ARGS).items() if k != "schedule_multiplier"},
)
BUILDERS["sgdwr"] = (
  odx.sgdwr,
  dict(learning_rate=0.1, **RESTART),
  {k: v for k, v in (SGD_ARGS | RESTART_ARGS).items() if k != "schedule_multiplier"},
)

CASES = [
  pytest.param(name, arg, value, id=f"{name}-{arg}={value!r}")
  for name, (_, _, table) in BUILDERS.items()
  for arg, values in table.items()
  for value in values
]


@pytest.mark.parametrize("name, arg, value", CASES)
def test_bad_value_raises_naming_argument_and_value(name, arg, value):
  """ValueError at build time; the message shows ``arg=value``."""
  fn, kwargs, _ = BUILDERS[name]
  with pytest.raises(ValueError) as info:
    fn(**(kwargs | {arg: value}))
  assert f"{arg}={value!r}" in str(info.value), f"message: {info.value}"


@pytest.mark.parametrize(
  "name, kwargs, names",
  [
    (
      "cosine_warm_restarts",
      dict(first_cycle_steps=5, min_value=2.0, max_value=1.0),
      ("min_value=2.0", "max_value=1.0"),
    ),
    (
      "adamwr",
      dict(learning_rate=1e-3, first_cycle_steps=5, min_value=0.5, max_value=0.1),
      ("min_value=0.5", "max_value=0.1"),
    ),
    (
      "sgdwr",
      dict(learning_rate=0.1, first_cycle_steps=5, min_value=0.5, max_value=0.1),
      ("min_value=0.5", "max_value=0.1"),
    ),
    (
      "normalized_weight_decay",
      dict(lambda_norm=0.05, batch_size=256, num_examples=100, num_epochs=1),
      ("batch_size=256", "num_examples=100"),
    ),
  ],
)
def test_inconsistent_pair_raises_naming_both(name, kwargs, names):
  """min_value > max_value (and batch_size > num_examples) names both values."""
  with pytest.raises(ValueError) as info:
    BUILDERS[name][0](**kwargs)
  for text in names:
    assert text in str(info.value), f"{text!r} not in: {info.value}"


GOOD = {
  "cosine_warm_restarts": dict(
    first_cycle_steps=10, cycle_mult=2, min_value=0.1, warmup_steps=3
  ),
  "restart_normalized_weight_decay": dict(
    lambda_norm=0.05, first_cycle_steps=10, cycle_mult=2, warmup_steps=3
  ),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_traced_values_skip_checks_in_schedules(name):
  """Schedules built inside jit from traced values build and run (no check)."""
  kwargs = GOOD[name]

  @jax.jit
  def run(values):
    schedule = BUILDERS[name][0](**dict(zip(kwargs, values, strict=True)))
    return schedule(jnp.int32(12))

  values = [
    jnp.asarray(v, jnp.float32 if isinstance(v, float) else jnp.int32)
    for v in kwargs.values()
  ]
  out = run(values)
  assert jnp.isfinite(out), f"{name}: {out}"


OPTIMIZERS = {
  "adamw": (
    odx.adamw,
    dict(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4),
  ),
  "adam_l2": (
    odx.adam_l2,
    dict(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4),
  ),
  "sgdw": (odx.sgdw, dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)),
  "sgd_l2": (odx.sgd_l2, dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)),
  "adamwr": (
    odx.adamwr,
    dict(
      learning_rate=1e-3, first_cycle_steps=10, cycle_mult=2, b1=0.9, weight_decay=1e-4
    ),
  ),
  "sgdwr": (
    odx.sgdwr,
    dict(
      learning_rate=0.1,
      first_cycle_steps=10,
      min_value=0.01,
      momentum=0.9,
      weight_decay=1e-4,
    ),
  ),
  "scale_by_adam": (odx.scale_by_adam, dict(b1=0.9, b2=0.999, eps=1e-8)),
  "add_l2": (odx.add_l2, dict(weight_decay=1e-4)),
  "add_decoupled_weight_decay": (
    odx.add_decoupled_weight_decay,
    dict(weight_decay=1e-4),
  ),
}
PARAMS = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_inject_hyperparams_traces_numeric_arguments(name):
  """optax.inject_hyperparams passes numbers as arrays, traced under jit: one
  jitted step builds and runs without a check failing."""
  fn, kwargs = OPTIMIZERS[name]
  static = tuple(k for k in ("first_cycle_steps", "cycle_mult") if k in kwargs)
  tx = optax.inject_hyperparams(fn, static_args=static)(**kwargs)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  updates, _ = jax.jit(tx.update)(grads, tx.init(PARAMS), PARAMS)
  for leaf in jax.tree.leaves(updates):
    assert jnp.isfinite(leaf).all(), f"{name}: {updates}"


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_jit_over_hyperparameters(name):
  """Building the optimizer inside jit from traced hyperparameters works."""
  fn, kwargs = OPTIMIZERS[name]
  traced = {k: v for k, v in kwargs.items() if isinstance(v, float)}

  @jax.jit
  def step(hparams, grads, params):
    tx = fn(**(kwargs | hparams))
    return tx.update(grads, tx.init(params), params)[0]

  updates = step(traced, jax.tree.map(jnp.ones_like, PARAMS), PARAMS)
  for leaf in jax.tree.leaves(updates):
    assert jnp.isfinite(leaf).all(), f"{name}: {updates}"


@pytest.mark.parametrize(
  "tx",
  [
    odx.add_l2(1e-4),
    odx.add_decoupled_weight_decay(1e-4),
    odx.adamw(1e-3),
    odx.sgdw(0.1),
    odx.adam_l2(1e-3),
    odx.sgd_l2(0.1),
    odx.adamwr(1e-3, first_cycle_steps=10),
  ],
  ids=[
    "add_l2",
    "add_decoupled_weight_decay",
    "adamw",
    "sgdw",
    "adam_l2",
    "sgd_l2",
    "adamwr",
  ],
)
def test_update_without_params_raises(tx):
  """Weight decay needs θ: update(updates, state) without params says so."""
  with pytest.raises(ValueError, match="params") as info:
    tx.update(PARAMS, tx.init(PARAMS))
  assert "params=None" in str(info.value), str(info.value)


@pytest.mark.parametrize("fn", [odx.adamwr, odx.sgdwr])
def test_normalize_weight_decay_rejects_a_schedule(fn):
  """normalize_weight_decay=True takes λ_norm, a number, not a schedule."""
  schedule = optax.constant_schedule(0.05)
  with pytest.raises(ValueError, match="normalize_weight_decay=True") as info:
    fn(0.1, first_cycle_steps=10, weight_decay=schedule, normalize_weight_decay=True)
  assert "weight_decay=" in str(info.value), str(info.value)


# --- Issue 10: refused when built, never silently wrong.

BEYOND_FLOAT32 = [
  (odx.adamw, dict(learning_rate=1e39)),
  (odx.adamw, dict(learning_rate=1e-3, weight_decay=1e300)),
  (odx.adamw, dict(learning_rate=1e-3, eps=1e39)),
  (odx.sgdw, dict(learning_rate=-1e39)),
  (odx.cosine_warm_restarts, dict(first_cycle_steps=10, max_value=1e300)),
  (odx.cosine_warm_restarts, dict(first_cycle_steps=1e300)),
  (odx.add_decoupled_weight_decay, dict(weight_decay=1e39)),
]


@pytest.mark.parametrize(
  "fn, kwargs", BEYOND_FLOAT32, ids=[f"{f.__name__}-{k}" for f, k in BEYOND_FLOAT32]
)
def test_finite_values_beyond_float32_are_refused(fn, kwargs):
  """1e39 is finite in float64 but inf in float32, where it is used."""
  with pytest.raises(ValueError) as info:
    fn(**kwargs)
  name, value = list(kwargs.items())[-1]
  assert f"{name}={value!r}" in str(info.value), str(info.value)


@pytest.mark.parametrize("arg", ["b1", "b2"])
@pytest.mark.parametrize("fn", [odx.adamw, odx.adam_l2], ids=["adamw", "adam_l2"])
def test_decay_rates_that_round_to_one_in_float32_are_refused(fn, arg):
  """b2=0.99999999 is < 1 in float64, 1.0 in float32: NaN on step 1."""
  with pytest.raises(ValueError, match=f"{arg}=0.99999999"):
    fn(1e-3, **{arg: 0.99999999})
  with pytest.raises(ValueError, match="momentum=0.99999999"):
    odx.sgdw(0.1, momentum=0.99999999)


@pytest.mark.parametrize("arg", ["mu_dtype", "nu_dtype"])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.bool_, "foo", 3])
def test_moment_dtypes_must_be_floating_when_built(arg, dtype):
  """Integer or bool moments zero or explode the step; 'foo' is no dtype:
  refused when the optimizer is built, not at init."""
  with pytest.raises(TypeError) as info:
    odx.adamw(1e-3, **{arg: dtype})
  assert f"{arg}=" in str(info.value), str(info.value)


@pytest.mark.parametrize(
  "make",
  [
    lambda: odx.sgdw(0.1, nesterov="no"),
    lambda: odx.adamw(0.1, nesterov="no"),
    lambda: odx.scale_by_adam(nesterov=1),
    lambda: odx.adamwr(0.1, first_cycle_steps=10, normalize_weight_decay="no"),
    lambda: odx.sgdwr(0.1, first_cycle_steps=10, normalize_weight_decay=None),
  ],
  ids=["sgdw", "adamw", "scale_by_adam", "adamwr", "sgdwr"],
)
def test_flags_must_be_bools(make):
  """'no' is truthy: a flag that is not a bool is refused, by name."""
  with pytest.raises(TypeError, match="must be True or False"):
    make()


@pytest.mark.parametrize(
  "make, words",
  [
    (lambda: odx.adamw(1j), "learning_rate=1j"),
    (lambda: odx.adamw(1e-3, eps=1e-8 + 0j), "eps="),
    (lambda: odx.cosine_warm_restarts(10, min_value=1j), "min_value=1j"),
    (lambda: odx.with_decoupled_weight_decay(None, 1e-4), "tx=None"),
    (lambda: odx.flatten_small_leaves(None), "tx=None"),
    (
      lambda: odx.normalized_weight_decay(
        optax.constant_schedule(0.05), batch_size=1, num_examples=10, num_epochs=1
      ),
      "lambda_norm=",
    ),
  ],
  ids=["complex lr", "complex eps", "complex min", "tx None", "flatten None", "sched"],
)
def test_wrong_kinds_raise_type_error_naming_the_argument(make, words):
  with pytest.raises(TypeError) as info:
    make()
  assert words in str(info.value), str(info.value)


@pytest.mark.parametrize("warmup", [2**31, 2.5, -1])
def test_warmup_steps_must_be_a_whole_int32(warmup):
  """warmup_steps=2**31 used to build and fail on the first call."""
  with pytest.raises(ValueError, match="warmup_steps="):
    odx.cosine_warm_restarts(10, warmup_steps=warmup)
  with pytest.raises(ValueError, match="warmup_steps="):
    odx.adamwr(0.1, first_cycle_steps=10, warmup_steps=warmup)


def test_check_restore_target_on_python_scalars_and_garbage():
  """Python-scalar leaves are compared as JAX stores them; a leaf with no
  shape and dtype is a TypeError naming its path."""
  odx.check_restore_target({"a": 1.0, "n": 3}, {"a": jnp.float32(2), "n": jnp.int32(0)})
  with pytest.raises(ValueError, match="a is saved with shape"):
    odx.check_restore_target({"a": 1.0}, {"a": jnp.ones(2)})
  with pytest.raises(TypeError, match="a='x'"):
    odx.check_restore_target({"a": "x"}, {"a": jnp.ones(2)})
  with pytest.raises(TypeError, match="no shape and dtype"):
    odx.check_restore_target(object(), {"a": jnp.ones(2)})


def test_check_restore_target_names_a_leaf_only_in_the_checkpoint():
  """A checkpoint with a leaf the target lacks is refused, naming the leaf."""
  params = {"w": jnp.zeros(2)}
  saved = {"w": jnp.zeros(2), "extra": jnp.zeros(3)}
  with pytest.raises(ValueError, match="extra is in the checkpoint but not"):
    odx.check_restore_target(saved, params)
  state = odx.adamw(1e-3).init(params)
  bigger = odx.adamw(1e-3).init(saved)
  with pytest.raises(ValueError, match="mu/extra is in the checkpoint but not"):
    odx.check_restore_target(bigger, state)
