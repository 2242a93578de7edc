"""The ready optimizers against independent references.

References: ``tests/reference.py`` (the paper's Algorithms 1 and 2 and SGDR in
NumPy float64), optax's own transformations chained by hand, and
``torch.optim`` (float64). The library runs in float32.

Tolerances: against float64 the trajectories (every step of a 50-step run)
agree to ``RTOL_64 = 2e-5`` relative, ``ATOL_64 = 2e-6`` absolute (measured
max abs error 3e-7 to 5e-7). Against optax's float32 Adam the tolerance is
``RTOL_OPTAX = 1e-4``, ``ATOL_OPTAX = 1e-5``: optax's own float32 Adam/NAdam
drifts about ten times further from float64 than ours (max abs error 3e-6 to
4e-6 over 30-50 steps, measured), so the gap is optax's rounding. Other
float32 comparisons use ``RTOL_32 = 1e-5``, ``ATOL_32 = 1e-6``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import optax_decoupled as odx

RTOL_64, ATOL_64 = 2e-5, 2e-6
RTOL_32, ATOL_32 = 1e-5, 1e-6
RTOL_OPTAX, ATOL_OPTAX = 1e-4, 1e-5
STEPS = 50

_rng = np.random.default_rng(0)
#: A matrix, a vector and a scalar leaf.
PARAMS = {
  "w": _rng.normal(size=(3, 4)),
  "b": _rng.normal(size=(4,)),
  "s": np.asarray(_rng.normal()),
}
#: One gradient per step, of different scales per leaf.
GRADS = {
  "w": _rng.normal(size=(STEPS, 3, 4)),
  "b": 0.3 * _rng.normal(size=(STEPS, 4)),
  "s": 2.0 * _rng.normal(size=(STEPS,)),
}
#: A non-trivial ``η_t``: a random positive value per step.
ETA_TABLE = _rng.uniform(0.2, 1.2, size=STEPS)
LAM_TABLE = _rng.uniform(0.5, 1.5, size=STEPS)


def eta_table():
  """``η_t`` from :data:`ETA_TABLE`, for the library and for the reference."""
  table = jnp.asarray(ETA_TABLE, jnp.float32)
  return (lambda count: table[count]), (lambda s: ETA_TABLE[s])


def eta_sgdr():
  """SGDR with restarts at steps 8 and 24 inside the run, a floor and decay."""
  kw = {"first_cycle_steps": 8, "cycle_mult": 2, "min_value": 0.1}
  kw_np = {"t0": 8, "t_mult": 2, "eta_min": 0.1}
  return (
    odx.cosine_warm_restarts(**kw, cycle_decay=0.7),
    lambda s: reference.sgdr(s, **kw_np, decay=0.7),
  )


def scaled_table(table, scale):
  """``scale * table[t]`` as a jnp schedule and as a Python function."""
  t32 = jnp.asarray(table, jnp.float32)
  return (lambda c: scale * t32[c]), (lambda s: scale * table[s])


def exp_decay(alpha):
  """``α 0.5^(t/10)``: optax's schedule and its closed form."""
  return (
    optax.exponential_decay(alpha, transition_steps=10, decay_rate=0.5),
    lambda s: alpha * 0.5 ** (s / 10),
  )


def f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def run(tx, params, grads, steps=STEPS):
  """Params after every step (leading axis: the step), in one jitted scan.

  ``grads`` is a stacked pytree of per-step gradients, or a function of the
  current params (the gradient of a loss).
  """

  def step(carry, g):
    p, state = carry
    g = grads(p) if callable(grads) else g
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    return (p, state), p

  @jax.jit
  def go(p, xs):
    return jax.lax.scan(step, (p, tx.init(p)), xs, length=steps)[1]

  xs = None if callable(grads) else f32(jax.tree.map(lambda g: g[:steps], grads))
  return go(f32(params), xs)


def stack(history):
  """The reference's list of per-step dicts as a dict of stacked arrays."""
  return {k: np.stack([h[k] for h in history]) for k in history[0]}


def per_step(grads):
  return [{k: v[t] for k, v in grads.items()} for t in range(STEPS)]


