"""Cautious and corrected decoupled decay against the float64 reference.

``tests/reference.py`` transcribes the variants from the papers (Chen et al.
2025: decay where the step ``s`` has ``s θ <= 0``; Defazio 2025: ``λ_t η_t /
η_max``) in NumPy float64; the library runs in float32. Tolerances as in
``test_optimizers.py`` (``RTOL = 2e-5``, ``ATOL = 2e-6`` over 60 steps).

What would make these fail: the cautious test on the wrong sign, ``<``
instead of ``<=`` (the leaf ``z`` has entries whose gradient is always 0, so
their step is exactly 0 and only ``<=`` decays them), the test made on the
update after the decay is added, ``η_t`` instead of ``η_t²`` or a schedule
read one step off (``η_t`` is a random table), a wrong ``η_max``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import optax_decoupled as odx

RTOL, ATOL = 2e-5, 2e-6
STEPS = 60

_rng = np.random.default_rng(12)
PARAMS = {
  "w": _rng.normal(size=(3, 4)),
  "b": _rng.normal(size=(4,)),
  "z": _rng.normal(size=(2, 3)),
}
GRADS = {k: _rng.normal(size=(STEPS, *np.shape(v))) for k, v in PARAMS.items()}
GRADS["z"][:, :, 0] = 0.0  # a column that never gets a gradient: its step is 0
ETA_TABLE = _rng.uniform(0.2, 1.2, size=STEPS)
ETA_PEAK = 1.25  # stated peak, above every value of the table


def _f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def run(tx, steps=STEPS):
  """Params after every step, one jitted scan over the fixed gradients."""

  def step(carry, g):
    p, state = carry
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    return (p, state), p

  xs = _f32(jax.tree.map(lambda g: g[:steps], GRADS))
  p0 = _f32(PARAMS)
  return jax.jit(lambda p, xs: jax.lax.scan(step, (p, tx.init(p)), xs))(p0, xs)[1]


def expected(ref, steps=STEPS, **kw):
  grads = [{k: v[t] for k, v in GRADS.items()} for t in range(steps)]
  history = ref(PARAMS, grads, **kw)
  return {k: np.stack([h[k] for h in history]) for k in PARAMS}


def assert_close(actual, want):
  for k in want:
    a, e = np.asarray(actual[k], np.float64), want[k]
    np.testing.assert_allclose(
      a, e, RTOL, ATOL, err_msg=f"leaf {k!r}: max |diff| {abs(a - e).max()}"
    )


def eta_table():
  table = jnp.asarray(ETA_TABLE, jnp.float32)
  return (lambda count: table[count]), (lambda s: ETA_TABLE[s])


# name -> (factory, reference, α, λ): λ large enough that the variants differ.
OPTIMIZERS = {
  "adamw": (odx.adamw, reference.adam, 0.05, 0.05),
  "sgdw": (odx.sgdw, reference.sgd, 0.05, 0.05),
}
VARIANTS = {
  "cautious": dict(cautious=True),
  "corrected": dict(corrected=True),
  "cautious_corrected": dict(cautious=True, corrected=True),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_variant_matches_reference_with_eta_table(opt, variant):
  """60 steps under a random η_t table (peak stated) equal the float64 reference."""
  factory, ref, alpha, lam = OPTIMIZERS[opt]
  e_jax, e_np = eta_table()
  kw = VARIANTS[variant]
  corrected = kw.get("corrected", False)
  tx = factory(
    alpha,
    weight_decay=lam,
    schedule_multiplier=e_jax,
    schedule_peak=ETA_PEAK if corrected else None,
    **kw,
  )
  want = expected(
    ref,
    alpha=alpha,
    lam=lam,
    eta=e_np,
    cautious=kw.get("cautious", False),
    peak=ETA_PEAK if corrected else None,
  )
  assert_close(run(tx), want)


RESTARTS = dict(first_cycle_steps=8, cycle_mult=2, min_value=0.1, max_value=1.5)
RESTARTS_NP = dict(t0=8, t_mult=2, eta_min=0.1, eta_max=1.5)


@pytest.mark.parametrize(
  "factory, ref",
  [(odx.adamwr, reference.adam), (odx.sgdwr, reference.sgd)],
  ids=["adamwr", "sgdwr"],
)
def test_restarts_corrected_cautious_use_max_value_as_peak(factory, ref):
  """adamwr/sgdwr(corrected=True): η_max is max_value (1.5), through restarts
  at steps 8, 24 and a λ schedule; equal to the reference."""
  lam_np = lambda s: 0.05 * (1 + 0.5 * np.sin(s))
  lam_jax = lambda c: 0.05 * (1 + 0.5 * jnp.sin(jnp.asarray(c, jnp.float32)))
  tx = factory(0.05, **RESTARTS, weight_decay=lam_jax, cautious=True, corrected=True)
  want = expected(
    ref,
    alpha=0.05,
    lam=lam_np,
    eta=lambda s: reference.sgdr(s, **RESTARTS_NP),
    cautious=True,
    peak=1.5,
  )
  assert_close(run(tx), want)


def test_corrected_reads_peak_of_cosine_warm_restarts_and_with_peak():
  """The peak is found on cosine_warm_restarts (max_value) and on with_peak."""
  eta = odx.cosine_warm_restarts(**RESTARTS)
  marked = odx.with_peak(lambda c: eta(c), 1.5)
  stated = odx.adamw(0.05, schedule_multiplier=eta, corrected=True, schedule_peak=1.5)
  want = run(stated)
  for sched in (eta, marked):
    tx = odx.adamw(0.05, schedule_multiplier=sched, corrected=True)
    jax.tree.map(np.testing.assert_array_equal, run(tx), want)


def test_corrected_without_multiplier_is_plain_decay():
  """No schedule multiplier: η_t = η_max = 1, corrected decay is plain decay."""
  plain = run(odx.adamw(0.05, weight_decay=0.05))
  corrected = run(odx.adamw(0.05, weight_decay=0.05, corrected=True))
  jax.tree.map(np.testing.assert_array_equal, corrected, plain)


def test_add_decoupled_weight_decay_cautious_first_step_by_hand():
  """One step of the transform alone, entry by entry: decayed where u θ <= 0."""
  theta = jnp.array([1.0, -2.0, 3.0, -4.0, 0.0, 5.0])
  u = jnp.array([-0.5, -0.5, 0.5, 0.5, 0.3, 0.0])
  tx = odx.add_decoupled_weight_decay(0.1, lambda c: 0.5, cautious=True)
  out, _ = tx.update(u, tx.init(theta), theta)
  #        u θ:  -0.5  +1.0  +1.5  -2.0    0     0
  keep = np.array([True, False, False, True, True, True])
  want = np.asarray(u) - np.where(keep, 0.05 * np.asarray(theta), 0.0)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-7)


def test_cautious_bf16_huge_values_do_not_overflow():
  """bf16 entries whose product overflows (1e30 x 1e30) still gate by sign."""
  theta = jnp.array([1e30, -1e30], jnp.bfloat16)
  u = jnp.array([-1e30, -1e30], jnp.bfloat16)
  tx = odx.add_decoupled_weight_decay(0.5, cautious=True)
  out, _ = tx.update(u, tx.init(theta), theta)
  assert out.dtype == jnp.bfloat16
  want = np.asarray(u, np.float64) - np.array([0.5e30, 0.0])
  np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=1e-2)


def test_variants_keep_the_state_structure():
  """cautious/corrected do not change the state (checkpoints stay valid)."""
  eta = odx.cosine_warm_restarts(10)

  def structure(tx):
    state = tx.init(_f32(PARAMS))
    return jax.tree.structure(state), [
      (x.shape, x.dtype) for x in jax.tree.leaves(state)
    ]

  for make in (odx.adamw, odx.sgdw):
    base = structure(make(0.1, schedule_multiplier=eta))
    for kw in VARIANTS.values():
      assert structure(make(0.1, schedule_multiplier=eta, **kw)) == base, (make, kw)


# --- Bad input.

FLAG_BUILDERS = {
  "add_decoupled_weight_decay": lambda **kw: odx.add_decoupled_weight_decay(1e-3, **kw),
  "with_decoupled_weight_decay": lambda **kw: odx.with_decoupled_weight_decay(
    optax.sgd(0.1), 1e-3, **kw
  ),
  "adamw": lambda **kw: odx.adamw(1e-3, **kw),
  "sgdw": lambda **kw: odx.sgdw(0.1, **kw),
  "adamwr": lambda **kw: odx.adamwr(1e-3, first_cycle_steps=10, **kw),
  "sgdwr": lambda **kw: odx.sgdwr(0.1, first_cycle_steps=10, **kw),
}


@pytest.mark.parametrize("value", ["no", 0, 1, None, 1.0, np.array(True)])
@pytest.mark.parametrize("flag", ["cautious", "corrected"])
@pytest.mark.parametrize("name", list(FLAG_BUILDERS))
def test_non_bool_flag_is_a_type_error_naming_it(name, flag, value):
  """cautious='no', corrected=1, ...: TypeError with ``flag=value``."""
  with pytest.raises(TypeError) as info:
    FLAG_BUILDERS[name](**{flag: value})
  assert f"{flag}={value!r}" in str(info.value), str(info.value)


UNKNOWN_PEAK = [
  optax.cosine_decay_schedule(1.0, 100),
  lambda count: 0.5,
]


@pytest.mark.parametrize("schedule", UNKNOWN_PEAK, ids=["optax_cosine", "lambda"])
@pytest.mark.parametrize("name", ["add_decoupled_weight_decay", "adamw", "sgdw"])
def test_corrected_with_unknown_peak_raises_when_built(name, schedule):
  """corrected=True with a schedule of unknown peak: ValueError naming
  schedule_peak, at build time; stating the peak builds."""
  with pytest.raises(ValueError, match="schedule_peak=") as info:
    FLAG_BUILDERS[name](schedule_multiplier=schedule, corrected=True)
  assert "corrected=True" in str(info.value), str(info.value)
  FLAG_BUILDERS[name](schedule_multiplier=schedule, corrected=True, schedule_peak=1.0)
  FLAG_BUILDERS[name](schedule_multiplier=schedule)  # uncorrected needs no peak


@pytest.mark.parametrize("peak", [0.0, -1.0, float("nan"), float("inf"), "1", True])
def test_bad_schedule_peak_names_it(peak):
  with pytest.raises(ValueError) as info:
    odx.adamw(
      1e-3, schedule_multiplier=lambda c: 1.0, corrected=True, schedule_peak=peak
    )
  assert f"schedule_peak={peak!r}" in str(info.value), str(info.value)


def test_corrected_under_inject_hyperparams_needs_a_stated_peak():
  """inject_hyperparams passes η_t's value (a tracer): the peak is unknown
  then, so corrected=True asks for schedule_peak (a number, injected too)."""
  eta = odx.cosine_warm_restarts(10, max_value=2.0)
  p = _f32(PARAMS)
  bad = optax.inject_hyperparams(odx.adamw)(
    0.1, schedule_multiplier=eta, corrected=True
  )
  with pytest.raises(ValueError, match="schedule_peak="):
    bad.init(p)
  tx = optax.inject_hyperparams(odx.adamw)(
    0.1, weight_decay=0.05, schedule_multiplier=eta, corrected=True, schedule_peak=2.0
  )
  direct = odx.adamw(0.1, weight_decay=0.05, schedule_multiplier=eta, corrected=True)
  g = _f32({k: v[0] for k, v in GRADS.items()})
  u1, _ = jax.jit(tx.update)(g, tx.init(p), p)
  u2, _ = direct.update(g, direct.init(p), p)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)


def test_with_peak_bad_input():
  """with_peak needs a schedule (TypeError) and a peak > 0 (ValueError)."""
  with pytest.raises(TypeError, match="schedule=0.5"):
    odx.with_peak(0.5, 1.0)
  for peak in (0.0, -1.0, float("nan"), "1"):
    with pytest.raises(ValueError) as info:
      odx.with_peak(lambda c: 1.0, peak)
    assert f"peak={peak!r}" in str(info.value), str(info.value)


def test_cautious_on_complex_leaves_uses_the_real_inner_product():
  """θ = i: an update +i moves it away from zero (not decayed), -i toward
  zero (decayed), and 1 is orthogonal (Re(u conj θ) = 0: decayed)."""
  tx = odx.add_decoupled_weight_decay(0.5, cautious=True)
  theta = jnp.array([1j, 1j, 1j], jnp.complex64)
  u = jnp.array([1j, -1j, 1.0], jnp.complex64)
  out, _ = tx.update(u, tx.init(theta), theta)
  np.testing.assert_allclose(out, [1j, -1j - 0.5j, 1.0 - 0.5j], rtol=1e-6)


def test_corrected_under_inject_hyperparams_matches_over_several_steps():
  """Over steps where η_t < η_max the correction matters: inject_hyperparams
  with schedule_peak follows the direct optimizer, and both differ from the
  uncorrected one."""
  eta = odx.cosine_warm_restarts(10, max_value=2.0)
  p0 = _f32(PARAMS)
  g = _f32({k: v[0] for k, v in GRADS.items()})
  kw = dict(weight_decay=0.05, schedule_multiplier=eta)
  runs = {
    "inject": optax.inject_hyperparams(odx.adamw)(
      0.1, **kw, corrected=True, schedule_peak=2.0
    ),
    "direct": odx.adamw(0.1, **kw, corrected=True),
    "plain": odx.adamw(0.1, **kw),
  }
  finals = {}
  for name, tx in runs.items():
    p, state = p0, tx.init(p0)
    for _ in range(6):
      u, state = tx.update(g, state, p)
      p = optax.apply_updates(p, u)
    finals[name] = p
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
    finals["inject"],
    finals["direct"],
  )
  differs = jax.tree.map(
    lambda a, b: not np.allclose(a, b, rtol=1e-4), finals["direct"], finals["plain"]
  )
  assert any(jax.tree.leaves(differs)), finals
