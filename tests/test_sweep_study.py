"""The sweep's study: summary numbers, angular updates, the model, the data.

Every number is checked against a hand computation or NumPy, never against
the command's own output.
"""

from __future__ import annotations

import json
import math
import os
import socket

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("mnist1d")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from optax_decoupled.cli import _data, _main, _models  # noqa: E402
from optax_decoupled.sweep import _summary  # noqa: E402

WDS = [1e-4, 1e-3, 1e-2, 1e-1]
LRS = [1e-3, 1e-2, 1e-1, 1.0]
#: Test errors, rows α, columns λ. Rows 0-2 are "good" (best <= 1.5 x 0.2);
#: row 3 is not, and its best λ (the last column) must not count in the spread.
ERRORS = [
  [0.50, 0.30, 0.40, 0.60],
  [0.45, 0.20, 0.35, 0.50],
  [0.60, 0.55, 0.25, 0.70],
  [0.90, 0.90, 0.90, 0.85],
]


def _rows(optimizer="adamw"):
  rows = [
    {
      "optimizer": optimizer,
      "learning_rate": LRS[i],
      "weight_decay": WDS[j],
      "test_error": ERRORS[i][j],
    }
    for i in range(4)
    for j in range(4)
  ]
  return rows[::-1]  # any order


def test_summary_of_a_hand_built_sweep_json(tmp_path):
  path = tmp_path / "sweep.json"
  path.write_text(json.dumps({"rows": _rows() + _rows("adam_l2")}))
  rows = json.loads(path.read_text())["rows"]
  summary = _summary.summarize(rows, "adamw")
  assert summary["best"] == {
    "learning_rate": 1e-2,
    "weight_decay": 1e-3,
    "test_error": 0.2,
  }
  per_lr = [r["weight_decay"] for r in summary["best_weight_decay_per_lr"]]
  assert per_lr == [1e-3, 1e-3, 1e-2, 1e-1]
  assert summary["good_rows"] == [1e-3, 1e-2, 1e-1]
  # log10(1e-2) - log10(1e-3) over the good rows; the bad row's 1e-1 is out.
  assert summary["best_wd_spread_decades"] == pytest.approx(1.0)
  # Column means 0.6125, 0.4875, 0.475, 0.6625: λ = 1e-2 for every α costs
  # (0.40-0.30 + 0.35-0.20 + 0.25-0.25 + 0.90-0.85) / 4.
  assert summary["transfer_weight_decay"] == 1e-2
  assert summary["transfer_regret"] == pytest.approx(0.075)


def test_a_missing_error_counts_as_the_worst():
  """A null test error (a run with no finite result) is never the best cell,
  never a row's best λ, and never the refined minimum."""
  rows = _rows()
  for r in rows:
    if r["learning_rate"] == 1e-2 and r["weight_decay"] == 1e-3:
      r["test_error"] = None  # was the grid's best, 0.20
  summary = _summary.summarize(rows, "adamw")
  assert summary["best"]["test_error"] == 0.25, summary["best"]
  assert summary["best_weight_decay_per_lr"][1]["weight_decay"] == 1e-2
  assert _summary.refined_minimum(WDS, [0.3, float("nan"), 0.25, 0.4]) != WDS[1]
  assert not _summary.best_at_edge([float("nan"), 0.3, 0.4])


def test_summary_refuses_rows_that_are_not_a_grid():
  rows = _rows()[1:]
  with pytest.raises(ValueError, match="adamw rows do not fill"):
    _summary.summarize(rows, "adamw")


