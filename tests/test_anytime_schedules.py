"""warmup_stable_decay, step_drop and the public cycle API against exact references.

The references are Python transcriptions of the definitions in rational
arithmetic (``Fraction``) or float64, written from the docstrings, not from
the implementation: every phase boundary is an exact step, and values agree
to float32 rounding.
"""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_decoupled as odx

INT32_MAX = 2**31 - 1
SHAPES = {
  "linear": lambda p: 1 - p,
  "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
  "1-sqrt": lambda p: 1 - math.sqrt(p),
}


def _values(schedule, steps):
  return np.asarray(
    jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32)), np.float64
  )


def wsd_reference(
  t,
  total,
  *,
  fraction="0.2",
  steps=None,
  warmup=0,
  shape="1-sqrt",
  checkpoints=(),
  lo=0.0,
  hi=1.0,
):
  """WSD(-S) at step ``t``, from its definition: each checkpoint ``e`` (and the
  end) cools down over the ``d`` steps before it; elsewhere the stable value."""
  if t < warmup:
    return hi * t / warmup
  if t >= total:
    return lo
  for end in (*checkpoints, total):
    d = (
      steps
      if steps is not None
      else math.floor(Fraction(fraction) * end + Fraction(1, 2))
    )
    if end - d <= t < end:
      return lo + (hi - lo) * SHAPES[shape](Fraction(t - (end - d), d))
  return hi


def step_drop_reference(t, total, drop_at, factor):
  drops = sum(t >= math.ceil(Fraction(f) * total) for f in drop_at)
  return float(Fraction(factor) ** drops)


# ------------------------------------------------------ cosine_warm_restarts


def test_decimal_cycle_mult_restarts_on_the_whole_step():
  """10 · 1.1 = 11 steps in decimal (11.000000000000002 in binary): the second
  cycle ends on step 21, where η is the peak again, as the docstring says."""
  eta = odx.cosine_warm_restarts(10, cycle_mult=1.1)
  got = _values(eta, [20, 21, 22])
  want = [
    0.5 * (1 + math.cos(math.pi * 10 / 11)),
    1.0,
    0.5 * (1 + math.cos(math.pi / 12.1)),
  ]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert odx.restart_steps(50, 10, 1.1) == [10, 21, 34, 47]  # 33.1 and 46.41 round up
  assert int(odx.cycle_position(21, 10, 1.1).cycle) == 2
  assert int(odx.cycle_position(20, 10, 1.1).cycle) == 1


def test_fractional_first_cycle_counts_cycles_after_the_first_period():
  """T_0 = 2.5, T_mult = 1: cycles begin at 0, 2.5, 5, 7.5, ..., so step 5 is
  the third cycle's start and its peak is 0.5^2 (rational reference)."""
  eta = odx.cosine_warm_restarts(2.5, 1, cycle_decay=0.5)
  t0 = Fraction(5, 2)
  steps = np.arange(13)
  want = []
  for t in steps:
    i = math.floor(t / t0)
    want.append(0.5**i * 0.5 * (1 + math.cos(math.pi * float(t - i * t0) / 2.5)))
  np.testing.assert_allclose(_values(eta, steps), want, rtol=1e-6, atol=1e-7)
  assert float(eta(5)) == pytest.approx(0.25, abs=1e-7)
  assert odx.restart_steps(13, 2.5) == [3, 5, 8, 10]


# ------------------------------------------------------------- cycle API