def assert_close(actual, expected, rtol=RTOL_64, atol=ATOL_64):
  for k in expected:
    a, e = np.asarray(actual[k], np.float64), np.asarray(expected[k], np.float64)
    np.testing.assert_allclose(
      a, e, rtol=rtol, atol=atol, err_msg=f"leaf {k!r}: max |diff| {abs(a - e).max()}"
    )


# --- Schedules for the parametrized comparisons with the reference.
# name -> (alpha factory, eta factory or None, lam schedule table or None)
SCHEDULES = {
  "eta_table": (False, eta_table, False),
  "eta_sgdr_restarts": (False, eta_sgdr, False),
  "lr_schedule": (True, None, False),
  "lr_eta_and_lambda_schedules": (True, eta_table, True),
}

# name -> (factory, reference function, decoupled, α, λ)
OPTIMIZERS = {
  "adamw": (odx.adamw, reference.adam, True, 0.05, 0.02),
  "adam_l2": (odx.adam_l2, reference.adam, False, 0.05, 0.5),
  "sgdw": (odx.sgdw, reference.sgd, True, 0.05, 0.02),
  "sgd_l2": (odx.sgd_l2, reference.sgd, False, 0.05, 0.5),
}


def build(opt, schedule, **kw):
  """The library optimizer and the reference's arguments for one case."""
  factory, ref, decoupled, alpha, lam = OPTIMIZERS[opt]
  alpha_sched, eta_fn, lam_sched = SCHEDULES[schedule]
  a_jax, a_np = exp_decay(alpha) if alpha_sched else (alpha, alpha)
  l_jax, l_np = scaled_table(LAM_TABLE, lam) if lam_sched else (lam, lam)
  e_jax, e_np = eta_fn() if eta_fn else (None, 1.0)
  tx = factory(a_jax, weight_decay=l_jax, schedule_multiplier=e_jax, **kw)
  ref_kw = dict(alpha=a_np, lam=l_np, eta=e_np, decoupled=decoupled, **kw)
  return tx, ref, ref_kw


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_matches_paper_algorithm(opt, schedule):
  """50 steps of random gradients equal the paper's algorithm in float64."""
  tx, ref, ref_kw = build(opt, schedule)
  expected = stack(ref(PARAMS, per_step(GRADS), **ref_kw))
  assert_close(run(tx, PARAMS, GRADS), expected)


# A real loss, its gradient by hand in NumPy and by jax.grad in JAX.
_A = {k: np.abs(_rng.normal(size=np.shape(v))) + 0.5 for k, v in PARAMS.items()}
_C = {k: _rng.normal(size=np.shape(v)) for k, v in PARAMS.items()}


def loss(p):
  return sum(
    jnp.sum(0.5 * jnp.asarray(_A[k], jnp.float32) * (p[k] - _C[k]) ** 2)
    + 0.3 * jnp.sum(jnp.sin(p[k]))
    for k in p
  )


def loss_grad_np(p):
  return {k: _A[k] * (p[k] - _C[k]) + 0.3 * np.cos(p[k]) for k in p}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_matches_paper_algorithm_on_a_loss(opt):
  """Gradients of a loss at the current params (jax.grad vs by hand) agree."""
  tx, ref, ref_kw = build(opt, "eta_sgdr_restarts")
  expected = stack(ref(PARAMS, [loss_grad_np] * STEPS, **ref_kw))
  assert_close(run(tx, PARAMS, jax.grad(loss)), expected)


@pytest.mark.parametrize("opt", ["sgdw", "sgd_l2"])
def test_sgd_nesterov_matches_paper_algorithm(opt):
  """With nesterov=True the step is β m_t + η_t α g_t (the reference's form)."""
  tx, ref, ref_kw = build(opt, "eta_table", nesterov=True)
  expected = stack(ref(PARAMS, per_step(GRADS), **ref_kw))
  assert_close(run(tx, PARAMS, GRADS), expected)


@pytest.mark.parametrize("opt", ["adamw", "adam_l2"])
def test_adam_nesterov_matches_paper_algorithm(opt):
  """With nesterov=True the first moment is NAdam's (reference's formula)."""
  tx, ref, ref_kw = build(opt, "eta_table", nesterov=True)
  expected = stack(ref(PARAMS, per_step(GRADS), **ref_kw))
  assert_close(run(tx, PARAMS, GRADS), expected)