def test_equilibrium_counts_cells_with_steps_well_past_one_over_eta_lambda():
  """1000 steps at η̄ = 0.5: 3 / (η̄ λ) <= 1000 for λ >= 6e-3 only."""
  rows = [
    {
      "optimizer": "adamw",
      "weight_decay": wd,
      "angular_update": measured,
      "predicted_angular_update": 0.1,
    }
    for wd, measured in [(1e-3, 0.5), (1e-2, 0.09), (1e-1, 0.12), (1.0, 0.1)]
  ]
  eq = _summary.equilibrium(rows, "adamw", steps=1000, eta_mean=0.5)
  assert eq["min_weight_decay"] == 1e-2 and eq["cells"] == 3
  assert eq["ratio_median"] == pytest.approx(1.0)
  assert (eq["ratio_min"], eq["ratio_max"]) == pytest.approx((0.9, 1.2))
  none = _summary.equilibrium(rows, "adamw", steps=5, eta_mean=0.5)
  assert none == {"min_weight_decay": None, "cells": 0, "diverged_cells": 0}


def test_refined_minimum_finds_a_parabola_vertex_between_grid_points():
  """Error = (log10 λ + 2.3)²: the vertex 10^-2.3 from three grid points."""
  wds = np.geomspace(1e-5, 1, 11)
  errors = (np.log10(wds) + 2.3) ** 2
  assert _summary.refined_minimum(wds, errors) == pytest.approx(10**-2.3, rel=1e-9)
  # At an edge there is no parabola: the grid point itself.
  assert _summary.refined_minimum(wds, np.arange(11.0)) == 1e-5


def test_best_at_edge_flags_only_the_first_and_last_grid_points():
  assert _summary.best_at_edge([0.1, 0.2, 0.3]) and _summary.best_at_edge(
    [0.3, 0.2, 0.1]
  )
  assert not _summary.best_at_edge([0.3, 0.1, 0.2])


def test_budget_slope_is_minus_half_for_normalized_decay():
  steps = [750, 1500, 3000, 6000]
  assert _summary.budget_slope(steps, [0.05 / math.sqrt(t) for t in steps]) == (
    pytest.approx(-0.5)
  )
  assert _summary.budget_slope(steps, [3e-3] * 4) == pytest.approx(0.0, abs=1e-12)


def _bn_model():
  arch = _models.Architecture("bn", hidden=5, depth=1)
  return arch.make(3, 4, seed=0)


def _numpy_forward(model, x, mean=None, var=None):
  kernel = np.asarray(model.hidden[0].kernel[...], np.float64)
  h = x @ kernel
  mean = h.mean(0) if mean is None else mean
  var = h.var(0) if var is None else var
  z = np.maximum((h - mean) / np.sqrt(var + 1e-5), 0)
  out = z @ np.asarray(model.out.kernel[...]) + np.asarray(model.out.bias[...])
  return out, h.mean(0), h.var(0)


def test_batchnorm_forward_in_train_and_eval_mode_against_numpy():
  """Training mode normalizes with the batch's own statistics; after
  ``evaluate`` the test set is normalized with the whole train set's."""
  rng = np.random.default_rng(0)
  x_train, x_test = rng.normal(size=(20, 3)), rng.normal(2.0, 3.0, size=(7, 3))
  y_train, y_test = rng.integers(0, 4, 20), rng.integers(0, 4, 7)
  model = _bn_model()
  expected, mean, var = _numpy_forward(model, x_train)
  np.testing.assert_allclose(
    model(jnp.asarray(x_train, jnp.float32)), expected, rtol=1e-4, atol=1e-5
  )

  losses = _models.evaluate(
    model,
    *(
      jnp.asarray(a)
      for a in (x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test)
    ),
  )
  eval_logits, _, _ = _numpy_forward(model, x_test, mean, var)
  got = model(jnp.asarray(x_test, jnp.float32), use_running_average=True)
  np.testing.assert_allclose(got, eval_logits, rtol=1e-4, atol=1e-5)
  own_stats, _, _ = _numpy_forward(model, x_test)
  assert not np.allclose(got, own_stats, atol=1e-2)  # not the test batch's statistics
  log_probs = eval_logits - np.log(np.exp(eval_logits).sum(-1, keepdims=True))
  assert float(losses[2]) == pytest.approx(
    -log_probs[np.arange(7), y_test].mean(), rel=1e-4
  )
  assert float(losses[3]) == pytest.approx(np.mean(eval_logits.argmax(-1) != y_test))


