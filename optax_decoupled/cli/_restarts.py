"""What the schedule multiplier ``η_t`` buys: warm restarts against the rest.

Every arm of the study is a :class:`_train.Recipe` (one cosine, warm restarts
with ``T_mult`` 2 and 1, restarts with the paper's per-restart normalized
decay, step-drop, WSD, WSD-S, a constant). A whole run is a pure function of
its arrays: ``η_t`` and ``λ_t`` enter as per-step tables (the recipe's own
schedules, evaluated once), so runs with different schedules, lengths,
hyperparameters and seeds share one compiled, vmapped program. During the run
the test error is recorded at fixed steps (the anytime curve) together with
the parameters there, from which the snapshot ensembles and weight averages
are built afterwards.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_decoupled as odx
from optax_decoupled.cli import _models, _sweep, _train
from optax_decoupled.cli._clock import describe_time
from optax_decoupled.cli._data import Split
from optax_decoupled.sweep import _engine

#: The arms, in the order they are reported, and how each is labelled.
ARMS = {
  "cosine": "one cosine",
  "restarts-x2": "restarts, T_mult=2",
  "restarts-x1": "restarts, T_mult=1",
  "restarts-x2-norm": "restarts, T_mult=2, normalized λ",
  "step-drop": "step-drop ×0.1 at 50%, 75%",
  "wsd": "WSD (20% 1-sqrt cool-down)",
  "wsd-s": "WSD-S (cool-downs at T_mult=1's restarts)",
  "constant": "constant η",
}
#: ``(decoupled optimizer, its restarting version)`` of each family.
FAMILIES = {"adam": ("adamw", "adamwr"), "sgd": ("sgdw", "sgdwr")}


def cycles(steps: int) -> dict[str, tuple[int, int]]:
  """``(first_cycle_steps, cycle_mult)`` of the restart arms: 4 cycles of
  T_mult=2 (1 + 2 + 4 + 8 = 15 units) and 5 of T_mult=1 fill the run."""
  return {"x2": (max(1, steps // 15), 2), "x1": (max(1, steps // 5), 1)}


def recipe(
  family: str,
  arm: str,
  *,
  learning_rate: float,
  weight_decay: float,
  steps: int,
  batch_size: int,
  num_examples: int,
  mask: Any = None,
  compensation: str | None = "auto",
) -> _train.Recipe:
  """The arm as a :class:`_train.Recipe` (``train`` runs exactly this).

  For the normalized arm ``weight_decay`` is the λ of a cycle as long as the
  run: ``λ_norm = λ sqrt(steps)``, so cycle ``i`` gets ``λ sqrt(steps / T_i)``.
  """
  plain, restarting = FAMILIES[family]
  common = dict(
    learning_rate=learning_rate,
    weight_decay=weight_decay,
    steps=steps,
    batch_size=batch_size,
    num_examples=num_examples,
    mask=mask,
    compensation=compensation,
  )
  plan = cycles(steps)
  if arm.startswith("restarts"):
    first, mult = plan["x1" if arm == "restarts-x1" else "x2"]
    normalized = arm.endswith("-norm")
    if normalized:
      common["weight_decay"] = weight_decay * float(np.sqrt(steps))
    return _train.Recipe(
      restarting,
      **common,  # pyright: ignore[reportArgumentType]
      normalized=normalized,
      first_cycle_steps=first,
      cycle_mult=mult,
    )
  if arm == "wsd-s":
    first, _ = plan["x1"]
    checkpoints = tuple(odx.restart_steps(steps, first, 1))
    return _train.Recipe(plain, **common, schedule="wsd", checkpoints=checkpoints)  # pyright: ignore[reportArgumentType]
  return _train.Recipe(plain, **common, schedule=arm)  # pyright: ignore[reportArgumentType]


def tables(recipe_: _train.Recipe, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """``η_t`` and ``λ_t`` at steps ``0 .. steps-1`` (float32). A recipe shorter
  than ``steps`` has ``η_t = 0`` after its end; it is read at its end (an
  evaluation step). After it AdamW's parameters stay put, while SGDW's
  momentum, which holds ``η_t α g_t`` in the paper's form, still moves them."""
  t = np.arange(recipe_.steps)
  lam = recipe_.lam()
  eta = np.zeros(steps, np.float32)
  eta[: recipe_.steps] = _train.schedule_values(recipe_.eta(), t)
  lam_t = np.full(steps, np.float32(lam if not callable(lam) else 0), np.float32)
  if callable(lam):
    lam_t[: recipe_.steps] = _train.schedule_values(lam, t)
  return eta, lam_t


