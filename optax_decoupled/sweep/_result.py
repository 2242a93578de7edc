"""A sweep's result: every cell's metrics, the summary, the file and figures."""

import dataclasses
import json
import os
import tempfile
from typing import Any

import jax
import numpy as np

from optax_decoupled.sweep import _plots, _summary


def _finite_or_none(value) -> float | None:
  """A number for JSON: None (null) for a diverged run's NaN or infinity."""
  value = float(value)
  return value if np.isfinite(value) else None


@dataclasses.dataclass
class SweepResult:
  """What :func:`run` returns.

  Attributes:
    optimizer: its name (a named optimizer's, or ``name=``).
    learning_rates, weight_decays: the grid's axes (float64).
    seeds: the seeds, the last axis of every metric.
    metrics: name -> array of shape (learning rates, weight decays, seeds):
      ``evaluate``'s metrics and ``angular_update``.
    metric: the metric the summary minimizes.
    steps, batch_size: of every run.
    decoupled: whether λ is a decoupled decay (False for an L2 coefficient,
      None when unknown: an optimizer given as a factory).
    predicted_angular_update: per λ, the rotational-equilibrium prediction
      over the same window as ``angular_update`` (named decoupled optimizers),
      else None.
    eta_mean: the run's mean decay rate per unit λ (``η_t``, times
      ``η_t / η_max`` when corrected), for the equilibrium time; or None.
    run: where and how it ran: devices, processes, chunks, configs per
      chunk, compile and total seconds, XLA's bytes per device.
  """

  optimizer: str
  learning_rates: np.ndarray
  weight_decays: np.ndarray
  seeds: list[int]
  metrics: dict[str, np.ndarray]
  metric: str
  steps: int
  batch_size: int
  decoupled: bool | None
  predicted_angular_update: np.ndarray | None
  eta_mean: float | None
  run: dict[str, Any]

  def rows(self) -> list[dict[str, Any]]:
    """One dict per (α, λ): each metric's mean over seeds and per seed."""
    rows = []
    for i, a in enumerate(self.learning_rates):
      for j, w in enumerate(self.weight_decays):
        row: dict[str, Any] = {
          "optimizer": self.optimizer,
          "learning_rate": float(a),
          "weight_decay": float(w),
        }
        for key, values in self.metrics.items():
          row[key] = _finite_or_none(values[i, j].mean())
          row[f"{key}_per_seed"] = [_finite_or_none(v) for v in values[i, j]]
        if self.predicted_angular_update is not None:
          row["predicted_angular_update"] = float(self.predicted_angular_update[j])
        rows.append(row)
    return rows

  def summary(self) -> dict[str, Any]:
    """The best cell, the best λ per α and its spread in decades over the good
    rows, the λ-transfer regret, and (named decoupled optimizers) the
    measured against predicted angular update where runs equilibrated."""
    rows = self.rows()
    summary = _summary.summarize(rows, self.optimizer, self.metric)
    if self.eta_mean is not None:
      eq = _summary.equilibrium(
        rows, self.optimizer, steps=self.steps, eta_mean=self.eta_mean
      )
      if eq is not None:
        summary["equilibrium"] = eq
    return summary

  def to_json(self) -> dict[str, Any]:
    return {
      "optimizer": self.optimizer,
      "metric": self.metric,
      "steps": self.steps,
      "batch_size": self.batch_size,
      "seeds": list(self.seeds),
      "summary": self.summary(),
      "rows": self.rows(),
      "run": self.run,
    }

  def save(self, path: str) -> None:
    """Writes :meth:`to_json` to ``path``, whole or not at all; in a run of
    several processes only process 0 writes."""
    write_json(path, self.to_json())

  def panel(self) -> dict[str, Any]:
    """This result as one panel of :func:`heatmaps` / :func:`angular`."""
    rows = self.rows()
    summary = self.summary()
    label = {True: "decoupled weight decay λ", False: "L2 coefficient λ"}
    panel = {
      "name": self.optimizer,
      "learning_rates": self.learning_rates,
      "weight_decays": self.weight_decays,
      "errors": _summary.grid(rows, self.optimizer, self.metric)[2],
      "angular_update": _summary.grid(rows, self.optimizer, "angular_update")[2],
      "best_weight_decay_per_lr": [
        r["weight_decay"] for r in summary["best_weight_decay_per_lr"]
      ],
      "equilibrium_min_wd": summary.get("equilibrium", {}).get("min_weight_decay"),
      "wd_label": label.get(self.decoupled, "weight decay λ"),  # type: ignore[arg-type]
      "angular_label": "tracked leaves",
    }
    if self.predicted_angular_update is not None:
      panel["predicted"] = self.predicted_angular_update
    return panel

  def heatmap(self, path: str) -> None:
    """The metric over the grid, each α row's best λ circled (Figure 2)."""
    heatmaps(path, [self])

  def angular(self, path: str) -> None:
    """The angular update against λ, one line per α, and its prediction."""
    angular(path, [self])


def heatmaps(path: str, results: list[SweepResult]) -> None:
  """One heatmap per result, side by side, on one colour scale."""
  if jax.process_index() == 0:
    _plots.heatmaps(path, [r.panel() for r in results])


def angular(path: str, results: list[SweepResult]) -> None:
  """One angular-update panel per result (same number of steps)."""
  if jax.process_index() == 0:
    _plots.angular(path, [r.panel() for r in results], steps=results[0].steps)


def write_json(path: str, payload: Any) -> None:
  """``payload`` as JSON at ``path``, replaced in one rename (process 0 only)."""
  if jax.process_index() != 0:
    return
  folder = os.path.dirname(os.path.abspath(path))
  with tempfile.NamedTemporaryFile(
    "w", dir=folder, suffix=".tmp", delete=False, encoding="utf-8"
  ) as f:
    json.dump(payload, f, indent=1, allow_nan=False)
  os.replace(f.name, path)
