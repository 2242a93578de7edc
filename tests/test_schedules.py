"""cosine_warm_restarts and normalized weight decay against independent references.

The references are ``reference.sgdr`` / ``reference.cycle_length`` (NumPy
float64, walking the cycles one by one), PyTorch's
``CosineAnnealingWarmRestarts``, cycle boundaries computed with Python integers
and the paper's closed form for ``λ``. Values are float32 of order 1: the
tolerance is ``ATOL = 1e-6`` absolute (a few float32 ulps) unless a test says
otherwise.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st

import optax_decoupled as odx

ATOL = 1e-6
INT32_MAX = 2**31 - 1


def sgdr_ref(steps, t0, t_mult=1, eta_min=0.0, eta_max=1.0, decay=1.0, warmup=0):
  return np.array(
    [reference.sgdr(int(t), t0, t_mult, eta_min, eta_max, decay, warmup) for t in steps]
  )


def cycle_starts(t0, t_mult, stop):
  """Real-valued cycle starts below ``stop`` and their lengths (Python floats/ints)."""
  starts, start, length = [], 0, t0
  while start < stop:
    starts.append((start, length))
    start, length = start + length, length * t_mult
  return starts


def assert_close(got, want, atol=ATOL, msg=""):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  err = np.abs(got - want)
  worst = int(np.argmax(err))
  if err[worst] > atol:
    pytest.fail(
      f"{msg}: max |err| {err[worst]:.3g} > {atol:g} at index {worst}: "
      f"got {got.flat[worst]!r}, want {want.flat[worst]!r}"
    )


# (first_cycle_steps, cycle_mult, min_value, max_value, cycle_decay, warmup_steps)
CASES = [
  (10, 1, 0.0, 1.0, 1.0, 0),
  (1, 1, 0.0, 1.0, 1.0, 0),
  (1, 2, 0.0, 1.0, 1.0, 0),
  (5, 3, 0.05, 1.0, 0.5, 3),
  (10, 2, 0.1, 2.0, 0.8, 25),
  (4, 1.5, 0.0, 1.0, 1.0, 0),
  (10, 1.5, 0.1, 2.0, 0.8, 5),
  (3, 2.5, 0.0, 1.0, 1.0, 0),
  (2, 1.25, 0.0, 3e-4, 0.9, 10),
  (29, 1.3, 0.0, 1.0, 1.0, 0),
  (15, 1.1, 0.01, 1.0, 1.0, 0),
  (2.5, 1, 0.0, 1.0, 1.0, 0),
  (3.5, 2, 0.0, 1.0, 0.7, 2),
  (1, 1.5, 0.5, 0.5, 1.0, 4),
]


@functools.partial(jax.jit, static_argnames=("first", "mult", "warmup"))
def eta_jit(counts, lo, hi, decay, *, first, mult, warmup):
  """One jitted schedule for many cases: count and values traced, the cycle
  layout static (so the exact path is taken and compiled once per layout)."""
  return odx.cosine_warm_restarts(first, mult, lo, hi, decay, warmup)(counts)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_cosine_warm_restarts_matches_reference_jit_and_no_jit(case):
  """η_t equals reference.sgdr (float64) for 600 steps, eagerly (an array of
  counts at once) and under jit."""
  first, mult, lo, hi, decay, warmup = case
  steps = np.arange(600)
  want = sgdr_ref(steps, first, mult, lo, hi, decay, warmup) / hi
  counts = jnp.asarray(steps, jnp.int32)
  eager = odx.cosine_warm_restarts(first, mult, lo, hi, decay, warmup)(counts)
  assert_close(eager / hi, want, msg=f"no jit {case}")
  args = [jnp.float32(x) for x in (lo, hi, decay)]
  jitted = eta_jit(counts, *args, first=first, mult=mult, warmup=warmup)
  assert_close(jitted / hi, want, msg=f"jit {case}")


def test_scalar_counts_match_reference():
  """The schedule as optax calls it, one scalar int32 count at a time, under jit."""
  schedule = jax.jit(odx.cosine_warm_restarts(4, 1.5, 0.1, 1.0, 0.9, 2))
  got = [float(schedule(jnp.int32(t))) for t in range(40)]
  assert_close(got, sgdr_ref(range(40), 4, 1.5, 0.1, 1.0, 0.9, 2), msg="scalar")


@pytest.mark.parametrize(
  "t0, t_mult", [(29, 1.3), (15, 1.1), (35, 1.1), (4, 1.5), (6, 1.75), (24, 1.1)]
)
def test_fractional_cycle_mult_restarts_exactly_at_integer_starts(t0, t_mult):
  """Fractional T_mult: a cycle whose real start is an integer step restarts there.

  Cycle 1 always starts at step ``t0``; float32 rounding of ``t0 (T_mult - 1) /
  (T_mult - 1)`` once put it just above, delaying the restart by one step.
  """
  starts = [s for s, _ in cycle_starts(t0, t_mult, 5000)[1:] if float(s).is_integer()]
  got = np.asarray(odx.cosine_warm_restarts(t0, t_mult)(jnp.arange(5000)))
  late = [(s, float(got[int(s)])) for s in starts if got[int(s)] != 1.0]
  assert not late, f"{t0=} {t_mult=}: (start, η) not at the peak 1.0: {late}"


@pytest.mark.parametrize(
  "t0, t_mult, eta_min", [(10, 1, 0.0), (7, 2, 0.01), (1, 2, 0.0), (3, 3, 0.1)]
)
def test_matches_torch_cosine_annealing_warm_restarts(t0, t_mult, eta_min):
  """Per step, η_t * 1 equals torch's lr with base lr = max_value (300 steps)."""
  torch = pytest.importorskip("torch")
  max_value = 0.5
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=max_value)
  sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
    opt, T_0=t0, T_mult=t_mult, eta_min=eta_min
  )
  want = []
  for _ in range(300):
    want.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
  schedule = odx.cosine_warm_restarts(t0, t_mult, eta_min, max_value)
  got = schedule(jnp.arange(300, dtype=jnp.int32))
  assert_close(got, want, msg=f"torch {t0=} {t_mult=} {eta_min=}")