@dataclasses.dataclass(frozen=True)
class Config:
  """One run of the study: its recipe, seed and label."""

  arm: str
  recipe: _train.Recipe
  seed: int


def train_step(graphdef, x, y, tx, params, rest, opt_state, idx):
  """One step on the batch ``idx``: ``(params, rest, opt_state, angle)``.

  ``angle`` is the hidden kernels' angular update. nnx.grad, not jax.grad:
  BatchNorm writes its statistics as it runs, so they come back in ``rest``.
  """
  model = nnx.merge(graphdef, params, rest)
  grads = nnx.grad(
    lambda model: _models.cross_entropy(model(x[idx]), y[idx]),
    argnums=nnx.DiffState(0, nnx.Param),
  )(model)
  updates, opt_state = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  angle = _models.kernel_angular_update(params, new_params)
  return new_params, nnx.split(model, nnx.Param, ...)[2], opt_state, angle


def _stack(trees):
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def init_state(data: Split, arch: _models.Architecture, seed: int):
  """``(params, rest)`` of the model for ``seed``: the same init as ``train``'s."""
  model = arch.make(data.x_train.shape[1], data.num_classes, seed)
  _, params, rest = nnx.split(model, nnx.Param, ...)
  return params, rest


def make_run(
  family: str,
  data: Split,
  arch: _models.Architecture,
  *,
  steps: int,
  eval_steps: list[int],
  compensation: str | None,
):
  """``run(lr, eta, lam, params, rest, batches) -> (errors, snapshots, angles)``.

  ``errors[k]`` is the test error after ``eval_steps[k]`` updates and
  ``snapshots`` the parameters there (leading axis ``k``); ``angles`` the
  hidden kernels' angular update at every step. ``eta`` and ``lam`` are the
  per-step tables of :func:`tables`.
  """
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  graphdef = arch.graphdef(x.shape[1], data.num_classes)
  base = odx.adamw if family == "adam" else odx.sgdw
  slot = np.full(steps, -1, np.int32)
  slot[np.asarray(eval_steps) - 1] = np.arange(len(eval_steps))

  def test_error(params, rest):
    model = nnx.merge(graphdef, params, rest)
    return _models.evaluate(model, x, y, x_test, y_test)[3]

  def run(learning_rate, eta, lam, params, rest, batches):
    tx = base(
      learning_rate,
      weight_decay=lambda count: lam[count],
      schedule_multiplier=lambda count: eta[count],
      mask=arch.decay_mask(),
      compensation=compensation,
    )

    def step(carry, inputs):
      params, rest, opt_state, errors, snapshots = carry
      idx, k = inputs
      new_params, rest, opt_state, angle = train_step(
        graphdef, x, y, tx, params, rest, opt_state, idx
      )

      def record(errors, snapshots, params, rest):
        errors = errors.at[k].set(test_error(params, rest))
        snapshots = jax.tree.map(lambda s, p: s.at[k].set(p), snapshots, params)
        return errors, snapshots

      # k is the same for every vmapped run: a real branch, not a select.
      errors, snapshots = jax.lax.cond(
        k >= 0,
        record,
        lambda errors, snapshots, *_: (errors, snapshots),
        errors,
        snapshots,
        new_params,
        rest,
      )
      return (new_params, rest, opt_state, errors, snapshots), angle

    n = len(eval_steps)
    errors = jnp.zeros(n, jnp.float32)
    snapshots = jax.tree.map(lambda p: jnp.zeros((n, *p.shape), p.dtype), params)
    carry = (params, rest, tx.init(params), errors, snapshots)
    carry, angles = jax.lax.scan(step, carry, (batches, jnp.asarray(slot)))
    return carry[3], carry[4], angles

  return run


