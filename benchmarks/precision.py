"""What compensated updates keep in bfloat16 and float16, and what they cost.

    python benchmarks/precision.py                 # ~6 min on 2 cores
    python benchmarks/precision.py --quick         # ~1 min, smaller runs

Writes ``docs/precision.json`` and ``docs/precision.png`` and prints the tables
of ``docs/precision.md``:

1. **Decay only** (zero gradients, a cosine η_t over 10,000 steps): the
   distance, in ulps of the parameter's dtype, from the paper's
   ``θ_0 ∏(1 - η_t λ)`` (float64 closed form), for no compensation, Kahan
   and stochastic rounding (the mean over 16 seeds, and the worst seed).
2. **Logistic regression** (2,000 steps of AdamW, bfloat16 parameters, moments
   in float32 or bfloat16): the relative error of the total change
   ``θ_T - θ_0`` against float64 Algorithm 2 (``tests/reference.py``).
3. **Memory**: bytes per parameter, parameters and optimizer state, from the
   initialized states themselves.
4. **Training**: the sweep's model on mnist1d at the sweep's best AdamW cell,
   float32 against pure bfloat16 with each compensation, 3 seeds: test error,
   and the hidden kernels' norm and angular update over training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))

import reference  # noqa: E402

import optax_decoupled as odx  # noqa: E402

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}
MODES = {"none": None, "kahan": "auto", "stochastic": "stochastic"}


def ulps(got, exact, dtype):
  """|got - exact| in units of ``dtype``'s spacing at ``exact``."""
  rounded = np.abs(np.asarray(exact, np.float64)).astype(dtype)
  spacing = np.nextafter(rounded, np.asarray(np.inf, dtype)).astype(np.float64)
  spacing -= rounded.astype(np.float64)
  return np.abs(np.asarray(got, np.float64) - exact) / spacing


def _z(samples, exact):
  """z of the mean of θ_T/θ_0 over every seed and weight (independent draws)."""
  ratios = (samples / exact).ravel()
  return float(abs(ratios.mean() - 1) / (ratios.std(ddof=1) / np.sqrt(ratios.size)))


def decay_only(steps, seeds):
  """Max ulps from the closed form per (dtype, λ, mode)."""
  theta0 = np.linspace(0.5, 2.0, 64)
  t = np.arange(steps)
  eta_np = 0.5 * (1 + np.cos(np.pi * t / steps))
  lams = {
    "bfloat16": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
    "float16": [1e-6, 1e-5, 1e-4, 1e-3],
  }
  rows = []
  for name, dtype in DTYPES.items():
    start = jnp.asarray(theta0, dtype)
    start64 = np.asarray(start.astype(jnp.float32), np.float64)
    for mode, compensation in MODES.items():

      def one(lam, seed, compensation=compensation, dtype=dtype, start=start):
        tx = odx.adamw(
          1e-3,
          weight_decay=lam,
          schedule_multiplier=odx.cosine_warm_restarts(steps),
          compensation=compensation,
          seed=seed,
        )

        def step(carry, _):
          p, s = carry
          u, s = tx.update({"w": jnp.zeros_like(p["w"])}, s, p)
          return (optax.apply_updates(p, u), s), None

        p = {"w": start}
        return jax.lax.scan(step, (p, tx.init(p)), None, length=steps)[0][0]["w"]

      n_seeds = seeds if mode == "stochastic" else 1
      run = jax.jit(jax.vmap(jax.vmap(one, (None, 0)), (0, None)))
      out = run(jnp.asarray(lams[name], jnp.float32), jnp.arange(n_seeds))
      out = np.asarray(out.astype(jnp.float32), np.float64)  # (λ, seed, w)
      for i, lam in enumerate(lams[name]):
        exact = start64 * np.prod(1 - lam * eta_np)
        rows.append(
          {
            "dtype": name,
            "lambda": lam,
            "mode": mode,
            "exact_ratio": float(np.prod(1 - lam * eta_np)),
            "max_ulps": float(ulps(out[i], exact, dtype).max()),
            "mean_over_seeds_max_ulps": float(
              ulps(out[i].mean(axis=0), exact, dtype).max()
            ),
            # Stochastic rounding: |z| of the mean ratio to the closed form
            # over all seeds and weights (unbiased: |z| below 3 but 1 in 370).
            "abs_z": _z(out[i], exact) if n_seeds > 1 else None,
          }
        )
  return rows