@pytest.mark.parametrize(
  "first, mult, warmup", [(4, 2, 0), (10, 1.1, 0), (2.5, 1, 3), (7, 1, 5), (3, 1.5, 2)]
)
def test_restart_steps_are_where_the_cycle_index_changes(first, mult, warmup):
  """restart_steps against a float64 walk of the cycles, and against
  cycle_position's index (jitted, traced count) and η's jumps to the peak."""
  total = 200
  want = [warmup + s for s in _walk(first, mult, total - warmup)[1:]]
  assert odx.restart_steps(total, first, mult, warmup) == want
  steps = np.arange(total)
  position = jax.jit(jax.vmap(lambda t: odx.cycle_position(t, first, mult, warmup)))(
    jnp.asarray(steps, jnp.int32)
  )
  changes = [int(s) for s in np.flatnonzero(np.diff(np.asarray(position.cycle))) + 1]
  assert changes == want
  eta = _values(odx.cosine_warm_restarts(first, mult, warmup_steps=warmup), steps)
  jumps = [int(s) for s in np.flatnonzero(np.diff(eta) > 0) + 1 if s > warmup]
  assert jumps == want


def _walk(first, mult, upto):
  """Cycle starts as steps, walked in exact decimal arithmetic."""
  starts, start, length = [], Fraction(0), Fraction(str(first))
  while start < upto:
    starts.append(math.ceil(start))
    start, length = start + length, length * Fraction(str(mult))
  return starts


def test_cycle_position_reports_the_cycle_and_its_length():
  position = odx.cycle_position(jnp.int32(9), 4, 2, warmup_steps=2)
  # Steps 2-5 are cycle 0 (4 steps), 6-13 cycle 1 (8 steps): step 9 is 3 in.
  assert (int(position.cycle), float(position.steps_into_cycle)) == (1, 3.0)
  assert float(position.cycle_steps) == 8.0
  warm = odx.cycle_position(1, 4, 2, warmup_steps=2)
  assert (int(warm.cycle), float(warm.steps_into_cycle)) == (0, 0.0)


def test_restart_steps_near_int32_end():
  steps = odx.restart_steps(INT32_MAX, 2**30 - 1, 1)
  assert steps == [2**30 - 1, 2**31 - 2]
  assert odx.restart_steps(2**31 - 2, 2**30 - 1, 1) == [2**30 - 1]


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"total_steps": -1}, "total_steps"),
    ({"total_steps": 1.5}, "total_steps"),
    ({"first_cycle_steps": 0}, "first_cycle_steps"),
    ({"cycle_mult": 0.5}, "cycle_mult"),
    ({"first_cycle_steps": lambda t: t}, "first_cycle_steps"),
    ({"total_steps": INT32_MAX, "first_cycle_steps": 1}, "use cycle_position"),
    ({"total_steps": INT32_MAX, "first_cycle_steps": 1.5}, "use cycle_position"),
  ],
)
def test_restart_steps_refuses_bad_input(kwargs, match):
  args = {"total_steps": 10, "first_cycle_steps": 2, **kwargs}
  with pytest.raises(ValueError, match=match):
    odx.restart_steps(**args)


# ------------------------------------------------------ warmup_stable_decay


WSD_CASES = [
  dict(total=50),
  dict(total=50, shape="linear", warmup=7),
  dict(total=50, shape="cosine", fraction="0.3"),
  dict(total=37, fraction="0.5", shape="linear"),  # 18.5 rounds to 19
  dict(total=60, steps=6, checkpoints=(20, 40), warmup=4),
  dict(total=100, checkpoints=(30, 60, 80), shape="cosine", warmup=5),
  dict(total=40, fraction="0", warmup=3),  # constant after warmup
  dict(total=40, fraction="1", shape="linear"),  # linear decay to zero
]