def run_configs(
  family: str,
  configs: list[Config],
  data: Split,
  arch: _models.Architecture,
  *,
  steps: int,
  eval_steps: list[int],
  compensation: str | None,
) -> dict[str, np.ndarray]:
  """Every config in one vmapped program; numpy arrays with a leading config axis."""
  seeds = sorted({c.seed for c in configs})
  n = len(data.y_train)
  batch_size = configs[0].recipe.batch_size
  state = _stack([init_state(data, arch, s) for s in seeds])
  batches = jnp.stack([_engine.batch_table(s, steps, n, batch_size) for s in seeds])
  which = jnp.asarray([seeds.index(c.seed) for c in configs])
  state, batches = jax.tree.map(lambda a: a[which], (state, batches))
  eta, lam = (
    jnp.asarray(np.stack(a))
    for a in zip(*(tables(c.recipe, steps) for c in configs), strict=True)
  )
  lr = jnp.asarray([c.recipe.learning_rate for c in configs], jnp.float32)
  run = make_run(
    family, data, arch, steps=steps, eval_steps=eval_steps, compensation=compensation
  )
  errors, snapshots, angles = jax.block_until_ready(
    jax.jit(jax.vmap(run))(lr, eta, lam, *state, batches)
  )
  return {
    "errors": np.asarray(errors, np.float64),
    "snapshots": snapshots,
    "angles": np.asarray(angles, np.float64),
    "eta": np.asarray(eta, np.float64),
    "lam": np.asarray(lam, np.float64),
    "rest": jax.tree.map(lambda a: a[0], state[1]),
  }


def snapshot_errors(data: Split, arch: _models.Architecture, snapshots, rest):
  """Test errors of the snapshot ensemble and of the weight average.

  ``snapshots``: parameters with a leading axis of ``M`` snapshots (and one of
  configs before it). The ensemble averages the snapshots' predicted
  probabilities; the weight average (SWA) averages their parameters. Each
  model's BatchNorm statistics are those of the whole training set.
  """
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  graphdef = arch.graphdef(x.shape[1], data.num_classes)

  def probabilities(params, rest):
    model = nnx.merge(graphdef, params, rest)
    model(x)  # training mode: BatchNorm takes the training set's statistics
    logits = model(x_test, use_running_average=True).astype(jnp.float32)
    return jax.nn.softmax(logits)

  def one(snaps, rest):
    mean = jnp.mean(jax.vmap(probabilities, in_axes=(0, None))(snaps, rest), axis=0)
    ensemble = jnp.mean(jnp.argmax(mean, -1) != y_test)
    average = jax.tree.map(
      lambda s: jnp.mean(s.astype(jnp.float32), 0).astype(s.dtype), snaps
    )
    model = nnx.merge(graphdef, average, rest)
    swa = _models.evaluate(model, x, y, x_test, y_test)[3]
    return ensemble, swa

  ensemble, swa = jax.jit(jax.vmap(one, in_axes=(0, None)))(snapshots, rest)
  return np.asarray(ensemble, np.float64), np.asarray(swa, np.float64)


#: Default tuning grids (the same 3 x 3 budget for every arm): around the
#: sweep's good region for each family (AdamW: λ ≈ 3e-3 for α 1e-3..1e-1).
LR_RANGES = {"adam": (3e-3, 3e-2), "sgd": (3e-2, 3e-1)}
WD_RANGE = (1e-3, 1e-2)
#: Arms whose cycle ends are snapshots for the ensemble and the weight average.
SNAPSHOT_ARMS = ("restarts-x2", "restarts-x1", "restarts-x2-norm", "wsd-s")


def _spread(values: np.ndarray) -> dict[str, Any]:
  """Mean, sample standard deviation over seeds (ddof 1), and the values."""
  values = np.asarray(values, np.float64)
  return {
    "mean": float(values.mean()),
    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
    "per_seed": [float(v) for v in values],
  }