def logistic(steps, seeds):
  """Relative error of θ_T - θ_0 against float64 Algorithm 2."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 16))
  y = (x @ rng.normal(size=16) + 0.5 * rng.normal(size=256) > 0).astype(np.float64)
  theta0 = rng.normal(size=16)
  alpha, lam = 3e-4, 3e-4

  def grad64(theta):
    z = 1 / (1 + np.exp(-(x @ theta["w"])))
    return {"w": x.T @ (z - y) / len(y)}

  eta = lambda s: 0.5 * (1 + np.cos(np.pi * s / steps))  # noqa: E731
  start = np.asarray(jnp.asarray(theta0, jnp.bfloat16).astype(jnp.float32), np.float64)
  ref = reference.adam({"w": start}, [grad64] * steps, alpha, lam=lam, eta=eta)
  want = ref[-1]["w"] - start
  x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)

  def grad(p):
    z = jax.nn.sigmoid(x32 @ p["w"].astype(jnp.float32))
    return {"w": (x32.T @ (z - y32) / len(y)).astype(p["w"].dtype)}

  rows = []
  for moments in ("float32", "bfloat16"):
    for mode, compensation in MODES.items():

      def one(seed, compensation=compensation, moments=moments):
        tx = odx.adamw(
          alpha,
          weight_decay=lam,
          schedule_multiplier=odx.cosine_warm_restarts(steps),
          mu_dtype=moments,
          nu_dtype=moments,
          compensation=compensation,
          seed=seed,
        )

        def step(carry, _):
          p, s = carry
          u, s = tx.update(grad(p), s, p)
          return (optax.apply_updates(p, u), s), None

        p = {"w": jnp.asarray(theta0, jnp.bfloat16)}
        return jax.lax.scan(step, (p, tx.init(p)), None, length=steps)[0][0]["w"]

      n = seeds if mode == "stochastic" else 1
      out = jax.jit(jax.vmap(one))(jnp.arange(n))
      got = np.asarray(out.astype(jnp.float32), np.float64) - start
      errors = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want)
      rows.append(
        {
          "moments": moments,
          "mode": mode,
          "relative_error": float(np.mean(errors)),
          "relative_error_spread": float(np.std(errors)),
        }
      )
  return rows


def memory():
  """Bytes per parameter (parameters + optimizer state) on a 1M-element leaf."""
  n = 1 << 20
  f32, bf16 = jnp.float32, jnp.bfloat16

  def per_param(params, tx, extra=0):
    state = jax.eval_shape(tx.init, params)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((params, state)))
    return (total + extra) / n

  p32 = {"w": jax.ShapeDtypeStruct((n,), f32)}
  p16 = {"w": jax.ShapeDtypeStruct((n,), bf16)}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    rows = [
      ("float32 params, float32 moments", per_param(p32, odx.adamw(1e-3))),
      (
        "float32 master + bfloat16 copy, float32 moments (mixed precision)",
        per_param(p32, odx.adamw(1e-3), extra=2 * n),
      ),
      (
        "bfloat16 params, float32 moments, Kahan buffer",
        per_param(p16, odx.adamw(1e-3, mu_dtype=f32, nu_dtype=f32)),
      ),
      (
        "bfloat16 params and moments, no compensation",
        per_param(p16, odx.adamw(1e-3, compensation=None)),
      ),
      ("bfloat16 params and moments, Kahan (default)", per_param(p16, odx.adamw(1e-3))),
      (
        "bfloat16 params and moments, stochastic rounding",
        per_param(p16, odx.adamw(1e-3, compensation="stochastic")),
      ),
    ]
  return [{"setup": s, "bytes_per_parameter": round(b, 3)} for s, b in rows]


#: AdamW's cell of the training study: the default sweep's best (α, λ).
TRAIN_LR, TRAIN_WD = 10**-1.5, 10**-2.5


def training(steps, seeds):
  """The sweep's model at AdamW's best cell: float32 and pure bfloat16."""
  from optax_decoupled.cli import _data, _models, _train

  data = _data.load_mnist1d()
  runs = []
  settings = [("float32", "auto", None)]
  settings += [("bfloat16", c, "float32") for c in ("none", "auto")]
  settings += [("bfloat16", c, None) for c in ("none", "auto", "stochastic")]
  for dtype, compensation, moments in settings:
    arch = _models.Architecture("bn", 64, 2, dtype)
    recipe = _train.Recipe(
      "adamw",
      learning_rate=TRAIN_LR,
      weight_decay=TRAIN_WD,
      steps=steps,
      batch_size=64,
      num_examples=len(data.y_train),
      mask=arch.decay_mask(),
      compensation=None if compensation == "none" else compensation,
      moment_dtype=moments,
    )
    for seed in range(seeds):
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compensation=None warns, as it should
        result = _train.train(recipe, data, arch=arch, seed=seed, progress=False)
      curves = result["curves"]
      runs.append(
        {
          "param_dtype": dtype,
          "moment_dtype": moments or dtype,
          "compensation": compensation,
          "seed": seed,
          "test_error": 1 - result["test_accuracy"],
          "kernel_norm": curves["kernel_norm"].tolist(),
          "angular_update": curves["angular_update"].tolist(),
        }
      )
      print(
        f"  {dtype:8s} moments {moments or dtype:8s} {compensation:10s} seed {seed}: "
        "test error "
        f"{runs[-1]['test_error']:.4f}",
        flush=True,
      )
  return runs


def training_summary(runs):
  out = []
  keys = ("param_dtype", "moment_dtype", "compensation")
  for setting in dict.fromkeys(tuple(r[k] for k in keys) for r in runs):
    sel = [r for r in runs if tuple(r[k] for k in keys) == setting]
    errors = np.array([r["test_error"] for r in sel])
    norms = np.array([r["kernel_norm"] for r in sel])
    angles = np.array([r["angular_update"] for r in sel])
    half = slice(norms.shape[1] // 4, 3 * norms.shape[1] // 4)
    out.append(
      {
        **dict(zip(keys, setting, strict=True)),
        "test_error_mean": float(errors.mean()),
        "test_error_std": float(errors.std(ddof=1)) if len(errors) > 1 else 0.0,
        "kernel_norm_start": float(norms[:, 0].mean()),
        "kernel_norm_end": float(norms[:, -1].mean()),
        "angular_update_middle": float(angles[:, half].mean()),
      }
    )
  return out


def seed0_curves(runs, every=10):
  """Seed 0's kernel norm and angular update (50-step mean), every 10 steps."""
  out = []
  for r in runs:
    if r["seed"] != 0:
      continue
    smooth = np.convolve(r["angular_update"], np.ones(50) / 50, mode="valid")
    out.append(
      {
        "param_dtype": r["param_dtype"],
        "moment_dtype": r["moment_dtype"],
        "compensation": r["compensation"],
        "step": list(range(0, len(r["kernel_norm"]), every)),
        "kernel_norm": [round(x, 4) for x in r["kernel_norm"][::every]],
        "angular_update_step": list(range(25, 25 + len(smooth), every)),
        "angular_update": [float(f"{x:.4g}") for x in smooth[::every]],
      }
    )
  return out