@pytest.mark.parametrize("case", WSD_CASES, ids=lambda c: str(sorted(c.items())))
def test_wsd_equals_its_definition_at_every_step(case):
  case = dict(case)
  total, fraction = case.pop("total"), case.pop("fraction", "0.2")
  kwargs = {
    "warmup_steps": case.get("warmup", 0),
    "shape": case.get("shape", "1-sqrt"),
    "checkpoints": case.get("checkpoints", ()),
    "min_value": 0.1,
    "max_value": 2.0,
  }
  if "steps" in case:
    kwargs["decay_steps"] = case["steps"]
  else:
    kwargs["decay_fraction"] = float(fraction)
  eta = odx.warmup_stable_decay(total, **kwargs)
  steps = np.arange(total + 3)
  want = [
    float(
      wsd_reference(
        t,
        total,
        fraction=fraction,
        steps=case.get("steps"),
        warmup=kwargs["warmup_steps"],
        shape=kwargs["shape"],
        checkpoints=kwargs["checkpoints"],
        lo=0.1,
        hi=2.0,
      )
    )
    for t in steps
  ]
  np.testing.assert_allclose(_values(eta, steps), want, rtol=1e-6, atol=1e-6)
  assert eta.schedule_peak == 2.0


def test_wsd_boundaries_near_int32_end():
  """A run of 2^31 - 1 steps: the cool-down starts on the exact step
  (0.2 · (2^31 - 1) = 429,496,729.4 rounds to 429,496,729). With 1-sqrt,
  one step into it is 1 - sqrt(1/d) = 0.99995, distinct in float32."""
  total = INT32_MAX
  eta = odx.warmup_stable_decay(total)
  start = total - 429_496_729
  steps = [start - 1, start, start + 1, total - 1, total - 2]
  want = [wsd_reference(t, total) for t in steps]
  np.testing.assert_allclose(_values(eta, steps), want, rtol=1e-6, atol=1e-8)
  assert float(eta(start)) == 1.0 and float(eta(start + 1)) < 1.0
  assert float(eta(jnp.int64(2**40) if jax.config.jax_enable_x64 else INT32_MAX)) == 0.0


def test_wsd_checkpoint_snapshots_are_cooled_down():
  """WSD-S: η just before each checkpoint is near the floor, and the step at
  the checkpoint is back at the stable value."""
  eta = odx.warmup_stable_decay(300, checkpoints=(100, 200), shape="linear")
  got = _values(eta, [99, 100, 199, 200, 299])
  np.testing.assert_allclose(got, [1 / 20, 1.0, 1 / 40, 1.0, 1 / 60], rtol=1e-6)


def test_wsd_drives_corrected_decay_with_its_peak():
  """With zero gradients AdamW's step is -η_t (λ η_t / η_max) θ when corrected:
  a closed form at a cool-down step of a WSD schedule with peak 2."""
  eta = odx.warmup_stable_decay(10, decay_fraction=0.5, shape="linear", max_value=2.0)
  tx = odx.adamw(1e-3, weight_decay=0.1, schedule_multiplier=eta, corrected=True)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(7):  # the 7th update is count 6, 1 step into the 5-step
    updates, state = tx.update({"w": jnp.zeros(3)}, state, params)  # cool-down
  eta_6 = 2.0 * 4 / 5
  np.testing.assert_allclose(updates["w"], -eta_6 * 0.1 * eta_6 / 2.0, rtol=1e-6)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"decay_steps": 11}, "cool-down before step 10"),
    ({"decay_steps": 8, "warmup_steps": 3}, "since the warmup"),
    (
      {"decay_fraction": 0.5, "checkpoints": (4,), "warmup_steps": 3},
      "since the warmup",
    ),
    ({"decay_fraction": 0.9, "checkpoints": (5,)}, "since checkpoint 5"),
    ({"decay_fraction": -0.1}, "decay_fraction"),
    ({"decay_fraction": 1.5}, "decay_fraction"),
    ({"decay_fraction": 0.1, "decay_steps": 2}, "not both"),
    ({"shape": "exp"}, "shape='exp'"),
    ({"checkpoints": (5, 3)}, "checkpoints"),
    ({"checkpoints": (10,)}, "checkpoints"),
    ({"checkpoints": (0,)}, "checkpoints"),
    ({"checkpoints": 5}, "checkpoints"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"min_value": 2.0}, "min_value"),
    ({"decay_steps": 1.5}, "decay_steps"),
    ({"warmup_steps": 15, "decay_fraction": 0.0}, "warmup_steps=15 must be at most"),
    ({"checkpoints": (2,)}, "rounds to a cool-down of 0 steps before step 2"),
  ],
)
def test_wsd_refuses_bad_input_when_built(kwargs, match):
  with pytest.raises(ValueError, match=match):
    odx.warmup_stable_decay(10, **kwargs)