def eval_steps_for(steps: int, recipes: list[_train.Recipe]) -> list[int]:
  """Where the test error is recorded: 30 even points, 8 log-spaced early
  ones, and every recipe's cycle ends and end."""
  points = set(np.linspace(steps / 30, steps, 30).round().astype(int).tolist())
  points |= set(np.geomspace(10, steps, 8).round().astype(int).tolist())
  for r in recipes:
    points |= set(r.snapshot_steps())
  return sorted(p for p in points if 1 <= p <= steps)


def study(
  families: list[str],
  data: Split,
  arch: _models.Architecture,
  *,
  steps: int,
  batch_size: int,
  seeds: list[int],
  tune_seed: int,
  grid: tuple[int, int],
  num_snapshots: int,
  settings: dict[str, Any],
  compensation: str | None = "auto",
):
  """Tunes every arm on ``tune_seed``, then runs it on ``seeds`` with its anytime
  curve, snapshots and one-cosine references; a :class:`_studies.Study`."""
  from optax_decoupled.cli import _plots, _studies

  n = len(data.y_train)
  mask = arch.decay_mask()
  payload: dict[str, Any] = {"settings": settings, "families": {}}
  for family in families:
    lrs = _sweep.log_grid(*LR_RANGES[family], grid[0])
    wds = _sweep.log_grid(*WD_RANGE, grid[1])

    def make(arm, lr, wd, length=steps, family=family):
      return recipe(
        family,
        arm,
        learning_rate=float(lr),
        weight_decay=float(wd),
        steps=length,
        batch_size=batch_size,
        num_examples=n,
        mask=mask,
        compensation=compensation,
      )

    name = FAMILIES[family][0]
    print(
      f"{name}: tuning {len(ARMS)} schedules on a {len(lrs)}x{len(wds)} grid "
      f"(seed {tune_seed}) ...",
      flush=True,
    )
    tuning = _tune(family, make, lrs, wds, data, arch, steps, tune_seed, compensation)
    best = {arm: (t["learning_rate"], t["weight_decay"]) for arm, t in tuning.items()}
    arm_recipes = {arm: make(arm, *best[arm]) for arm in ARMS}
    lengths = sorted(
      {s for arm in SNAPSHOT_ARMS for s in arm_recipes[arm].snapshot_steps()} - {steps}
    )
    references = {
      length: make("cosine", *best["cosine"], length=length) for length in lengths
    }
    evals = eval_steps_for(steps, list(arm_recipes.values()))
    configs = [Config(arm, r, s) for arm, r in arm_recipes.items() for s in seeds]
    configs += [
      Config(f"cosine-{length}", r, s)
      for length, r in references.items()
      for s in seeds
    ]
    print(
      f"{name}: {len(ARMS)} schedules and {len(references)} shorter cosines x "
      f"{len(seeds)} seeds ({len(configs)} runs) ...",
      flush=True,
    )
    out = run_configs(
      family,
      configs,
      data,
      arch,
      steps=steps,
      eval_steps=evals,
      compensation=compensation,
    )
    payload["families"][family] = _family_result(
      family,
      data,
      arch,
      configs,
      out,
      evals,
      arm_recipes,
      references,
      tuning,
      num_snapshots=num_snapshots,
      seeds=seeds,
      steps=steps,
    )
    for line in _report(name, payload["families"][family]):
      print("  " + line, flush=True)
  payload["grids"] = {
    f: {
      "learning_rates": _sweep.log_grid(*LR_RANGES[f], grid[0]).tolist(),
      "weight_decays": _sweep.log_grid(*WD_RANGE, grid[1]).tolist(),
    }
    for f in families
  }
  payload["notes"] = NOTES
  figures = {"restarts.png": lambda path: _plots.restarts(path, payload)}
  return _studies.Study("restarts", payload, figures)