def test_adamw_nesterov_matches_optax_nadam_chain():
  """adamw(nesterov=True) equals optax's NAdam preconditioner chained by hand.

  The paper's decay order, in optax only: ``-η_t (α u_t + λ θ)``.
  """
  alpha, lam = 0.05, 0.02
  e_jax, _ = eta_table()
  tx = odx.adamw(alpha, weight_decay=lam, schedule_multiplier=e_jax, nesterov=True)
  by_hand = optax.chain(
    optax.scale_by_adam(nesterov=True),
    optax.scale(alpha),
    optax.add_decayed_weights(lam),
    optax.scale_by_schedule(lambda c: -e_jax(c)),
  )
  with jax.numpy_dtype_promotion("standard"):
    expected = run(by_hand, PARAMS, GRADS)
  assert_close(run(tx, PARAMS, GRADS), expected, RTOL_OPTAX, ATOL_OPTAX)


RESTART_KW = {"first_cycle_steps": 5, "cycle_mult": 2, "warmup_steps": 3}


@pytest.mark.parametrize(
  ("restart", "plain", "ref", "lam"),
  [
    (odx.adamwr, odx.adamw, reference.adam, 0.02),
    (odx.sgdwr, odx.sgdw, reference.sgd, 0.02),
  ],
  ids=["adamwr", "sgdwr"],
)
def test_warm_restarts_equal_plain_with_sgdr_multiplier(restart, plain, ref, lam):
  """adamwr/sgdwr == adamw/sgdw with η = cosine_warm_restarts == the reference."""
  sgdr_kw = dict(min_value=0.05, cycle_decay=0.8)
  tx = restart(0.05, **RESTART_KW, **sgdr_kw, weight_decay=lam)
  eta = odx.cosine_warm_restarts(**RESTART_KW, **sgdr_kw)
  actual = run(tx, PARAMS, GRADS)
  assert_close(
    actual,
    run(plain(0.05, weight_decay=lam, schedule_multiplier=eta), PARAMS, GRADS),
    1e-6,
    1e-7,
  )

  def eta_np(s):
    return reference.sgdr(s, 5, 2, eta_min=0.05, decay=0.8, warmup=3)

  expected = stack(ref(PARAMS, per_step(GRADS), 0.05, lam=lam, eta=eta_np))
  assert_close(actual, expected)


@pytest.mark.parametrize(
  ("restart", "ref"), [(odx.adamwr, reference.adam), (odx.sgdwr, reference.sgd)]
)
def test_normalized_weight_decay_per_cycle(restart, ref):
  """normalize_weight_decay=True decays by η_t λ_norm / sqrt(T_i) in cycle i."""
  lam_norm = 0.3
  tx = restart(0.05, **RESTART_KW, weight_decay=lam_norm, normalize_weight_decay=True)

  def lam_np(s):
    return lam_norm / math.sqrt(reference.cycle_length(s, 5, 2, warmup=3))

  def eta_np(s):
    return reference.sgdr(s, 5, 2, warmup=3)

  expected = stack(ref(PARAMS, per_step(GRADS), 0.05, lam=lam_np, eta=eta_np))
  assert_close(run(tx, PARAMS, GRADS), expected)


# --- Parity with optax: constant α, η_t = 1.

OPTAX_STEPS = 30
ALPHA, LAM, BETA = 0.03, 0.1, 0.9


def run_optax(tx, steps=OPTAX_STEPS):
  with jax.numpy_dtype_promotion("standard"):
    return run(tx, PARAMS, GRADS, steps)


@pytest.mark.parametrize(
  ("ours", "theirs"),
  [
    # The documented conversion: λ_paper = α λ_optax.
    (odx.adamw(ALPHA, weight_decay=ALPHA * LAM), optax.adamw(ALPHA, weight_decay=LAM)),
    (
      odx.adam_l2(ALPHA, weight_decay=LAM),
      optax.chain(optax.add_decayed_weights(LAM), optax.adam(ALPHA)),
    ),
    (
      odx.sgd_l2(ALPHA, momentum=BETA, weight_decay=LAM),
      optax.chain(optax.add_decayed_weights(LAM), optax.sgd(ALPHA, BETA)),
    ),
    (
      odx.sgd_l2(ALPHA, momentum=BETA, weight_decay=LAM, nesterov=True),
      optax.chain(
        optax.add_decayed_weights(LAM), optax.sgd(ALPHA, BETA, nesterov=True)
      ),
    ),
    # SGDW: optax's SGD, then subtract λ θ (flip the sign around optax's add).
    (
      odx.sgdw(ALPHA, momentum=BETA, weight_decay=LAM),
      optax.chain(
        optax.sgd(ALPHA, BETA),
        optax.scale(-1.0),
        optax.add_decayed_weights(LAM),
        optax.scale(-1.0),
      ),
    ),
  ],
  ids=["adamw", "adam_l2", "sgd_l2", "sgd_l2_nesterov", "sgdw"],
)
def test_matches_optax(ours, theirs):
  """With constant α and η = 1 the library equals optax's own composition."""
  steps = OPTAX_STEPS
  expected = run_optax(theirs)
  assert_close(run(ours, PARAMS, GRADS, steps), expected, RTOL_OPTAX, ATOL_OPTAX)