# --- Properties (hypothesis). One jitted function, traced count and values;
# only the cycle layout is static, drawn from a few values, so few compiles.

N_STEPS = 256


# (first_cycle_steps, cycle_mult, warmup_steps): a few layouts, one compile each.
LAYOUTS = [(1, 1.5, 0), (3, 2, 4), (8, 1, 0), (2, 3, 0), (5, 1.25, 4), (1, 1, 2)]
schedules = st.builds(
  lambda layout, lo, span, decay: dict(
    first=layout[0], mult=layout[1], warmup=layout[2], lo=lo, span=span, decay=decay
  ),
  st.sampled_from(LAYOUTS),
  st.floats(0.0, 1.0),
  st.floats(0.01, 2.0),
  st.floats(0.3, 1.0),
)
PROPERTY_SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)


def evaluate(p, jit=True):
  lo, hi = p["lo"], p["lo"] + p["span"]
  counts = jnp.arange(N_STEPS, dtype=jnp.int32)
  if jit:
    values = eta_jit(
      counts,
      jnp.float32(lo),
      jnp.float32(hi),
      jnp.float32(p["decay"]),
      first=p["first"],
      mult=p["mult"],
      warmup=p["warmup"],
    )
  else:
    schedule = odx.cosine_warm_restarts(
      p["first"], p["mult"], lo, hi, p["decay"], p["warmup"]
    )
    values = schedule(counts)
  return np.asarray(values, np.float64), lo, hi


def cycles_of(p):
  """(integer start step, cycle index, real start) of each cycle, after warmup."""
  out = []
  for i, (start, _) in enumerate(cycle_starts(p["first"], p["mult"], N_STEPS)):
    step = p["warmup"] + math.ceil(start)
    if step < N_STEPS:
      out.append((step, i, start))
  return out


@PROPERTY_SETTINGS
@given(schedules)
def test_property_bounds(p):
  """min_value <= η_t <= max_value after warmup, 0 <= η_t <= max_value during it."""
  values, lo, hi = evaluate(p)
  tol = 1e-6 * hi
  after = values[p["warmup"] :]
  assert after.min() >= np.float32(lo) - tol, f"{p}: min {after.min()} < {lo}"
  assert values.max() <= np.float32(hi) + tol, f"{p}: max {values.max()} > {hi}"
  assert values.min() >= 0.0, f"{p}: negative {values.min()}"