def _tune(family, make, lrs, wds, data, arch, steps, seed, compensation) -> dict:
  """Every arm over the (α, λ) grid on ``seed``, in one program: each arm's
  grid of final test errors, its best cell, and whether that is on an edge."""
  cells = [(arm, lr, wd) for arm in ARMS for lr in lrs for wd in wds]
  configs = [Config(arm, make(arm, lr, wd), seed) for arm, lr, wd in cells]
  tuned = run_configs(
    family,
    configs,
    data,
    arch,
    steps=steps,
    eval_steps=[steps],
    compensation=compensation,
  )
  errors = tuned["errors"][:, -1].reshape(len(ARMS), len(lrs), len(wds))
  tuning = {}
  for a, arm in enumerate(ARMS):
    finite = np.where(np.isfinite(errors[a]), errors[a], np.inf)  # diverged: worst
    i, j = np.unravel_index(np.argmin(finite), finite.shape)
    edge = (i in (0, len(lrs) - 1) and len(lrs) > 1) or (
      j in (0, len(wds) - 1) and len(wds) > 1
    )
    tuning[arm] = {
      "test_error": errors[a].tolist(),
      "learning_rate": float(lrs[i]),
      "weight_decay": float(wds[j]),
      "at_grid_edge": bool(edge),
    }
  return tuning


NOTES = {
  "tuning": "every schedule picks its (α, λ) from the same grid (grids), by the "
  "final test error of one run on the tuning seed; the reported runs use "
  "other seeds. The normalized arm's grid value λ is the decay of a cycle as "
  "long as the run: λ_norm = λ sqrt(steps).",
  "spread": "mean and sample standard deviation (ddof 1) over the seeds",
  "anytime": "at each cycle end s of a restart schedule: its test error after "
  "s steps, against a run of one cosine over s steps (the one-cosine arm's α, "
  "λ), on the same seeds",
  "ensemble": "the last num_snapshots cycle ends: mean of their predicted "
  "probabilities (ensemble) or of their parameters (weight_average, SWA); "
  "BatchNorm statistics from the whole training set for every model",
  "angular": "hidden kernels' ‖Δθ‖/‖θ‖ averaged over bins of bin_steps steps and "
  "over seeds; predicted: sqrt(2 λ_t η_t (1-β1)/(1+β1))",
}