@pytest.mark.parametrize("norm", ["bn", "ln"])
def test_normalized_hidden_kernels_are_scale_invariant(norm):
  """Multiplying a hidden kernel by 7 leaves the function unchanged (what
  makes decay a step-size control there); without normalization it does not."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 3)), jnp.float32)
  for model_norm, invariant in ((norm, True), ("mlp", False)):
    model = _models.Architecture(model_norm, hidden=6, depth=2).make(3, 4, seed=0)
    before = model(x)
    model.hidden[1].kernel[...] = 7.0 * model.hidden[1].kernel[...]
    assert np.allclose(model(x), before, rtol=1e-4, atol=1e-4) == invariant


def test_decay_masks_select_the_scale_invariant_kernels():
  from flax import nnx

  for norm, expected in (("bn", {"hidden"}), ("mlp", {"hidden", "out"})):
    arch = _models.Architecture(norm, hidden=4, depth=2)
    params = nnx.state(arch.make(3, 2, seed=0), nnx.Param)
    mask = arch.decay_mask()(params)
    decayed = {
      "/".join(str(getattr(k, "key", k)) for k in path)
      for path, bit in jax.tree_util.tree_leaves_with_path(mask)
      if bit
    }
    assert {p.split("/")[0] for p in decayed} == expected, decayed
    assert all("kernel" in p.split("/") for p in decayed), decayed


def test_kernel_angular_update_against_numpy():
  """‖Δθ‖/‖θ‖ per hidden kernel, averaged over the kernels, on a toy step."""
  from flax import nnx

  arch = _models.Architecture("bn", hidden=4, depth=2)
  params = nnx.state(arch.make(3, 2, seed=0), nnx.Param)
  rng = np.random.default_rng(2)
  step = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), params)
  new = jax.tree.map(lambda a, d: a + 0.01 * d, params, step)
  kernels = [np.asarray(params["hidden"][i]["kernel"][...], np.float64) for i in (0, 1)]
  deltas = [
    0.01 * np.asarray(step["hidden"][i]["kernel"][...], np.float64) for i in (0, 1)
  ]
  expected = np.mean(
    [
      np.linalg.norm(d) / np.linalg.norm(k)
      for k, d in zip(kernels, deltas, strict=True)
    ]
  )
  got = _models.kernel_angular_update(params, new)
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_mnist1d_is_generated_offline_deterministically_and_cached(
  tmp_path, monkeypatch
):
  def no_network(*args, **kwargs):
    raise OSError("network disabled in this test")

  monkeypatch.setattr(socket, "socket", no_network)
  monkeypatch.setattr(socket, "create_connection", no_network)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  first = _data.load_mnist1d()
  assert np.array_equal(np.random.get_state()[1], before)  # global state kept
  assert first.x_train.shape == (4000, 40) and first.x_test.shape == (10000, 40)
  assert first.x_train.dtype == np.float32 and first.y_train.dtype == np.int32
  assert sorted(np.unique(first.y_train)) == list(range(10)) and first.num_classes == 10
  again = _data.generate_mnist1d()
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a, b)
  # The second load reads the cache: generating again would fail here.
  monkeypatch.setattr(_data, "generate_mnist1d", no_network)
  cached = _data.load_mnist1d()
  for a, b in zip(first, cached, strict=True):
    np.testing.assert_array_equal(a, b)
  # A truncated cache (a run killed while another wrote it) is generated anew.
  path = _data.mnist1d_cache_path()
  with open(path, "r+b") as f:
    f.truncate(100)
  monkeypatch.setattr(_data, "generate_mnist1d", lambda: again)
  for a, b in zip(first, _data.load_mnist1d(), strict=True):
    np.testing.assert_array_equal(a, b)
  assert sorted(p.name for p in (tmp_path / "optax-decoupled").iterdir()) == [
    os.path.basename(path)
  ]


def test_budget_study_writes_budgets_json_and_png(tmp_path, capsys):
  out = tmp_path / "budgets"
  argv = ["sweep", "--budgets", "30,10", "--grid", "1x3", "--seeds", "1"]
  argv += ["--dataset", "digits", "--train-size", "300", "--hidden", "16"]
  argv += ["--batch-size", "32", "--out", str(out)]
  assert _main.main(argv) == 0
  printed = capsys.readouterr().out
  assert "slope of log(best wd)" in printed
  study = json.loads((out / "budgets.json").read_text())
  assert [r["steps"] for r in study["runs"]] == [10, 30]
  assert study["settings"]["optimizers"] == "adamw"
  assert study["weight_decays"] == pytest.approx([1e-5, 10**-2.5, 1.0])
  best = [r["best_weight_decay"] for r in study["runs"]]
  # A best λ on the grid's edge is flagged, in budgets.json and on screen.
  edges = [r["best_at_grid_edge"] for r in study["runs"]]
  assert edges == [b in (1e-5, 1.0) for b in best], (edges, best)
  assert printed.count("at the grid's edge") == sum(edges), printed
  assert study["slope"] == pytest.approx(
    math.log(best[1] / best[0]) / math.log(3), abs=1e-9
  )
  assert sorted(p.name for p in out.iterdir()) == ["budgets.json", "budgets.png"]


def test_diverged_cells_are_null_and_left_out_of_the_ratios():
  """A run whose angular update is NaN is written as null: the grid still
  assembles, and the ratios use the finite cells only."""
  rows = [
    {
      "optimizer": "adamw",
      "learning_rate": lr,
      "weight_decay": 0.1,
      "test_error": 0.5,
      "angular_update": measured,
      "predicted_angular_update": 0.1,
    }
    for lr, measured in [(1e-3, 0.08), (1e-2, None)]
  ]
  _, _, angles = _summary.grid(rows, "adamw", "angular_update")
  assert angles[0, 0] == 0.08 and np.isnan(angles[1, 0])
  eq = _summary.equilibrium(rows, "adamw", steps=1000, eta_mean=0.5)
  assert eq["cells"] == 2 and eq["diverged_cells"] == 1
  assert eq["ratio_median"] == pytest.approx(0.8)


def test_a_row_exactly_at_the_good_row_factor_counts_as_good():
  """Rows whose best error is within ``GOOD_ROW_FACTOR`` x the grid's best
  count for the spread, the boundary included: a row at exactly 1.5 x 0.25 =
  0.375 is good (its best λ 1e-1 widens the spread to 2 decades), one just
  above is not (a change of ``<=`` to ``<`` fails here). Binary-exact errors,
  so 1.5 x best is exactly the row's."""
  lrs, wds = [1e-3, 1e-2, 1e-1], [1e-3, 1e-2, 1e-1]
  grid = [[0.5, 0.5, 0.375], [0.25, 0.5, 0.5], [0.5, 0.5, 0.5]]

  def rows(edge):
    grid[0][2] = edge
    return [
      {
        "optimizer": "adamw",
        "learning_rate": a,
        "weight_decay": w,
        "test_error": grid[i][j],
      }
      for i, a in enumerate(lrs)
      for j, w in enumerate(wds)
    ]

  assert _summary.GOOD_ROW_FACTOR * 0.25 == 0.375
  at_factor = _summary.summarize(rows(0.375), "adamw")
  assert at_factor["good_rows"] == [1e-3, 1e-2]
  assert at_factor["best_wd_spread_decades"] == pytest.approx(2.0)
  above = _summary.summarize(rows(0.375 + 2**-10), "adamw")
  assert above["good_rows"] == [1e-2]
  assert above["best_wd_spread_decades"] == 0.0