@pytest.mark.parametrize("total", [0, -5, 2.5, 2**31, "10"])
def test_wsd_refuses_bad_total_steps(total):
  with pytest.raises(ValueError, match="total_steps"):
    odx.warmup_stable_decay(total)


def test_wsd_refuses_a_traced_total_with_the_reason():
  with pytest.raises(TypeError, match="known when the schedule is built"):
    jax.jit(lambda n: odx.warmup_stable_decay(n)(0))(10)


# ---------------------------------------------------------------- step_drop


@pytest.mark.parametrize(
  "total, drop_at, factor",
  [
    (8, ("0.5", "0.75"), "0.1"),
    (300, ("0.5", "0.75"), "0.2"),
    (10, ("0.3",), "0.5"),
    (7, ("0.1", "0.2", "0.8"), "1"),
  ],
)
def test_step_drop_equals_its_definition_at_every_step(total, drop_at, factor):
  eta = odx.step_drop(total, drop_at=[float(f) for f in drop_at], factor=float(factor))
  steps = np.arange(total + 2)
  want = [step_drop_reference(t, total, drop_at, factor) for t in steps]
  np.testing.assert_allclose(_values(eta, steps), want, rtol=1e-6)


def test_step_drop_at_a_decimal_fraction_drops_on_the_whole_step():
  """0.3 · 10 is 3.0000000000000004 in binary: the drop is at step 3."""
  eta = odx.step_drop(10, drop_at=(0.3,), factor=0.5)
  assert _values(eta, [2, 3]).tolist() == [1.0, 0.5]


def test_numpy_fractions_are_read_as_written():
  """np.float32(0.3) is 0.300000011920929 exactly, but written 0.3: step 3."""
  eta = odx.step_drop(10, drop_at=(np.float32(0.3),), factor=0.5)
  assert _values(eta, [2, 3]).tolist() == [1.0, 0.5]
  # 0.45 of 10 steps is 4.5, rounded up to a 5-step cool-down from step 5
  # (np.float32(0.45) is 0.4499999881: read as that, 4 steps from step 6).
  wsd = odx.warmup_stable_decay(10, decay_fraction=np.float32(0.45), shape="linear")
  np.testing.assert_allclose(_values(wsd, [4, 5, 6]), [1.0, 1.0, 0.8], rtol=1e-6)


def test_step_drop_near_int32_end():
  eta = odx.step_drop(INT32_MAX, drop_at=(0.5,), factor=0.1)
  drop = 2**30  # ceil((2^31 - 1) / 2)
  np.testing.assert_allclose(
    _values(eta, [drop - 1, drop, INT32_MAX]), [1, 0.1, 0.1], rtol=1e-7
  )


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"drop_at": ()}, "drop_at"),
    ({"drop_at": (0.0,)}, "drop_at"),
    ({"drop_at": (1.0,)}, "drop_at"),
    ({"drop_at": (0.75, 0.5)}, "drop_at"),
    ({"drop_at": (0.3, 0.4)}, "on steps \\[2, 2\\]"),
    ({"drop_at": 0.5}, "drop_at"),
    ({"drop_at": (0.5, 0.95)}, "inside the run"),
    ({"factor": 0.0}, "factor"),
    ({"factor": 1.5}, "factor"),
    ({"max_value": -1.0}, "max_value"),
  ],
)
def test_step_drop_refuses_bad_input_when_built(kwargs, match):
  with pytest.raises(ValueError, match=match):
    odx.step_drop(4, **kwargs)