def figure(path, curves):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  colors = {"none": "tab:red", "auto": "tab:blue", "stochastic": "tab:green"}
  for r in curves:
    comp = "kahan" if r["compensation"] == "auto" else r["compensation"]
    if r["param_dtype"] == "float32":
      label, style = "float32", dict(color="black", lw=2.5, alpha=0.5)
    elif r["moment_dtype"] == "float32":
      label = f"bfloat16, float32 moments, {comp}"
      style = dict(color=colors[r["compensation"]], lw=1.2, ls="--")
    else:
      label = f"bfloat16, bfloat16 moments, {comp}"
      style = dict(color=colors[r["compensation"]], lw=1)
    if r["compensation"] == "stochastic":  # under the Kahan lines, not over them
      style.update(ls=":", zorder=1)
    axes[0].plot(r["step"], r["kernel_norm"], label=label, **style)
    axes[1].plot(r["angular_update_step"], r["angular_update"], label=label, **style)
  axes[0].set(xlabel="step", ylabel="‖θ‖ of the hidden kernels", title="kernel norm")
  axes[1].set(
    xlabel="step",
    ylabel="‖Δθ‖/‖θ‖ (50-step mean)",
    yscale="log",
    title="angular update of the hidden kernels",
  )
  axes[1].legend(loc="lower left", fontsize=8)
  fig.suptitle(
    f"AdamW, α = {TRAIN_LR:.1e}, λ = {TRAIN_WD:.1e}, mnist1d, BatchNorm MLP, seed 0"
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def table(rows, columns):
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for r in rows:
    lines.append("| " + " | ".join(str(r[c]) for c in columns) + " |")
  return "\n".join(lines)


def _f(x, digits=2):
  return "-" if x is None else f"{x:.{digits}g}" if abs(x) < 10 else f"{x:.0f}"


def render(payload, sweeps=None):
  """The Markdown tables of ``docs/precision.md``, by name, from the JSON."""
  out = {}
  decay = payload["decay_only"]
  for dtype in ("bfloat16", "float16"):
    rows = [
      f"| λ | θ_T/θ_0 | none | Kahan (default) | stochastic: worst seed | "
      f"stochastic: \\|z\\| of the mean over {payload['settings']['seeds']} seeds × 64 "
      "weights |",
      "|---:|---:|---:|---:|---:|---:|",
    ]
    for lam in dict.fromkeys(r["lambda"] for r in decay if r["dtype"] == dtype):
      by = {r["mode"]: r for r in decay if r["dtype"] == dtype and r["lambda"] == lam}
      rows.append(
        f"| {lam:g} | {by['none']['exact_ratio']:.3g} | {_f(by['none']['max_ulps'])} "
        f"| {_f(by['kahan']['max_ulps'])} | {_f(by['stochastic']['max_ulps'])} "
        f"| {_f(by['stochastic']['abs_z'])} |"
      )
    out[f"decay-{dtype}"] = "\n".join(rows)
  rows = ["| moments | none | Kahan (default) | stochastic (mean ± sd of seeds) |"]
  rows.append("|---|---:|---:|---:|")
  for moments in ("float32", "bfloat16"):
    by = {
      r["mode"]: r for r in payload["logistic_regression"] if r["moments"] == moments
    }
    st = by["stochastic"]
    rows.append(
      f"| {moments} | {100 * by['none']['relative_error']:.1f} % "
      f"| {100 * by['kahan']['relative_error']:.2f} % "
      f"| {100 * st['relative_error']:.1f} ± {100 * st['relative_error_spread']:.1f} % |"
    )
  out["logistic"] = "\n".join(rows)
  rows = ["| setup | bytes per parameter |", "|---|---:|"]
  rows += [
    f"| {r['setup']} | {r['bytes_per_parameter']:g} |" for r in payload["memory"]
  ]
  out["memory"] = "\n".join(rows)
  rows = [
    "| parameters | moments | compensation | test error (mean ± sd, 3 seeds) "
    "| kernel norm: start → end | angular update, middle half |",
    "|---|---|---|---:|---:|---:|",
  ]
  for r in payload["training"]:
    comp = "-" if r["param_dtype"] == "float32" else r["compensation"]
    comp = "kahan" if comp == "auto" else comp
    rows.append(
      f"| {r['param_dtype']} | {r['moment_dtype']} | {comp} "
      f"| {100 * r['test_error_mean']:.2f} ± {100 * r['test_error_std']:.2f} % "
      f"| {r['kernel_norm_start']:.2f} → {r['kernel_norm_end']:.2f} "
      f"| {r['angular_update_middle']:.2e} |"
    )
  out["training"] = "\n".join(rows)
  out.update(prose(payload, sweeps))
  if sweeps:
    rows = [
      "| run | optimizer | best cell | best λ per α row (α = 1e-4 … 1e-1) "
      "| spread of the best λ "
      "| one λ for every α costs |",
      "|---|---|---|---|---:|---:|",
    ]
    for label, sweep in sweeps.items():
      for name, sm in sweep["summary"].items():
        best = sm["best"]
        per_row = ", ".join(
          f"{r['weight_decay']:.0e}" for r in sm["best_weight_decay_per_lr"]
        )
        rows.append(
          f"| {label} | {name} | {100 * best['test_error']:.1f} % (α "
          f"{best['learning_rate']:.1e}, λ {best['weight_decay']:.1e}) | {per_row} "
          f"| {sm['best_wd_spread_decades']:.1f} decades "
          f"| {100 * sm['transfer_regret']:.2f} points |"
        )
    out["sweeps"] = "\n".join(rows)
  return out


def _row(payload, param_dtype, moment_dtype, compensation):
  return next(
    r
    for r in payload["training"]
    if (r["param_dtype"], r["moment_dtype"], r["compensation"])
    == (param_dtype, moment_dtype, compensation)
  )


def _pct(a, b):
  """``a`` relative to ``b``, as a signed percentage."""
  return f"{100 * (a / b - 1):+.0f} %"


def prose(payload, sweeps):
  """The sentences of docs/precision.md and the README that quote numbers."""
  out = {}
  memory = {r["setup"]: r["bytes_per_parameter"] for r in payload["memory"]}
  kahan = memory["bfloat16 params and moments, Kahan (default)"]
  mixed = memory["float32 master + bfloat16 copy, float32 moments (mixed precision)"]
  f32 = memory["float32 params, float32 moments"]
  out["memory-text"] = (
    f"Pure bfloat16 with Kahan costs {kahan:g} bytes per parameter, against {mixed:g} "
    f"for the usual mixed precision (float32 master weights and a bfloat16 copy) and "
    f"{f32:g} for float32."
  )
  ref = _row(payload, "float32", "float32", "auto")
  k32 = _row(payload, "bfloat16", "float32", "auto")
  n32 = _row(payload, "bfloat16", "float32", "none")
  k16 = _row(payload, "bfloat16", "bfloat16", "auto")
  s16 = _row(payload, "bfloat16", "bfloat16", "stochastic")
  n16 = _row(payload, "bfloat16", "bfloat16", "none")
  # η_t λ falls below bfloat16's 2^-9 once the cosine η_t < 2^-9 / λ.
  eta_min = 2.0**-9 / TRAIN_WD
  lost = 1 - np.arccos(2 * eta_min - 1) / np.pi
  logistic = {
    (r["moments"], r["mode"]): r["relative_error"]
    for r in payload["logistic_regression"]
  }
  errors = [r["test_error_mean"] for r in payload["training"]]
  sds = [r["test_error_std"] for r in payload["training"]]
  spread = max(abs(e - ref["test_error_mean"]) for e in errors)
  out["training-text"] = "\n".join(
    [
      f"- **With float32 moments, bfloat16 parameters with Kahan follow float32**: "
      f"{100 * k32['test_error_mean']:.2f} % against {100 * ref['test_error_mean']:.2f} % "
      f"test error, and the hidden kernels' norm ends at {k32['kernel_norm_end']:.2f} "
      f"against {ref['kernel_norm_end']:.2f} (the dashed blue line lies on the grey "
      f"one). Without compensation the norm ends {_pct(n32['kernel_norm_end'], ref['kernel_norm_end'])} "
      f"from float32's ({n32['kernel_norm_end']:.2f}): `η_t λ` starts at "
      f"{TRAIN_WD:.1e}, above bfloat16's `2^-9`, but falls below it once `η_t < "
      f"{eta_min:.2f}`, and from then on (the last {100 * lost:.0f} % of the run) the "
      "decay is lost and nothing pulls the scale-invariant kernels' norm back down, "
      "while the Adam steps still grow it.",
      f"- **In pure bfloat16 (moments too)** the norm "
      f"then ends {_pct(k16['kernel_norm_end'], ref['kernel_norm_end'])} from "
      f"float32's with Kahan ({k16['kernel_norm_end']:.2f}) and "
      f"{_pct(s16['kernel_norm_end'], ref['kernel_norm_end'])} with stochastic rounding "
      f"({s16['kernel_norm_end']:.2f}). bfloat16 moments are a deviation of their own, "
      "which no compensation of the update can undo (the logistic regression above: "
      f"{100 * logistic[('float32', 'kahan')]:.2f} % error with float32 moments, "
      f"{100 * logistic[('bfloat16', 'kahan')]:.0f} % with bfloat16 ones; a `v` that "
      "cannot decay makes later steps smaller). Without compensation the norm ends at "
      f"{n16['kernel_norm_end']:.2f}.",
      f"- **Test error {'does not separate' if spread <= max(sds) else 'separates'} "
      f"them at this cell**: every setting is within "
      f"{100 * spread:.2f} points of "
      f"float32, against seeds' standard deviations of {100 * min(sds):.1f} to "
      f"{100 * max(sds):.1f} points. The cell is the sweep's best, with large steps "
      f"(`α = {TRAIN_LR:.1e}`); where the lost updates cost accuracy is at small `α` and "
      "`λ`, below.",
    ]
  )
  if sweeps and {"float32", "bfloat16, Kahan", "bfloat16, none"} <= set(sweeps):
    out.update(_sweeps_prose(sweeps))
  kahan_ulps = [
    r
    for r in payload["decay_only"]
    if r["dtype"] == "bfloat16" and r["mode"] == "kahan"
  ]
  lams = [r["lambda"] for r in kahan_ulps]
  out["readme"] = (
    f"Over {payload['settings']['decay_steps']:,} steps the decay stays within "
    f"{max(r['max_ulps'] for r in kahan_ulps):.2f} ulp of the paper's "
    f"`θ_0 ∏(1 - η_t λ)` for every λ from {min(lams):g} to {max(lams):g}, and pure "
    f"bfloat16 costs {kahan:g} bytes per parameter with Adam (float32: {f32:g}; "
    f"float32 master weights and a bfloat16 copy: {mixed:g})."
  )
  return out


def _sweeps_prose(sweeps):
  f32, kahan, none = (
    sweeps["float32"],
    sweeps["bfloat16, Kahan"],
    sweeps["bfloat16, none"],
  )

  def summary(sweep, name):
    return sweep["summary"][name]

  def cells(sweep, lr, max_wd):
    return [
      r["test_error"]
      for r in sweep["rows"]
      if r["optimizer"] == "adamw"
      and math.isclose(r["learning_rate"], lr)
      and r["weight_decay"] <= max_wd * 1.001
      and r["test_error"] is not None
    ]

  smallest = min(r["learning_rate"] for r in none["rows"])
  low_wd = 3e-4
  kahan_spread = summary(kahan, "adamw")["best_wd_spread_decades"]
  holds = (
    kahan_spread <= 0.5 and summary(kahan, "adam_l2")["best_wd_spread_decades"] >= 1.5
  )
  small = {
    label: 100 * np.mean(cells(s, smallest, low_wd))
    for label, s in (("none", none), ("f32", f32), ("kahan", kahan))
  }
  degrades = small["none"] > small["kahan"] + 5
  best = {
    label: summary(s, "adamw")["best"]["test_error"] for label, s in sweeps.items()
  }
  times = ", ".join(
    f"{label} {s['time']['wall_seconds']:.0f} s wall ({s['time']['cpu_seconds']:.0f} s "
    f"CPU, load average {s['time']['load_average']:.1f})"
    for label, s in sweeps.items()
    if "time" in s
  )
  return {
    "sweeps-text": "\n".join(
      [
        f"- **With Kahan, Figure 2 {'holds' if holds else 'does not hold'} in "
        f"bfloat16**: AdamW's best λ spreads over {kahan_spread:.1f} decades of the grid "
        f"and one λ for every α costs {100 * summary(kahan, 'adamw')['transfer_regret']:.2f} "
        f"points, while Adam+L2's best λ slides over "
        f"{summary(kahan, 'adam_l2')['best_wd_spread_decades']:.1f} decades; AdamW's "
        f"best cell is {100 * (best['bfloat16, Kahan'] - best['float32']):+.2f} points "
        "from float32's.",
        "- **Without compensation the picture "
        f"{'degrades' if degrades else 'barely changes'} where the updates are small**: "
        f"at α = {smallest:.0e}, AdamW's mean error over λ ≤ {low_wd:.0e} is "
        f"{small['none']:.0f} %, against {small['f32']:.0f} % in float32 and "
        f"{small['kahan']:.0f} % with Kahan: Adam's steps "
        "`η_t α` there are below half an ulp of most weights. One λ for every α now "
        f"costs {100 * summary(none, 'adamw')['transfer_regret']:.2f} points instead of "
        f"{100 * summary(kahan, 'adamw')['transfer_regret']:.2f}, and the best cell is "
        f"{100 * (best['bfloat16, none'] - best['bfloat16, Kahan']):+.2f} points from "
        "Kahan's.",
      ]
    ),
    "sweeps-time": f"The sweeps took {times} (XLA:CPU has no native bfloat16 arithmetic).",
  }


SWEEPS = {  # docs folder -> label in the table
  "sweep": "float32",
  "sweep-bf16": "bfloat16, Kahan",
  "sweep-bf16-none": "bfloat16, none",
}


def load_sweeps(docs):
  out = {}
  for folder, label in SWEEPS.items():
    path = os.path.join(docs, folder, "sweep.json")
    if os.path.exists(path):
      with open(path) as f:
        out[label] = json.load(f)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="smaller runs, ~1 min")
  p.add_argument("--out", default=os.path.join(HERE, "..", "docs"))
  args = p.parse_args()
  started, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
  steps, seeds, train_steps = (2000, 4, 300) if args.quick else (10_000, 16, 3000)
  print("decay only ...", flush=True)
  decay = decay_only(steps, seeds)
  print(table(decay, ["dtype", "lambda", "mode", "max_ulps", "abs_z"]))
  print("logistic regression ...", flush=True)
  logi = logistic(2000, seeds)
  print(table(logi, ["moments", "mode", "relative_error", "relative_error_spread"]))
  mem = memory()
  print(table(mem, ["setup", "bytes_per_parameter"]))
  print("training ...", flush=True)
  runs = training(train_steps, 3)
  summary = training_summary(runs)
  print(table(summary, list(summary[0])))
  cpu1 = resource.getrusage(resource.RUSAGE_SELF)
  payload = {
    "settings": {"quick": args.quick, "decay_steps": steps, "seeds": seeds},
    "versions": {"jax": jax.__version__, "optax": optax.__version__},
    "decay_only": decay,
    "logistic_regression": logi,
    "memory": mem,
    "training": summary,
    "curves": seed0_curves(runs),
    "wall_seconds": time.perf_counter() - started,
    "cpu_seconds": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
    "load_average": os.getloadavg(),
  }
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "precision.json"), "w") as f:
    json.dump(payload, f, indent=1)
  figure(os.path.join(args.out, "precision.png"), payload["curves"])
  print(
    f"{payload['wall_seconds']:.0f} s wall, {payload['cpu_seconds']:.0f} s CPU, "
    f"load average {payload['load_average'][0]:.1f} -> {args.out}; "
    "python docs/render.py rewrites the docs' tables from it"
  )


if __name__ == "__main__":
  main()