@PROPERTY_SETTINGS
@given(schedules)
def test_property_restarts_at_cycle_starts(p):
  """A cycle whose start is an integer step has its peak there; at every
  cycle's first step η jumps up when the previous cycle has >= 2 steps and the
  peak does not decay."""
  values, lo, hi = evaluate(p)
  cycles = cycles_of(p)
  for step, i, start in cycles:
    peak = max(hi * p["decay"] ** i, lo)
    if float(start).is_integer():
      assert abs(values[step] - peak) <= 1e-6 * hi, (
        f"{p}: η({step})={values[step]}, peak {peak}"
      )
  for (prev_step, _, _), (step, _, _) in zip(cycles, cycles[1:], strict=False):
    if p["decay"] == 1.0 and step - prev_step >= 2 and hi - lo > 1e-3:
      assert values[step - 1] < values[step], (
        f"{p}: η({step - 1})={values[step - 1]} !< η({step})={values[step]}"
      )


@PROPERTY_SETTINGS
@given(schedules)
def test_property_jit_equals_no_jit(p):
  """The jitted schedule (traced count and values) equals the eager one."""
  jitted, _, hi = evaluate(p, jit=True)
  eager, _, _ = evaluate(p, jit=False)
  assert_close(jitted, eager, atol=1e-6 * hi, msg=f"{p}")


@PROPERTY_SETTINGS
@given(schedules)
def test_property_non_increasing_within_a_cycle(p):
  """Inside one cycle η never goes up; during warmup it never goes down."""
  values, _, hi = evaluate(p)
  bounds = [s for s, _, _ in cycles_of(p)] + [N_STEPS]
  for start, end in zip(bounds, bounds[1:], strict=False):
    steps = np.diff(values[start:end])
    assert (steps <= 0).all(), f"{p}: rises in [{start}, {end}): {steps.max()}"
  assert (np.diff(values[: p["warmup"] + 1]) >= 0).all(), f"{p}: warmup falls"


# --- Exactness at huge counts (integer cycles, Python-integer boundaries).


def python_sgdr(step, first, mult):
  """SGDR at an int ``step`` with integer cycles, by integer arithmetic."""
  if mult == 1:
    i, t_cur = divmod(step, first)
    return 0.5 * (1 + math.cos(math.pi * t_cur / first))
  start, length = 0, first
  while step >= start + length:
    start, length = start + length, length * mult
  return 0.5 * (1 + math.cos(math.pi * (step - start) / length))