def test_default_weight_decay_is_torch_default_for_transformers():
  """DEFAULT_WEIGHT_DECAY at α = 1e-3 equals optax/torch weight_decay = 0.1."""
  expected = run_optax(optax.adamw(1e-3, weight_decay=0.1))
  actual = run(odx.adamw(1e-3), PARAMS, GRADS, OPTAX_STEPS)
  assert_close(actual, expected, RTOL_OPTAX, ATOL_OPTAX)


# --- Parity with PyTorch (float64).


def run_torch(make_opt, steps=OPTAX_STEPS, make_sched=None, grads=GRADS):
  """Runs a torch optimizer on PARAMS with ``grads``; returns stacked params."""
  torch = pytest.importorskip("torch")
  tensors = {
    k: torch.tensor(np.asarray(v, np.float64), requires_grad=True)
    for k, v in PARAMS.items()
  }
  opt = make_opt(torch, list(tensors.values()))
  sched = make_sched(torch, opt) if make_sched else None
  history = []
  for t in range(steps):
    for k, p in tensors.items():
      p.grad = torch.tensor(np.asarray(grads[k][t], np.float64))
    opt.step()
    if sched is not None:
      sched.step()
    history.append({k: p.detach().numpy().copy() for k, p in tensors.items()})
  return stack(history)


def test_torch_adamw():
  """torch AdamW(lr=α, weight_decay=λ) == odx.adamw(α, weight_decay=α λ)."""
  expected = run_torch(
    lambda torch, ps: torch.optim.AdamW(ps, lr=ALPHA, weight_decay=LAM)
  )
  actual = run(odx.adamw(ALPHA, weight_decay=ALPHA * LAM), PARAMS, GRADS, OPTAX_STEPS)
  assert_close(actual, expected)


def test_torch_adam_l2():
  """torch Adam(weight_decay=λ), an L2 term, == odx.adam_l2(α, weight_decay=λ)."""
  expected = run_torch(
    lambda torch, ps: torch.optim.Adam(ps, lr=ALPHA, weight_decay=LAM)
  )
  actual = run(odx.adam_l2(ALPHA, weight_decay=LAM), PARAMS, GRADS, OPTAX_STEPS)
  assert_close(actual, expected)


@pytest.mark.parametrize("nesterov", [False, True])
def test_torch_sgd_l2(nesterov):
  """torch SGD(momentum=β, weight_decay=λ) == odx.sgd_l2 with constant α.

  torch starts its buffer at ``g`` and multiplies by ``lr`` after it; the paper
  puts ``α`` inside (``m_1 = α g``). With constant ``α`` they are the same.
  """
  expected = run_torch(
    lambda torch, ps: torch.optim.SGD(
      ps, lr=ALPHA, momentum=BETA, weight_decay=LAM, nesterov=nesterov
    )
  )
  tx = odx.sgd_l2(ALPHA, momentum=BETA, weight_decay=LAM, nesterov=nesterov)
  assert_close(run(tx, PARAMS, GRADS, OPTAX_STEPS), expected)


