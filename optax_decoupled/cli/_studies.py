"""The sweep command's two studies: the lr x decay grid, and run budgets.

Each returns a :class:`Study`: the JSON payload, the lines to print, and the
figures to draw, so that the command writes everything in one staging step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from optax_decoupled.cli import _models, _plots, _sweep
from optax_decoupled.cli._data import Split
from optax_decoupled.sweep import _plots as _sweep_plots
from optax_decoupled.sweep import _summary


@dataclasses.dataclass
class Study:
  name: str  # the JSON file's stem
  payload: dict[str, Any]
  figures: dict[str, Callable[[str], None]]  # file name -> draw(path)

  def write(self, folder: str, write_json: Callable[[str, Any], Any]) -> None:
    write_json(os.path.join(folder, f"{self.name}.json"), self.payload)
    for file_name, draw in self.figures.items():
      draw(os.path.join(folder, file_name))


def grid(
  names: list[str],
  ranges: dict[str, tuple[np.ndarray, np.ndarray]],
  data: Split,
  arch: _models.Architecture,
  *,
  seeds: list[int],
  steps: int,
  batch_size: int,
  sequential_configs: int,
  settings: dict[str, Any],
  compensation: str | None = "auto",
  **options: Any,
) -> Study:
  """Every optimizer over its (lr, wd) grid; summary and equilibrium per optimizer.

  ``options`` go to :func:`optax_decoupled.sweep.run` (mesh, chunks, memory).
  """
  rows, timing, summary, panels = [], {}, {}, []
  for name in names:
    lrs, wds = ranges[name]
    print(f"{name}: {len(lrs)}x{len(wds)} grid x {len(seeds)} seed(s) ...", flush=True)
    result = _sweep.sweep(
      name,
      data,
      arch,
      lrs,
      wds,
      seeds,
      steps=steps,
      batch_size=batch_size,
      sequential_configs=sequential_configs,
      compensation=compensation,
      **options,
    )
    rows += result.rows()
    timing[name] = _timing(result)
    summary[name] = result.summary()
    panels.append({**result.panel(), "angular_label": "hidden kernels"})
    for line in _report(name, summary[name], timing[name], steps):
      print("  " + line, flush=True)
  payload = {
    "settings": settings,
    "hardware": _hardware(timing[names[0]]),
    "summary": summary,
    "rows": rows,
    "timing": timing,
    "notes": {
      "best_wd_spread_decades": "log10(max) - log10(min) of the best λ over "
      "the α rows whose best error is within "
      f"{_summary.GOOD_ROW_FACTOR}x of the grid's best",
      "transfer_regret": "mean over α rows of (error at the single λ column "
      "with the lowest mean error) - (the row's best error)",
      "angular_update": "mean ‖Δθ‖/‖θ‖ of the hidden kernels over the middle "
      "half of training; predicted_angular_update: sqrt(2 λ η_t (1-β1)/(1+β1)) "
      "averaged over the same steps",
      "equilibrium": f"cells with steps >= {_summary.EQUILIBRIUM_FACTOR} / (η̄ λ), "
      "η̄ the run's mean schedule multiplier",
      "timing": "vmapped_seconds: the whole grid in one program, compile "
      "included. sequential_*: the same run function jitted once and called "
      "per config, recompiling_*: a fresh program per config; both "
      "extrapolated from sequential_configs_timed configs to all configs.",
    },
  }
  figures = {
    "heatmap.png": lambda path: _sweep_plots.heatmaps(path, panels),
    "angular.png": lambda path: _sweep_plots.angular(path, panels, steps=steps),
  }
  return Study("sweep", payload, figures)


def _timing(result) -> dict[str, Any]:
  """``sweep.json``'s timing of one grid: its run, and the one-at-a-time runs."""
  return {
    "configs": result.metrics["angular_update"].size,
    "vmapped_seconds": result.run["seconds"],
    **{k: v for k, v in result.run.items() if k != "seconds"},
  }


def _hardware(timing: dict[str, Any]) -> dict[str, Any]:
  """What the grids ran on: the devices and processes the mesh spanned."""
  import jax

  return {
    "platform": jax.default_backend(),
    "devices": timing["devices"],
    "processes": timing["processes"],
  }


