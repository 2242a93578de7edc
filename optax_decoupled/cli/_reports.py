"""The docs' numbers from the sweep command's JSON, as Markdown.

Each function takes a committed ``sweep.json`` (or ``budgets.json``) and
returns the blocks that ``docs/render.py`` writes into the pages: tables and
the sentences that quote numbers, so that none is typed by hand.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from optax_decoupled.cli._clock import describe_time
from optax_decoupled.sweep._summary import GOOD_ROW_FACTOR

LABELS = {
  "adam_l2": "Adam + L2",
  "adamw": "AdamW",
  "sgd_l2": "SGD + L2",
  "sgdw": "SGDW",
  "adamw_cautious": "cautious AdamW",
  "adamw_corrected": "corrected AdamW",
}


def _e(x: float) -> str:
  """``3e-3`` style, as the grid's values are written."""
  return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _pct(x: float, digits: int = 1) -> str:
  return f"{100 * x:.{digits}f} %"


def _points(x: float) -> str:
  return f"{100 * x:.2f} points"


def _rows(summary: dict) -> list[dict]:
  return summary["best_weight_decay_per_lr"]


def _good(summary: dict) -> list[dict]:
  good = set(summary["good_rows"])
  return [r for r in _rows(summary) if r["learning_rate"] in good]


def _lambda_range(summary: dict) -> str:
  values = sorted({r["weight_decay"] for r in _good(summary)})
  return _e(values[0]) if len(values) == 1 else f"{_e(values[0])} to {_e(values[-1])}"


def _label(name: str) -> str:
  return LABELS.get(name, name)


def sweep_table(payload: dict) -> str:
  """Best cell, best λ per α row, spread and regret, one row per optimizer."""
  summary = payload["summary"]
  first = _rows(next(iter(summary.values())))
  alphas = f"α = {_e(first[0]['learning_rate'])} … {_e(first[-1]['learning_rate'])}"
  lines = [
    f"| | best cell | best λ per α row ({alphas}) | spread of the best λ "
    "| one λ for every α costs |",
    "|---|---|---|---|---|",
  ]
  for name, s in summary.items():
    best = s["best"]
    per_row = ", ".join(_e(r["weight_decay"]) for r in _rows(s))
    lines.append(
      f"| {_label(name)} | {_pct(best['test_error'])} (α "
      f"{best['learning_rate']:.1e}, λ {best['weight_decay']:.1e}) | {per_row} "
      f"| **{s['best_wd_spread_decades']:.1f} decades** "
      f"| {_points(s['transfer_regret'])} |"
    )
  return "\n".join(lines)


def _slide(name: str, s: dict) -> str:
  """How a row's best λ moves with α, over the good rows."""
  good = _good(s)
  first, last = good[0], good[-1]
  return (
    f"{_label(name)}'s best λ runs from {_e(first['weight_decay'])} at "
    f"α = {_e(first['learning_rate'])} to {_e(last['weight_decay'])} at "
    f"α = {_e(last['learning_rate'])} ({s['best_wd_spread_decades']:.1f} decades over "
    f"the {len(good)} good α rows, those within {GOOD_ROW_FACTOR:g}x of the best "
    f"error; {_points(s['transfer_regret'])} of regret)"
  )


def _equilibrium(name: str, s: dict) -> str:
  eq = s.get("equilibrium") or {}
  if not eq.get("cells"):
    return f"no {_label(name)} cell reached equilibrium"
  if eq.get("ratio_median") is None:
    return f"every {_label(name)} cell past the equilibrium time diverged"
  return (
    f"{_label(name)}'s measured / predicted angular update is "
    f"{eq['ratio_median']:.2f} in the median over the {eq['cells']} cells with "
    f"λ ≥ {_e(eq['min_weight_decay'])} (range {eq['ratio_min']:.2f}–"
    f"{eq['ratio_max']:.2f})"
  )


def _seed_gap(payload: dict, name: str) -> float:
  """How far apart the two seeds of the optimizer's best cell are (points)."""
  best = payload["summary"][name]["best"]
  row = next(
    r
    for r in payload["rows"]
    if r["optimizer"] == name
    and r["learning_rate"] == best["learning_rate"]
    and r["weight_decay"] == best["weight_decay"]
  )
  seeds = [e for e in row["test_error_per_seed"] if e is not None]
  return max(seeds) - min(seeds)


def _versus(payload: dict, a: str, b: str) -> str:
  """The two optimizers' best cells, and whether the gap exceeds the seeds'."""
  s = payload["summary"]
  ea, eb = s[a]["best"]["test_error"], s[b]["best"]["test_error"]
  gap = max(_seed_gap(payload, a), _seed_gap(payload, b))
  verdict = (
    f"within the noise: the two seeds of a best cell differ by up to {_points(gap)}"
    if abs(ea - eb) <= gap
    else f"more than the {_points(gap)} between the two seeds of a best cell"
  )
  return (
    f"{_label(a)}'s best cell {_pct(ea)} against {_label(b)}'s {_pct(eb)}, {verdict}"
  )