def test_torch_adamw_with_warm_restarts():
  """torch AdamW + CosineAnnealingWarmRestarts == odx.adamwr(weight_decay=α λ).

  torch decays by ``lr_t λ_torch θ = α η_t λ_torch θ``, the paper by
  ``η_t λ θ``: with a constant base ``α`` they agree for ``λ = α λ_torch``.
  Restarts at steps 5, 15 inside the 40 steps.
  """
  steps = 40
  expected = run_torch(
    lambda torch, ps: torch.optim.AdamW(ps, lr=ALPHA, weight_decay=LAM),
    steps,
    lambda torch, opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
      opt, T_0=5, T_mult=2
    ),
  )
  tx = odx.adamwr(ALPHA, first_cycle_steps=5, cycle_mult=2, weight_decay=ALPHA * LAM)
  assert_close(run(tx, PARAMS, GRADS, steps), expected)


#: GRADS, ten times smaller from step 20 on: v_t falls, so its running
#: maximum (AMSGrad) is not v_t.
FALLING_GRADS = {
  k: v * np.where(np.arange(STEPS) < 20, 1.0, 0.1).reshape(-1, *[1] * (v.ndim - 1))
  for k, v in GRADS.items()
}


@pytest.mark.parametrize("optimizer", ["adamw", "adamwr", "adam_l2"])
def test_torch_amsgrad_with_warm_restarts(optimizer):
  """``amsgrad=True`` against torch's AdamW / Adam(amsgrad=True) under
  CosineAnnealingWarmRestarts (restarts at steps 5, 15, 35), all 50 steps.
  Without amsgrad the result is far from torch's (so the flag is not ignored)."""
  torch_opt = {
    "adamw": lambda torch, ps: torch.optim.AdamW(
      ps, lr=ALPHA, weight_decay=LAM, amsgrad=True
    ),
    "adamwr": lambda torch, ps: torch.optim.AdamW(
      ps, lr=ALPHA, weight_decay=LAM, amsgrad=True
    ),
    "adam_l2": lambda torch, ps: torch.optim.Adam(
      ps, lr=ALPHA, weight_decay=LAM, amsgrad=True
    ),
  }[optimizer]
  expected = run_torch(
    torch_opt,
    STEPS,
    lambda torch, opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
      opt, T_0=5, T_mult=2
    ),
    grads=FALLING_GRADS,
  )
  eta = odx.cosine_warm_restarts(5, 2)

  def make(amsgrad):
    if optimizer == "adamwr":
      return odx.adamwr(
        ALPHA,
        first_cycle_steps=5,
        cycle_mult=2,
        weight_decay=ALPHA * LAM,
        amsgrad=amsgrad,
      )
    if optimizer == "adamw":
      return odx.adamw(
        ALPHA, weight_decay=ALPHA * LAM, schedule_multiplier=eta, amsgrad=amsgrad
      )
    return odx.adam_l2(
      ALPHA, weight_decay=LAM, schedule_multiplier=eta, amsgrad=amsgrad
    )

  assert_close(run(make(True), PARAMS, FALLING_GRADS, STEPS), expected)
  plain = run(make(False), PARAMS, FALLING_GRADS, STEPS)
  # 100 times the tolerance: ignoring the flag would fail the comparison.
  assert max(np.max(np.abs(plain[k] - expected[k])) for k in plain) > 100 * ATOL_64


def test_amsgrad_state_is_optax_amsgrad_state_in_nu_dtype():
  tx = odx.adamw(1e-3, amsgrad=True, nu_dtype=jnp.bfloat16)
  state = tx.init({"w": jnp.zeros(3)})
  inner = next(
    s
    for s in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, optax.ScaleByAmsgradState)
    )
    if isinstance(s, optax.ScaleByAmsgradState)
  )
  assert inner.nu_max["w"].dtype == jnp.bfloat16
  with pytest.raises(TypeError, match="amsgrad"):
    odx.adamw(1e-3, amsgrad=1)


# --- Decoupling any optax optimizer.

DECOUPLE_STEPS = 20


def hand_decoupled(inner, lam, eta_np, mask):
  """Expected params: the inner optax update, then θ - η_t λ θ_{t-1}, by hand."""
  p = f32(PARAMS)
  state = inner.init(p)
  update = jax.jit(inner.update)
  history = []
  for t in range(DECOUPLE_STEPS):
    g = f32({k: v[t] for k, v in GRADS.items()})
    u, state = update(g, state, p)
    p = {k: p[k] + u[k] - (eta_np(t) * lam * p[k] if mask[k] else 0.0) for k in p}
    history.append(p)
  return stack(history)


INNER = {
  "lion": lambda: optax.lion(1e-2, weight_decay=0.0),
  "adafactor": lambda: optax.adafactor(1e-2, min_dim_size_to_factor=2),
}