def _report(name: str, summary: dict, timing: dict, steps: int) -> list[str]:
  best = summary["best"]
  per_lr = ", ".join(
    f"{r['learning_rate']:.0e}:{r['weight_decay']:.0e}"
    for r in summary["best_weight_decay_per_lr"]
  )
  lines = [
    f"best test error {best['test_error']:.4f} at lr={best['learning_rate']:.3g}, "
    f"wd={best['weight_decay']:.3g} ({timing['configs']} runs vmapped in "
    f"{timing['vmapped_seconds']:.1f} s)",
    f"best wd per lr (lr:wd): {per_lr}",
    f"spread of the best wd over the {len(summary['good_rows'])} good lr rows: "
    f"{summary['best_wd_spread_decades']:.2f} decades; one wd for every lr "
    f"(wd={summary['transfer_weight_decay']:.0e}) costs "
    f"{100 * summary['transfer_regret']:.2f} points of test error on average",
  ]
  if "sequential_seconds_estimate" in timing:
    lines.append(
      f"one at a time: ~{timing['sequential_seconds_estimate']:.1f} s compiled "
      f"once, ~{timing['recompiling_seconds_estimate']:.0f} s recompiling "
      f"(extrapolated from {timing['sequential_configs_timed']} runs)"
    )
  eq = summary.get("equilibrium")
  if eq is not None and eq["min_weight_decay"] is None:
    lines.append(
      f"no cell reached rotational equilibrium: {steps} steps are shorter than "
      f"{_summary.EQUILIBRIUM_FACTOR:g} / (η̄ λ) for every λ of the grid"
    )
  elif eq is not None and eq["ratio_median"] is None:
    lines.append(f"every cell past the equilibrium time diverged ({eq['cells']})")
  elif eq is not None:
    lines.append(
      f"equilibrium reached for wd >= {eq['min_weight_decay']:.0e} (steps >= "
      f"{_summary.EQUILIBRIUM_FACTOR:g}/(η̄ wd)); there the measured angular "
      f"update is {eq['ratio_median']:.2f}x the prediction "
      f"(range {eq['ratio_min']:.2f}-{eq['ratio_max']:.2f}: the low end are "
      "runs that start far from their equilibrium norm); smaller wd: too few "
      "steps to equilibrate"
      + (
        f"; {eq['diverged_cells']} diverged cells left out"
        if eq["diverged_cells"]
        else ""
      )
    )
  return lines


def budgets(
  budgets_: list[int],
  learning_rate: float,
  weight_decays: np.ndarray,
  data: Split,
  arch: _models.Architecture,
  *,
  seeds: list[int],
  batch_size: int,
  settings: dict[str, Any],
  compensation: str | None = "auto",
  **options: Any,
) -> Study:
  """AdamW over λ at one α for several run lengths; the slope of log λ* vs
  log steps, next to normalized weight decay's −0.5."""
  runs, result = [], None
  for steps in budgets_:
    print(f"adamw, {steps} steps: {len(weight_decays)} wd x {len(seeds)} seed(s) ...")
    result = _sweep.run_grid(
      "adamw",
      data,
      arch,
      [learning_rate],
      weight_decays,
      seeds,
      steps=steps,
      batch_size=batch_size,
      compensation=compensation,
      **options,
    )
    errors = result.metrics["test_error"].mean(axis=-1)[0]
    seconds = result.run["seconds"]
    best = _summary.refined_minimum(weight_decays, errors)
    edge = _summary.best_at_edge(errors)
    print(
      f"  best wd {best:.2e} (test error {errors.min():.4f}; {seconds:.1f} s)"
      + ("; at the grid's edge: widen --wd-range" if edge else "")
    )
    runs.append(
      {
        "steps": steps,
        "test_error": [float(e) for e in errors],
        "best_weight_decay": best,
        "best_test_error": float(errors.min()),
        "best_at_grid_edge": edge,
        "vmapped_seconds": seconds,
      }
    )
  slope = _summary.budget_slope(budgets_, [r["best_weight_decay"] for r in runs])
  print(
    f"slope of log(best wd) against log(steps): {slope:+.2f} (normalized weight "
    "decay predicts -0.50; 0 means the best raw wd does not depend on the budget)"
  )
  assert result is not None, "at least one budget"
  payload = {
    "settings": settings,
    "hardware": _hardware(result.run),
    "learning_rate": learning_rate,
    "weight_decays": [float(w) for w in weight_decays],
    "runs": runs,
    "slope": slope,
    "normalized_weight_decay_slope": -0.5,
    "notes": "best_weight_decay: the grid's best λ refined by a parabola in "
    "log λ through it and its neighbours; slope: least squares of log λ* on "
    "log steps",
  }
  figures = {
    "budgets.png": lambda path: _plots.budgets(path, payload),
  }
  return Study("budgets", payload, figures)
