"""What a sweep shows, in numbers: how far the best weight decay moves with α.

Pure NumPy on the rows of ``sweep.json``, so the numbers can be recomputed
from the file alone (and tested on a hand-built one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: α rows whose best error is within this factor of the grid's best count as
#: "good" rows for the spread of the best λ.
GOOD_ROW_FACTOR = 1.5
#: A cell counts as equilibrated when its run is this many times longer than
#: the rotational equilibrium's time scale 1 / (η̄ λ).
EQUILIBRIUM_FACTOR = 3.0


def grid(rows: list[dict], optimizer: str, key: str = "test_error"):
  """``(learning_rates, weight_decays, values[lr, wd])`` of one optimizer."""
  mine = [r for r in rows if r["optimizer"] == optimizer]
  lrs = sorted({r["learning_rate"] for r in mine})
  wds = sorted({r["weight_decay"] for r in mine})
  values = np.full((len(lrs), len(wds)), np.nan)
  filled = np.zeros(values.shape, bool)
  for r in mine:
    i, j = lrs.index(r["learning_rate"]), wds.index(r["weight_decay"])
    filled[i, j] = True
    values[i, j] = np.nan if r[key] is None else r[key]  # null: not finite
  if not filled.all():
    raise ValueError(f"the {optimizer} rows do not fill a learning-rate x decay grid")
  return np.asarray(lrs), np.asarray(wds), values


def summarize(
  rows: list[dict], optimizer: str, key: str = "test_error"
) -> dict[str, Any]:
  """Best cell, best λ per α, its spread, and the λ-transfer regret of ``key``
  (lower is better).

  - ``best_weight_decay_per_lr``: the λ of the lowest ``key`` in each α row.
  - ``best_wd_spread_decades``: ``log10(max λ*) - log10(min λ*)`` over the α
    rows whose best error is within ``GOOD_ROW_FACTOR`` of the grid's best.
    Small when the best λ does not depend on α (separable); large when it
    slides along a diagonal.
  - ``transfer_regret``: tune λ once, at the λ column with the lowest error
    averaged over all α rows; the mean over α rows of that column's error
    minus the row's own best error.
  """
  lrs, wds, errors = grid(rows, optimizer, key)
  errors = _worst_if_missing(errors)
  i, j = np.unravel_index(np.argmin(errors), errors.shape)
  best_per_row = errors.min(axis=1)
  best_wd = wds[errors.argmin(axis=1)]
  good = best_per_row <= GOOD_ROW_FACTOR * errors[i, j]
  spread = float(np.log10(best_wd[good].max()) - np.log10(best_wd[good].min()))
  column = int(np.argmin(errors.mean(axis=0)))
  return {
    "best": {
      "learning_rate": float(lrs[i]),
      "weight_decay": float(wds[j]),
      key: float(errors[i, j]),
    },
    "best_weight_decay_per_lr": [
      {"learning_rate": float(a), "weight_decay": float(w), key: float(e)}
      for a, w, e in zip(lrs, best_wd, best_per_row, strict=True)
    ],
    "good_rows": [float(a) for a in lrs[good]],
    "best_wd_spread_decades": spread,
    "transfer_weight_decay": float(wds[column]),
    "transfer_regret": float(np.mean(errors[:, column] - best_per_row)),
  }


def equilibrium(rows: list[dict], optimizer: str, *, steps: int, eta_mean: float):
  """Measured vs predicted angular update where the runs reached equilibrium.

  A cell is equilibrated when ``steps >= EQUILIBRIUM_FACTOR / (η̄ λ)``.
  Returns the smallest such λ and the measured / predicted ratios there
  (all α rows), or None when no cell of the grid equilibrated.
  """
  mine = [r for r in rows if r["optimizer"] == optimizer]
  if not mine or "predicted_angular_update" not in mine[0]:
    return None
  reached = [
    r for r in mine if steps * eta_mean * r["weight_decay"] >= EQUILIBRIUM_FACTOR
  ]
  if not reached:
    return {"min_weight_decay": None, "cells": 0, "diverged_cells": 0}
  finite = [r for r in reached if r["angular_update"] is not None]
  ratios = np.asarray(
    [r["angular_update"] / r["predicted_angular_update"] for r in finite]
  )
  return {
    "min_weight_decay": float(min(r["weight_decay"] for r in reached)),
    "ratio_median": float(np.median(ratios)) if finite else None,
    "ratio_min": float(ratios.min()) if finite else None,
    "ratio_max": float(ratios.max()) if finite else None,
    "cells": len(reached),
    "diverged_cells": len(reached) - len(finite),
  }


def budget_slope(budgets: list[int], best_wds: list[float]) -> float:
  """Least-squares slope of log λ* against log steps (normalized decay: −0.5)."""
  slope, _ = np.polyfit(np.log(budgets), np.log(best_wds), 1)
  return float(slope)


def _worst_if_missing(errors) -> np.ndarray:
  """A missing (null, not finite) error counts as the worst possible."""
  errors = np.asarray(errors, np.float64)
  return np.where(np.isnan(errors), np.inf, errors)


def best_at_edge(errors) -> bool:
  """Whether the lowest error sits on the first or last grid point (so the
  true best may lie outside the grid)."""
  k = int(np.argmin(_worst_if_missing(errors)))
  return k in (0, len(errors) - 1)


def refined_minimum(weight_decays, errors) -> float:
  """The best λ on a log grid, refined by a parabola through the best point
  and its two neighbours in log λ (the grid point itself at an edge)."""
  logs = np.log10(np.asarray(weight_decays, np.float64))
  errors = _worst_if_missing(errors)
  k = int(np.argmin(errors))
  if k == 0 or k == len(errors) - 1:
    return float(10 ** logs[k])
  a, b, _ = np.polyfit(logs[k - 1 : k + 2], errors[k - 1 : k + 2], 2)
  if a <= 0:
    return float(10 ** logs[k])
  return float(10 ** np.clip(-b / (2 * a), logs[k - 1], logs[k + 1]))