@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize(
  "wrap",
  [
    lambda tx, lam, eta, mask: odx.with_decoupled_weight_decay(tx, lam, eta, mask),
    lambda tx, lam, eta, mask: optax.chain(
      tx, odx.add_decoupled_weight_decay(lam, eta, mask)
    ),
  ],
  ids=["with_decoupled_weight_decay", "chain_add_decoupled_weight_decay"],
)
def test_decoupled_inner_optax_optimizer(inner, wrap):
  """Decoupling lion/adafactor: their own update minus η_t λ θ_{t-1} (masked)."""
  lam = 0.05
  mask = {"w": True, "b": False, "s": True}
  e_jax, e_np = eta_table()
  with jax.numpy_dtype_promotion("standard"):
    expected = hand_decoupled(INNER[inner](), lam, e_np, mask)
    actual = run(wrap(INNER[inner](), lam, e_jax, mask), PARAMS, GRADS, DECOUPLE_STEPS)
  assert_close(actual, expected, RTOL_32, ATOL_32)


# --- Building blocks against optax.


@pytest.mark.parametrize("nesterov", [False, True])
def test_scale_by_adam_matches_optax(nesterov):
  """odx.scale_by_adam (float32 state) == optax.scale_by_adam, with eps_root."""
  ours = odx.scale_by_adam(0.8, 0.99, 1e-6, 1e-7, nesterov=nesterov)
  theirs = optax.scale_by_adam(0.8, 0.99, 1e-6, 1e-7, nesterov=nesterov)
  with jax.numpy_dtype_promotion("standard"):
    expected = run(theirs, PARAMS, GRADS, OPTAX_STEPS)
  assert_close(run(ours, PARAMS, GRADS, OPTAX_STEPS), expected, RTOL_OPTAX, ATOL_OPTAX)


def test_scale_by_adam_low_precision_state():
  """bf16 moments are stored in bf16, updates stay float32 and close to float32.

  bf16 keeps 8 bits, so the trajectory differs from full precision by about
  1e-2 of a step; the tolerance is 2e-3 on params moved by α = 0.03 per step.
  """
  tx = optax.chain(
    odx.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
    optax.scale(-ALPHA),
  )
  state = tx.init(f32(PARAMS))
  assert {x.dtype for x in jax.tree.leaves((state[0].mu, state[0].nu))} == {
    jnp.dtype(jnp.bfloat16)
  }, state
  actual = run(tx, PARAMS, GRADS, OPTAX_STEPS)
  assert {x.dtype for x in jax.tree.leaves(actual)} == {jnp.dtype(jnp.float32)}
  expected = stack(reference.adam(PARAMS, per_step(GRADS)[:OPTAX_STEPS], ALPHA))
  assert_close(actual, expected, rtol=0, atol=2e-3)
  assert odx.adamw(ALPHA, mu_dtype=jnp.bfloat16).init(f32(PARAMS))[0].mu[
    "w"
  ].dtype == jnp.dtype(jnp.bfloat16)


def test_scale_by_adam_bf16_gradients_under_strict_promotion():
  """bf16 gradients (strict dtype promotion): bf16 updates and moments.

  Step one of Adam is ``g / (|g| + ε) = sign(g)``, a closed form.
  """
  tx = odx.scale_by_adam()
  g = {k: jnp.asarray(v[0], jnp.bfloat16) for k, v in GRADS.items()}
  updates, state = jax.jit(tx.update)(g, tx.init(g))
  dtypes = {x.dtype for x in jax.tree.leaves((updates, state.mu, state.nu))}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}, dtypes
  expected = {k: np.sign(np.asarray(v, np.float64)) for k, v in g.items()}
  assert_close(updates, expected, rtol=0, atol=1e-2)