def _family_result(
  family,
  data,
  arch,
  configs,
  out,
  evals,
  arm_recipes,
  references,
  tuning,
  *,
  num_snapshots,
  seeds,
  steps,
):
  index = {(c.arm, c.seed): k for k, c in enumerate(configs)}
  at = {s: evals.index(s) for s in evals}

  def rows(arm):
    return [index[(arm, s)] for s in seeds]

  arms = {}
  for arm, r in arm_recipes.items():
    errors = out["errors"][rows(arm)]
    ends = r.snapshot_steps()
    entry = {
      "label": ARMS[arm],
      "optimizer": r.optimizer,
      "learning_rate": r.learning_rate,
      "weight_decay": tuning[arm]["weight_decay"],
      "snapshot_steps": ends,
      "final_test_error": _spread(errors[:, at[steps]]),
      "curve_mean": errors.mean(0).tolist(),
      "curve_std": errors.std(0, ddof=1).tolist()
      if len(seeds) > 1
      else [0.0] * len(evals),
      "snapshot_test_error": [_spread(errors[:, at[s]]) | {"step": s} for s in ends],
    }
    if arm in SNAPSHOT_ARMS and len(ends) >= num_snapshots:
      last = [at[s] for s in ends[-num_snapshots:]]
      snaps = _take(out["snapshots"], rows(arm), last)
      ensemble, average = snapshot_errors(data, arch, snaps, out["rest"])
      entry["ensemble_test_error"] = _spread(ensemble)
      entry["weight_average_test_error"] = _spread(average)
      entry["ensemble_steps"] = ends[-num_snapshots:]
    if arm in SNAPSHOT_ARMS:
      entry["anytime"] = [
        {
          "step": s,
          "test_error": _spread(errors[:, at[s]]),
          "one_cosine_of_that_length": _spread(
            out["errors"][rows(f"cosine-{s}" if s != steps else "cosine"), at[s]]
          ),
        }
        for s in ends
      ]
    arms[arm] = entry
  bins = max(1, steps // 150)
  angular = {}
  for arm in ("cosine", "restarts-x2"):
    k = rows(arm)
    angle = out["angles"][k].mean(0)
    eta, lam = out["eta"][k[0]], out["lam"][k[0]]
    predicted = _train.equilibrium_angular_update(lam, eta)
    cut = len(angle) // bins * bins
    angular[arm] = {
      "measured": angle[:cut].reshape(-1, bins).mean(1).tolist(),
      "predicted": predicted[:cut].reshape(-1, bins).mean(1).tolist(),
      "eta": eta[:cut].reshape(-1, bins).mean(1).tolist(),
    }
  return {
    "optimizer": FAMILIES[family][0],
    "eval_steps": evals,
    "tuning": tuning,
    "arms": arms,
    "angular": {"bin_steps": bins, **angular},
    "reference_lengths": sorted(references),
  }


def _take(tree, rows: list[int], columns: list[int]):
  """``tree``'s leaves at ``[rows][:, columns]`` (configs, then snapshots)."""
  return jax.tree.map(lambda a: a[np.asarray(rows)][:, np.asarray(columns)], tree)


def _report(name: str, result: dict) -> list[str]:
  def pm(s):
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"

  lines = [f"{'schedule':<44} {'α':>7} {'λ':>7}   final (%)      ensemble      SWA"]
  for arm, e in result["arms"].items():
    extra = ""
    if "ensemble_test_error" in e:
      extra = f"  {pm(e['ensemble_test_error'])}  {pm(e['weight_average_test_error'])}"
    edge = "*" if result["tuning"][arm]["at_grid_edge"] else " "
    lines.append(
      f"{e['label']:<44} {e['learning_rate']:>7.2g} {e['weight_decay']:>7.2g}{edge}"
      f"  {pm(e['final_test_error'])}{extra}"
    )
  if any(t["at_grid_edge"] for t in result["tuning"].values()):
    lines.append("* best (α, λ) on the tuning grid's edge: widen the grid to be sure")
  for arm in SNAPSHOT_ARMS:
    points = ", ".join(
      f"{p['step']}: {100 * p['test_error']['mean']:.1f} vs "
      f"{100 * p['one_cosine_of_that_length']['mean']:.1f}"
      for p in result["arms"][arm]["anytime"]
    )
    lines.append(f"anytime, {ARMS[arm]} vs one cosine of that length (%): {points}")
  return lines


def _pm(spread: dict) -> str:
  return f"{100 * spread['mean']:.2f} ± {100 * spread['std']:.2f} %"


def render(payload: dict) -> dict[str, str]:
  """The Markdown blocks of the docs and README, by name, from ``restarts.json``."""
  out = {}
  settings = payload["settings"]
  grids = payload["grids"]
  time_ = payload.get("time", {})
  grid_text = "; ".join(
    f"{FAMILIES[f][0]}: α ∈ {{{', '.join(f'{a:.2g}' for a in g['learning_rates'])}}}, "
    f"λ ∈ {{{', '.join(f'{w:.2g}' for w in g['weight_decays'])}}}"
    for f, g in grids.items()
  )
  out["settings"] = (
    f"{settings['steps']} steps of batch {settings['batch_size']} on {settings['dataset']} "
    f"({settings['train_examples']} train / {settings['test_examples']} test examples), "
    f"the `{settings['model']}` MLP ({settings['depth']} x {settings['hidden']}); "
    f"tuned on seed {settings['tune_seed']} over {grid_text}; reported on seeds "
    f"{', '.join(map(str, settings['seeds']))} (mean ± sample sd). "
    + (f"The study took {describe_time(time_)} at the end." if time_ else "")
  )
  for family, result in payload["families"].items():
    name = result["optimizer"]
    rows = [
      f"| {name}: schedule | α | λ | final test error | ensemble of the last "
      f"{settings['snapshots']} cycle ends | their weight average (SWA) |",
      "|---|---:|---:|---:|---:|---:|",
    ]
    for arm, e in result["arms"].items():
      edge = " *" if result["tuning"][arm]["at_grid_edge"] else ""
      ens = _pm(e["ensemble_test_error"]) if "ensemble_test_error" in e else "-"
      swa = _pm(e["weight_average_test_error"]) if "ensemble_test_error" in e else "-"
      rows.append(
        f"| {e['label']}{edge} | {e['learning_rate']:.2g} | {e['weight_decay']:.2g} "
        f"| {_pm(e['final_test_error'])} | {ens} | {swa} |"
      )
    out[f"final-{family}"] = "\n".join(rows)
    arms = result["arms"]
    steps = sorted({p["step"] for a in SNAPSHOT_ARMS for p in arms[a]["anytime"]})
    rows = [
      "| step | one cosine of that length | "
      + " | ".join(ARMS[a] for a in SNAPSHOT_ARMS)
      + " |",
      "|---:|---:|" + "---:|" * len(SNAPSHOT_ARMS),
    ]
    for step in steps:
      cells, reference = [], "-"
      for a in SNAPSHOT_ARMS:
        point = next((p for p in arms[a]["anytime"] if p["step"] == step), None)
        cells.append("-" if point is None else _pm(point["test_error"]))
        if point is not None:
          reference = _pm(point["one_cosine_of_that_length"])
      rows.append(f"| {step} | {reference} | " + " | ".join(cells) + " |")
    out[f"anytime-{family}"] = "\n".join(rows)
  families = list(payload["families"].values())
  rows = [
    "| schedule | "
    + " | ".join(f"{r['optimizer']}: final test error" for r in families)
    + " |",
    "|---|" + "---:|" * len(families),
  ]
  for arm in ARMS:
    rows.append(
      f"| {ARMS[arm]} | "
      + " | ".join(_pm(r["arms"][arm]["final_test_error"]) for r in families)
      + " |"
    )
  out["readme"] = "\n".join(rows)
  out["claims"] = "\n".join(_claims(payload["families"]))
  return out


def _difference(a: dict, b: dict) -> str:
  """``a - b`` in points of test error, and whether it exceeds the seeds' sd."""
  diff = round(100 * (a["mean"] - b["mean"]), 2) + 0  # no "-0.00"
  spread = 100 * max(a["std"], b["std"])
  verdict = (
    "within the seeds' sd"
    if abs(diff) <= spread
    else ("lower by more than the sd" if diff < 0 else "higher by more than the sd")
  )
  return f"{diff:+.2f} points ({verdict}, {spread:.2f})"


def _claims(families: dict) -> list[str]:
  """One bullet per claim, each comparison for every optimizer, computed."""

  def each(compare) -> str:
    return "; ".join(
      f"{r['optimizer']} {compare(r['arms'])}" for r in families.values()
    )

  def anytime(arm):
    def compare(arms):
      points = arms[arm]["anytime"][:-1]
      diffs = [
        100 * (p["test_error"]["mean"] - p["one_cosine_of_that_length"]["mean"])
        for p in points
      ]
      spread = max(
        100 * max(p["test_error"]["std"], p["one_cosine_of_that_length"]["std"])
        for p in points
      )
      low, high = (round(min(diffs), 2) + 0, round(max(diffs), 2) + 0)
      return f"{low:+.2f} to {high:+.2f} points (sd up to {spread:.2f})"

    return compare

  def final(a, b):
    return lambda arms: _difference(
      arms[a]["final_test_error"], arms[b]["final_test_error"]
    )

  def combined(arm, key):
    return lambda arms: _difference(arms[arm][key], arms[arm]["final_test_error"])

  return (
    [
      f"- **Anytime**, each cycle end before the last against one cosine of that "
      f"length: {ARMS[arm]}: {each(anytime(arm))}."
      for arm in SNAPSHOT_ARMS
    ]
    + [
      f"- **Final error**, {ARMS[a]} against {ARMS[b]}: {each(final(a, b))}."
      for a, b in (
        ("restarts-x2", "cosine"),
        ("restarts-x1", "cosine"),
        ("restarts-x2-norm", "restarts-x2"),
        ("wsd", "cosine"),
        ("wsd-s", "wsd"),
        ("step-drop", "cosine"),
        ("constant", "cosine"),
      )
    ]
    + [
      f"- **{what}** of {ARMS[arm]}'s last cycle ends against its final model: "
      f"{each(combined(arm, key))}."
      for what, key in (
        ("Snapshot ensemble", "ensemble_test_error"),
        ("Weight average", "weight_average_test_error"),
      )
      for arm in SNAPSHOT_ARMS
    ]
  )