def sweep_blocks(payload: dict) -> dict[str, str]:
  """The default sweep (Adam + L2 against AdamW): sweep.md and the README."""
  s = payload["summary"]
  t = payload.get("time")
  grids = ", ".join(
    f"{_label(n)} {v['vmapped_seconds']:.0f} s" for n, v in payload["timing"].items()
  )
  l2, w = s["adam_l2"]["best_wd_spread_decades"], s["adamw"]["best_wd_spread_decades"]
  # The thresholds for "as in Figure 2": a diagonal and a column.
  figure2 = l2 >= 1.5 and w <= 0.5
  return {
    "table": sweep_table(payload),
    "pattern": f"{_slide('adam_l2', s['adam_l2'])}; {_slide('adamw', s['adamw'])}.",
    "equilibrium": _equilibrium("adamw", s["adamw"]) + ".",
    "versus": _versus(payload, "adamw", "adam_l2") + ".",
    "readme": (
      ("As in the paper's Figure 2" if figure2 else "Unlike the paper's Figure 2")
      + f", Adam+L2's best λ moves over {l2:.1f} decades of the grid as α changes "
      f"while AdamW's stays at {_lambda_range(s['adamw'])} over the α rows within "
      f"{GOOD_ROW_FACTOR:g}x of its best error "
      f"({w:.1f} decades)" + (": α and λ can be tuned separately." if figure2 else ".")
    ),
    "time": (
      f"The default command took {describe_time(t)} at the end: the data, both "
      f"grids with their compilation ({grids}) and the summary; not the figures."
      if t
      else "(not timed)"
    ),
  }


def control_blocks(payload: dict) -> dict[str, str]:
  """``--model mlp``: the pattern without normalization."""
  s = payload["summary"]
  return {
    "findings": f"{_slide('adam_l2', s['adam_l2'])}; {_slide('adamw', s['adamw'])}."
  }


def sgd_blocks(payload: dict) -> dict[str, str]:
  s = payload["summary"]
  return {
    "findings": (
      f"{_slide('sgd_l2', s['sgd_l2'])}; {_slide('sgdw', s['sgdw'])}. Best cells: "
      f"{_versus(payload, 'sgdw', 'sgd_l2')}. {_equilibrium('sgdw', s['sgdw'])}."
    ),
  }


def cautious_blocks(payload: dict) -> dict[str, str]:
  """``--optimizers adamw,adamw_cautious``: cell by cell, and the best cells."""
  rows = payload["rows"]
  plain = {
    (r["learning_rate"], r["weight_decay"]): r
    for r in rows
    if r["optimizer"] == "adamw"
  }
  pairs = [
    (plain[(r["learning_rate"], r["weight_decay"])], r)
    for r in rows
    if r["optimizer"] == "adamw_cautious"
  ]

  def value(r, key):
    return math.inf if r[key] is None else r[key]

  diffs = sorted(value(c, "test_error") - value(p, "test_error") for p, c in pairs)
  finite = [d for d in diffs if math.isfinite(d)]
  better = sum(d <= 0 for d in diffs)
  loss_ratios = sorted(
    value(c, "train_loss") / value(p, "train_loss")
    for p, c in pairs
    if math.isfinite(value(p, "train_loss")) and value(p, "train_loss") > 0
  )
  lower_loss = sum(r < 1 for r in loss_ratios)
  median = statistics.median(finite)
  s = payload["summary"]
  cautious = s["adamw_cautious"]
  return {
    "findings": (
      f"cautious has the lower or equal test error in {better} of {len(pairs)} cells "
      f"(median {100 * median:+.1f} points, mean "
      f"{100 * sum(finite) / len(finite):+.1f}) and the lower train loss in "
      f"{lower_loss} (median ratio {statistics.median(loss_ratios):.2f}). "
      f"{_versus(payload, 'adamw_cautious', 'adamw')}; cautious's best λ is "
      f"{_lambda_range(cautious)} over its good α rows "
      f"({cautious['best_wd_spread_decades']:.1f} decades)."
    ),
    "readme": (
      f"- Cautious decay: best cell {_pct(cautious['best']['test_error'])} against "
      f"AdamW's {_pct(s['adamw']['best']['test_error'])}, equal or better in {better} "
      f"of {len(pairs)} cells of the sweep's grid."
    ),
  }


def budgets_blocks(payload: dict) -> dict[str, str]:
  runs = payload["runs"]
  steps = ", ".join(str(r["steps"]) for r in runs)
  best = ", ".join(f"{r['best_weight_decay']:.1e}" for r in runs)
  errors = ", ".join(_pct(r["best_test_error"]) for r in runs)
  return {
    "findings": (
      f"At α = {payload['learning_rate']:g}, the best raw λ (the grid's best, refined "
      f"by a parabola in log λ) for {steps} steps is {best}: a fitted slope of "
      f"**{payload['slope']:+.2f}**, not −0.5. The best errors are {errors}."
    ),
  }