@pytest.mark.parametrize(
  "tx", [odx.adamw(0.1), odx.sgdw(0.1)], ids=["scale_by_adam", "trace"]
)
def test_state_placement_follows_params(tx):
  """Buffers are committed (with the param's sharding) only if the param is.

  optax's zeros are uncommitted; a committed buffer next to uncommitted params
  made a jitted step compile twice (its inputs changed after step one).
  """
  free = {"w": jnp.ones((8, 2))}
  buffers = [x for x in jax.tree.leaves(tx.init(free)) if x.ndim]
  assert buffers and not any(x.committed for x in buffers), buffers
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[1])
  pinned = {"w": jax.device_put(jnp.ones((8, 2)), sharding)}
  buffers = [x for x in jax.tree.leaves(tx.init(pinned)) if x.ndim]
  assert all(x.committed and x.sharding == sharding for x in buffers), buffers

  @jax.jit
  def step(p, state):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
    return optax.apply_updates(p, updates), state

  carry = (free, tx.init(free))
  for _ in range(3):
    carry = step(*carry)
  assert step._cache_size() == 1, step._cache_size()


@pytest.mark.parametrize("nesterov", [False, True])
def test_trace_matches_optax_trace(nesterov):
  """odx.trace gives optax.trace's updates and state type."""
  ours, theirs = (
    odx.trace(BETA, nesterov=nesterov),
    optax.trace(BETA, nesterov=nesterov),
  )
  assert isinstance(ours.init(f32(PARAMS)), optax.TraceState)
  expected = run(theirs, PARAMS, GRADS, OPTAX_STEPS)
  assert_close(run(ours, PARAMS, GRADS, OPTAX_STEPS), expected, 0, 0)


# --- Non-finite gradients.


def _nan_grads(step_value):
  g = f32({k: v[0] for k, v in GRADS.items()})
  g["w"] = g["w"].at[0, 0].set(step_value)
  return g


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_propagates(bad):
  """A NaN/inf gradient entry makes that parameter NaN, for good; others are fine.

  adamw does not guard against non-finite gradients (Adam is elementwise): the
  poisoned entry's moments become non-finite, its parameter NaN, and it stays
  NaN on later finite steps. Wrap in ``optax.apply_if_finite`` to skip them.
  """
  tx = odx.adamw(ALPHA, weight_decay=0.01)
  update = jax.jit(tx.update)
  params = f32(PARAMS)
  state = tx.init(params)
  updates, state = update(_nan_grads(bad), state, params)
  params = optax.apply_updates(params, updates)
  w, mu, nu = params["w"], state[0].mu["w"], state[0].nu["w"]
  assert np.isnan(w[0, 0]), w
  assert not np.isfinite(mu[0, 0]) and not np.isfinite(nu[0, 0]), (mu, nu)
  assert np.isfinite(np.delete(np.asarray(w), 0)).all(), w
  assert all(np.isfinite(params[k]).all() for k in ("b", "s")), params
  finite = f32({k: v[1] for k, v in GRADS.items()})
  updates, state = update(finite, state, params)
  assert np.isnan(optax.apply_updates(params, updates)["w"][0, 0])


def test_apply_if_finite_skips_the_step():
  """apply_if_finite(adamw) leaves params and the inner state as they were.

  The finite step after it continues as if the bad step never happened: it
  equals the reference run on the finite gradients alone. Past
  ``max_consecutive_errors`` bad steps in a row, optax applies the step anyway.
  """
  tx = optax.apply_if_finite(odx.adamw(ALPHA, weight_decay=0.01), 3)
  step = jax.jit(tx.update)
  g = per_step(f32(GRADS))
  p0 = f32(PARAMS)
  u, s1 = step(g[0], tx.init(p0), p0)
  p1 = optax.apply_updates(p0, u)
  u, s2 = step(_nan_grads(np.nan), s1, p1)
  p2 = optax.apply_updates(p1, u)
  chex_equal = jax.tree.map(np.array_equal, (p2, s2.inner_state), (p1, s1.inner_state))
  assert all(jax.tree.leaves(chex_equal)), chex_equal
  assert int(s2.notfinite_count) == 1 and int(s2.total_notfinite) == 1, s2
  u, s3 = step(g[2], s2, p2)
  p3 = optax.apply_updates(p2, u)
  expected = stack(reference.adam(PARAMS, [g[0], g[2]], ALPHA, lam=0.01))
  assert_close(jax.tree.map(lambda a, b: jnp.stack([a, b]), p1, p3), expected)

  p, s = p3, s3
  for _ in range(4):  # the 4th consecutive bad step exceeds the limit of 3
    u, s = step(_nan_grads(np.nan), s, p)
    p = optax.apply_updates(p, u)
  assert np.isnan(p["w"][0, 0]), p["w"]