def boundaries(first, mult):
  """The restart steps just at or below 2^30 and 2^31 - 1."""
  found = []
  for limit in (2**30, INT32_MAX):
    if mult == 1:
      found.append(limit // first * first)
    else:
      found.append(max(s for s, _ in cycle_starts(first, mult, limit + 1)))
  return found


@pytest.mark.parametrize("first", [1, 7])
@pytest.mark.parametrize("mult", [1, 2, 3])
def test_restarts_exact_near_int32_max(first, mult):
  """At restart steps near 2^30 and 2^31-1, η is the peak; the step before is the
  previous cycle's last step (near the minimum unless cycles have one step)."""
  schedule = jax.jit(odx.cosine_warm_restarts(first, mult))
  for b in boundaries(first, mult):
    steps = [s for s in (b - 1, b, b + 1) if s <= INT32_MAX]
    got = np.asarray(schedule(jnp.asarray(steps, jnp.int32)))
    want = [python_sgdr(s, first, mult) for s in steps]
    assert_close(got, want, msg=f"{first=} {mult=} steps {steps}")
    assert got[1] == 1.0, f"η({b}) = {got[1]}, want the peak ({first=} {mult=})"
    if not (first == 1 and mult == 1):  # else every step starts a cycle
      assert got[0] < got[1], f"η({b - 1}) = {got[0]} !< η({b}) = {got[1]}"
    if mult > 1:  # the previous cycle is long: its last step is at the floor
      assert got[0] <= ATOL, f"η({b - 1}) = {got[0]}, want ~0"


def test_step_int32_max_with_first_cycle_1000():
  """T_0 = 1000 at step 2^31-1 = 2147483 * 1000 + 647, eagerly and under jit."""
  want = 0.5 * (1 + math.cos(math.pi * 647 / 1000))
  schedule = odx.cosine_warm_restarts(1000)
  for fn in (schedule, jax.jit(schedule)):
    got = float(fn(jnp.int32(INT32_MAX)))
    assert abs(got - want) <= ATOL, f"η(2^31-1) = {got}, want {want}"


# --- Traced cycle arguments (what inject_hyperparams does without static_args).


@jax.jit
def eta_traced(counts, first, mult, warmup):
  return odx.cosine_warm_restarts(first, mult, 0.0, 1.0, 1.0, warmup)(counts)


@pytest.mark.parametrize(
  "first, mult, warmup", [(10, 1, 0), (7, 2, 3), (3, 3, 0), (4, 1.5, 5), (29, 1.3, 0)]
)
def test_traced_cycle_arguments_match_reference(first, mult, warmup):
  """Traced first_cycle_steps / cycle_mult / warmup_steps: same values (600 steps)."""
  steps = np.arange(600)
  mult_arg = jnp.int32(mult) if isinstance(mult, int) else jnp.float32(mult)
  got = eta_traced(
    jnp.asarray(steps, jnp.int32), jnp.int32(first), mult_arg, jnp.int32(warmup)
  )
  assert_close(
    got, sgdr_ref(steps, first, mult, warmup=warmup), atol=1e-5, msg="traced"
  )


@pytest.mark.parametrize("first, mult", [(1, 2), (5, 4), (7, 3), (3, 1), (17, 4)])
def test_traced_integer_restarts_exact_up_to_2_pow_22(first, mult):
  """Traced integer cycles restart at the right step for every start below 2^22."""
  starts = [s for s, _ in cycle_starts(first, mult, 2**22)][1:]
  if len(starts) > 500:
    starts = starts[:: len(starts) // 500]
  counts = jnp.asarray(starts, jnp.int32)
  got = np.asarray(eta_traced(counts, jnp.int32(first), jnp.int32(mult), jnp.int32(0)))
  late = [s for s, v in zip(starts, got, strict=True) if v != 1.0]
  assert not late, f"{first=} {mult=}: not at the peak at restart steps {late[:5]}"


# --- Normalized weight decay.


@pytest.mark.parametrize(
  "lam, b, big_b, t",
  [
    (0.05, 128, 50_000, 100),
    (0.025, 1, 1, 1),
    (1.0, 64, 60_000, 0.5),
    (0.0, 32, 100, 3),
  ],
)
def test_normalized_weight_decay_closed_form(lam, b, big_b, t):
  """λ = λ_norm sqrt(b / (B T)), Appendix B.1 of the paper."""
  got = odx.normalized_weight_decay(lam, batch_size=b, num_examples=big_b, num_epochs=t)
  want = lam * math.sqrt(b / (big_b * t))
  assert math.isclose(float(got), want, rel_tol=1e-12, abs_tol=0.0), f"{got} != {want}"


@pytest.mark.parametrize(
  "first, mult, warmup", [(10, 1, 0), (10, 2, 0), (4, 3, 7), (6, 1.5, 3), (2.5, 2, 0)]
)
def test_restart_normalized_weight_decay_per_cycle(first, mult, warmup):
  """λ_t = λ_norm / sqrt(T_i), T_i the length of step t's cycle (the first during
  warmup), over several restarts."""
  lam = 0.05
  steps = np.arange(400)
  schedule = odx.restart_normalized_weight_decay(
    lam, first_cycle_steps=first, cycle_mult=mult, warmup_steps=warmup
  )
  want = [
    lam / math.sqrt(reference.cycle_length(int(t), first, mult, warmup)) for t in steps
  ]
  counts = jnp.asarray(steps, jnp.int32)
  for fn in (schedule, jax.jit(schedule)):
    got = np.asarray(fn(counts), np.float64)
    np.testing.assert_allclose(
      got, want, rtol=1e-6, err_msg=f"{first=} {mult=} {warmup=}"
    )