def corrected_blocks(payload: dict) -> dict[str, str]:
  runs = payload["runs"]
  plain, corrected = runs["adamw"], runs["adamw_corrected"]
  h = plain["hyperparameters"]
  return {
    "findings": (
      f"`python examples/corrected_decay.py` (α = {h['learning_rate']:g}, λ = "
      f"{h['weight_decay']:g}, {payload['steps']} steps): the hidden kernels' "
      f"gradient norm over the last tenth of the run is "
      f"{plain['grad_norm_end_over_middle']:.2f}x its middle-half mean with `adamw` "
      f"and {corrected['grad_norm_end_over_middle']:.2f}x with `adamw_corrected`, "
      f"and {payload['corrected_end_grad_norm_over_adamw']:.2f}x AdamW's in "
      f"absolute terms; test accuracy {plain['test_accuracy']:.3f} and "
      f"{corrected['test_accuracy']:.3f}."
    ),
    "readme": (
      f"- Corrected decay: the hidden kernels' gradient norm over the last tenth of a "
      f"cosine run is {corrected['grad_norm_end_over_middle']:.2f}x its middle-half "
      f"mean (AdamW: {plain['grad_norm_end_over_middle']:.2f}x) and "
      f"{payload['corrected_end_grad_norm_over_adamw']:.2f}x AdamW's."
    ),
  }


def equilibrium_blocks(default: dict, sgd: dict) -> dict[str, str]:
  """The equilibrium claim of beyond.md, from the default and the SGD sweeps."""
  return {
    "findings": (
      f"{_equilibrium('sgdw', sgd['summary']['sgdw'])}; "
      f"{_equilibrium('adamw', default['summary']['adamw'])}."
    ),
  }


def cnn_blocks(bn: dict, plain: dict) -> dict[str, str]:
  """examples/sweep_digits_cnn.py: the pattern on a CNN, with BatchNorm and without."""
  lines = sweep_table(bn).split("\n")
  lines[0] = lines[0].replace("| |", "| CNN |", 1)
  lines[1] = "|---" + lines[1]
  lines[0] = lines[0].replace("| CNN |", "| CNN | |", 1)
  rows = []
  for name, payload in (("BatchNorm", bn), ("no normalization", plain)):
    rows += [f"| {name} " + r for r in sweep_table(payload).split("\n")[2:]]
  table = "\n".join(lines[:2] + rows)

  def most(summary: dict, grid: list[float]) -> str:
    """How many α rows share the most common best λ, and which λ."""
    best = [r["weight_decay"] for r in _rows(summary)]
    top = max(set(best), key=best.count)
    edge = " (the grid's smallest: no decay helps)" if top == min(grid) else ""
    return f"{_e(top)} in {best.count(top)} of {len(best)} α rows{edge}"

  def verdict(payload: dict) -> str:
    s = payload["summary"]
    l2 = s["adam_l2"]["best_wd_spread_decades"]
    w = s["adamw"]["best_wd_spread_decades"]
    if w < l2:
      shape = "AdamW's best λ moves less with α than Adam+L2's"
    elif w == l2:
      shape = "AdamW's and Adam+L2's best λ move equally with α"
    else:
      shape = "AdamW's best λ moves more with α than Adam+L2's"
    grid = sorted({r["weight_decay"] for r in payload["rows"]})
    return (
      f"{shape} over the good rows ({w:.1f} against {l2:.1f} decades); the most "
      f"common best λ is AdamW's {most(s['adamw'], grid)}, Adam+L2's "
      f"{most(s['adam_l2'], grid)}; one λ for every α costs AdamW "
      f"{_points(s['adamw']['transfer_regret'])} and Adam+L2 "
      f"{_points(s['adam_l2']['transfer_regret'])}. "
      f"{_versus(payload, 'adamw', 'adam_l2')}"
    )

  examples = bn["settings"]["test_examples"]
  return {
    "table": table,
    "findings": (
      f"**With BatchNorm**, {verdict(bn)}. **Without normalization**, "
      f"{verdict(plain)}. One test example is {100 / examples:.2f} points of the "
      f"{examples}."
    ),
  }


def render_all(load: Any) -> dict[str, dict[str, str]]:
  """Every sweep-family block, by study, from ``load(path) -> payload``."""
  default = load("sweep/sweep.json")
  sgd = load("sweep-sgd/sweep.json")
  return {
    "sweep": sweep_blocks(default),
    "sweep-mlp": control_blocks(load("sweep-mlp/sweep.json")),
    "sweep-sgd": sgd_blocks(sgd),
    "sweep-cautious": cautious_blocks(load("sweep-cautious/sweep.json")),
    "budgets": budgets_blocks(load("budgets/budgets.json")),
    "corrected": corrected_blocks(load("corrected/corrected.json")),
    "equilibrium": equilibrium_blocks(default, sgd),
    "sweep-cnn": cnn_blocks(load("sweep-cnn/bn.json"), load("sweep-cnn/plain.json")),
  }
