"""The ``optax-decoupled`` command line: outputs, the vmapped sweep, bad input.

Quick settings (few steps, tiny grids) so the whole file runs in well under a
minute and a half on two cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from optax_decoupled.cli import _data, _models, _train  # noqa: E402
from optax_decoupled.cli import _main as _cli  # noqa: E402
from optax_decoupled.sweep import _engine  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == PNG


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
  """scikit-learn's digits saved as the user's own ``.npz`` would be."""
  from sklearn.datasets import load_digits

  data = load_digits()
  path = tmp_path_factory.mktemp("data") / "digits.npz"
  np.savez(path, x=data.data, y=data.target)
  return str(path)


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("sweep") / "out"
  argv = ["sweep", "--grid", "2", "--steps", "40", "--seeds", "2", "--hidden", "32"]
  argv += ["--dataset", "digits", "--test-fraction", "0.5", "--train-size", "500"]
  argv += ["--label-noise", "0.3", "--batch-size", "32"]
  argv += ["--sequential-configs", "1", "--out", str(out)]
  assert _cli.main(argv) == 0
  with open(out / "sweep.json") as f:
    return out, json.load(f)


def test_train_on_npz_reaches_sane_accuracy_and_writes_outputs(
  tmp_path, digits_npz, capsys
):
  """A 150-step AdamW run on user data: >= 0.85 test accuracy, all keys, a PNG;
  the normalized decay equals λ_norm sqrt(b / (B T)) = λ_norm / sqrt(steps)."""
  out = tmp_path / "run"
  argv = ["train", "--optimizer", "adamw", "--steps", "150", "--quiet"]
  argv += ["--normalized-weight-decay", "0.05", "--data", digits_npz]
  assert _cli.main([*argv, "--out", str(out)]) == 0
  assert "test accuracy" in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ["curves.npz", "metrics.json", "train.png"]
  assert _is_png(out / "train.png")
  metrics = json.loads((out / "metrics.json").read_text())
  for key in ("test_accuracy", "train_loss", "elapsed_seconds", "steps"):
    assert key in metrics, sorted(metrics)
  hyper = metrics["hyperparameters"]
  assert hyper["optimizer"] == "adamw" and hyper["learning_rate"] == 3e-3, hyper
  assert hyper["normalized_weight_decay"] == 0.05 and hyper["batch_size"] == 64
  assert metrics["steps"] == 150 and hyper["train_examples"] == 1347, metrics
  assert metrics["test_accuracy"] >= 0.85, metrics["test_accuracy"]
  assert math.isclose(
    metrics["weight_decay_from_normalized"], 0.05 / math.sqrt(150), rel_tol=1e-9
  ), metrics["weight_decay_from_normalized"]


def test_train_records_angular_update_and_its_equilibrium_prediction(tmp_path):
  """adamw_corrected on digits: curves.npz holds every step; the equilibrium
  curve is sqrt(2 λ_t η_t (1-β1)/(1+β1)) with the corrected λ_t = λ η_t / η_max,
  η_t the cosine 0.5 (1 + cos(π t / T)), computed here in NumPy."""
  out = tmp_path / "run"
  argv = ["train", "--optimizer", "adamw_corrected", "--steps", "40", "--quiet"]
  argv += ["--dataset", "digits", "--weight-decay", "0.01", "--hidden", "16"]
  assert _cli.main([*argv, "--out", str(out)]) == 0
  curves = np.load(out / "curves.npz")
  t = np.arange(40)
  eta = 0.5 * (1 + np.cos(np.pi * t / 40))
  np.testing.assert_allclose(curves["eta"], eta, rtol=1e-5, atol=1e-7)
  expected = np.sqrt(2 * (0.01 * eta) * eta * 0.1 / 1.9)
  np.testing.assert_allclose(
    curves["equilibrium_angular_update"], expected, rtol=1e-5, atol=1e-9
  )
  np.testing.assert_allclose(
    curves["effective_decay"], 0.01 * eta**2, rtol=1e-5, atol=1e-9
  )
  assert curves["angular_update"].shape == (40,) and np.all(
    curves["angular_update"] > 0
  )
  assert np.all(curves["grad_norm"] > 0)
  metrics = json.loads((out / "metrics.json").read_text())
  window = slice(10, 30)
  assert metrics["angular_update_middle_mean"] == pytest.approx(
    curves["angular_update"][window].mean(), rel=1e-6
  )
  assert metrics["equilibrium_angular_update_middle_mean"] == pytest.approx(
    expected[window].mean(), rel=1e-5
  )
  ratio = curves["grad_norm"][-4:].mean() / curves["grad_norm"][window].mean()
  assert metrics["grad_norm_end_over_middle"] == pytest.approx(ratio, rel=1e-5)


def test_corrected_decay_example_runs_both_optimizers(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "examples"))
  try:
    import corrected_decay
  finally:
    sys.path.pop(0)
  ratios = corrected_decay.run(20, 1e-2, 3e-3, str(tmp_path))
  assert sorted(ratios) == ["adamw", "adamw_corrected"]
  assert all(np.isfinite(r) and r > 0 for r in ratios.values()), ratios
  assert _is_png(corrected_decay.plot(str(tmp_path), 20))
  # corrected.json, which the docs quote: the ratios, and the end-of-run
  # gradient norms (last 2 of 20 steps) of the two runs against each other.
  summary = corrected_decay.summary(str(tmp_path), 20)
  for name, ratio in ratios.items():
    assert summary["runs"][name]["grad_norm_end_over_middle"] == ratio
  end = {
    n: np.load(tmp_path / n / "curves.npz")["grad_norm"][-2:].mean() for n in ratios
  }
  assert summary["corrected_end_grad_norm_over_adamw"] == pytest.approx(
    end["adamw_corrected"] / end["adamw"], rel=1e-6
  )


def test_sweep_writes_one_row_per_optimizer_lr_wd_and_a_heatmap(sweep_run):
  """2 optimizers x 2 x 2 grid = 8 rows with the required keys, timing, PNG."""
  out, sweep = sweep_run
  rows = sweep["rows"]
  assert len(rows) == 8, len(rows)
  assert {r["optimizer"] for r in rows} == {"adam_l2", "adamw"}
  for row in rows:
    for key in ("optimizer", "learning_rate", "weight_decay", "test_error"):
      assert key in row, row
    assert 0 <= row["test_error"] <= 1 and np.isfinite(row["train_loss"]), row
    assert len(row["test_error_per_seed"]) == 2, row
  # The grid's corners are the default ranges (log-spaced, N = 2).
  adamw = [r for r in rows if r["optimizer"] == "adamw"]
  assert sorted({r["learning_rate"] for r in adamw}) == pytest.approx([1e-4, 1e-1])
  assert sorted({r["weight_decay"] for r in adamw}) == pytest.approx([1e-5, 1.0])
  for name in ("adam_l2", "adamw"):
    timing = sweep["timing"][name]
    assert timing["configs"] == 8 and timing["vmapped_seconds"] > 0, timing
    assert timing["sequential_configs_timed"] == 1, timing
    assert timing["devices"] == 8 and timing["chunks"] == 1, timing  # conftest's 8
    summary = sweep["summary"][name]
    assert len(summary["best_weight_decay_per_lr"]) == 2, summary
    assert summary["best_wd_spread_decades"] >= 0, summary
  # Decoupled rows carry the equilibrium prediction; L2 rows have none.
  assert all("predicted_angular_update" in r for r in adamw)
  assert not any(
    "predicted_angular_update" in r for r in rows if r["optimizer"] == "adam_l2"
  )
  assert sorted(os.listdir(out)) == ["angular.png", "heatmap.png", "sweep.json"]
  assert _is_png(out / "heatmap.png") and _is_png(out / "angular.png")
  assert sweep["hardware"] == {"platform": "cpu", "devices": 8, "processes": 1}


@pytest.mark.parametrize("optimizer", ["adam_l2", "adamw"])
def test_vmapped_sweep_cell_equals_a_train_run_alone(sweep_run, optimizer):
  """Independent check of the vmap + inject_hyperparams path: one grid cell
  (seed 0) matches the same run through ``train``'s nnx.Optimizer loop."""
  _, sweep = sweep_run
  row = next(
    r for r in sweep["rows"] if r["optimizer"] == optimizer and r["weight_decay"] > 1e-3
  )
  x, y = _data.load_digits()
  data = _data.split(x, y, seed=0, test_fraction=0.5, train_size=500)
  data = _data.corrupt_labels(data, 0.3, seed=0)
  arch = _models.Architecture("bn", hidden=32, depth=2)
  recipe = _train.Recipe(
    optimizer,
    row["learning_rate"],
    row["weight_decay"],
    40,
    32,
    len(data.y_train),
    mask=arch.decay_mask(),
  )
  alone = _train.train(recipe, data, arch=arch, seed=0, progress=False)
  # The angular update of the same run, over the same window.
  window = alone["curves"]["angular_update"][_engine.angle_window(40)]
  assert math.isclose(window.mean(), row["angular_update_per_seed"][0], rel_tol=2e-3)
  loss = row["train_loss_per_seed"][0]
  assert math.isclose(alone["train_loss"], loss, rel_tol=2e-3), (alone, row)
  # Test error counts misclassified examples: allow one of float rounding.
  error = 1 - alone["test_accuracy"]
  assert abs(error - row["test_error_per_seed"][0]) <= 1.5 / len(data.y_test), (
    error,
    row,
  )


@pytest.mark.parametrize("optimizer", ["adamw_cautious", "sgdw_corrected"])
def test_sweep_variant_cell_equals_a_train_run_alone(tmp_path, optimizer):
  """The variants' flags reach the optimizer in both paths: a 1 x 1 sweep of
  a cautious / corrected optimizer matches the same run through ``train``
  (and differs from the plain optimizer's run)."""
  out = tmp_path / "sweep"
  argv = ["sweep", "--optimizers", optimizer, "--grid", "1", "--seeds", "1"]
  argv += ["--lr-range", "0.05,0.05", "--wd-range", "0.3,0.3", "--steps", "30"]
  argv += ["--dataset", "digits", "--train-size", "300", "--hidden", "16"]
  argv += ["--sequential-configs", "2"]  # one config: nothing to time against
  assert _cli.main([*argv, "--batch-size", "32", "--out", str(out)]) == 0
  sweep = json.loads((out / "sweep.json").read_text())
  (row,) = sweep["rows"]
  assert "sequential_configs_timed" not in sweep["timing"][optimizer]
  # The equilibrium prediction uses the variant's decay: λ η_t / η_max per
  # step for a corrected one (η_max = 1), λ for a cautious one.
  eta = 0.5 * (1 + np.cos(np.pi * np.arange(30) / 30))[7:22]
  lam = 0.3 * (eta if optimizer.endswith("corrected") else 1.0)
  expected = np.mean(np.sqrt(2 * lam * eta * 0.1 / 1.9))
  assert row["predicted_angular_update"] == pytest.approx(expected, rel=1e-5)
  x, y = _data.load_digits()
  data = _data.split(x, y, seed=0, test_fraction=0.25, train_size=300)
  arch = _models.Architecture("bn", hidden=16, depth=2)
  losses = {}
  for name in (optimizer, optimizer.split("_")[0]):
    recipe = _train.Recipe(name, 0.05, 0.3, 30, 32, 300, mask=arch.decay_mask())
    run = _train.train(recipe, data, arch=arch, seed=0, progress=False)
    losses[name] = run["train_loss"]
  assert math.isclose(losses[optimizer], row["train_loss"], rel_tol=2e-3), (losses, row)
  plain = losses[optimizer.split("_")[0]]
  assert not math.isclose(plain, row["train_loss"], rel_tol=1e-2), (losses, row)


def test_bf16_sweep_cell_equals_a_bf16_train_run(tmp_path):
  """--param-dtype and --compensation reach the model and the optimizer in
  both paths: a 1 x 1 bfloat16 sweep matches ``train``'s bfloat16 run for each
  compensation, whose parameters stay bfloat16; the compensations differ."""
  x, y = _data.load_digits()
  data = _data.split(x, y, seed=0, test_fraction=0.25, train_size=300)
  arch = _models.Architecture("bn", hidden=16, depth=2, dtype="bfloat16")
  assert arch.make(64, 10, 0).hidden[0].kernel[...].dtype == jnp.bfloat16
  losses = {}
  for compensation in ("auto", "none"):
    out = tmp_path / compensation
    argv = ["sweep", "--optimizers", "adamw", "--grid", "1", "--seeds", "1"]
    argv += ["--lr-range", "3e-4,3e-4", "--wd-range", "3e-4,3e-4", "--steps", "30"]
    argv += ["--dataset", "digits", "--train-size", "300", "--hidden", "16"]
    argv += ["--param-dtype", "bfloat16", "--compensation", compensation]
    # Flax's BatchNorm promotes bfloat16 with float32 for its statistics,
    # which the suite's strict promotion refuses: standard promotion here.
    with warnings.catch_warnings(), jax.numpy_dtype_promotion("standard"):
      warnings.simplefilter("ignore")  # compensation=None warns, as it should
      assert _cli.main([*argv, "--batch-size", "32", "--out", str(out)]) == 0
      recipe = _train.Recipe(
        "adamw",
        3e-4,
        3e-4,
        30,
        32,
        300,
        mask=arch.decay_mask(),
        compensation=None if compensation == "none" else compensation,
      )
      run = _train.train(recipe, data, arch=arch, seed=0, progress=False)
    (row,) = json.loads((out / "sweep.json").read_text())["rows"]
    assert math.isclose(run["train_loss"], row["train_loss"], rel_tol=5e-3), (run, row)
    losses[compensation] = row["train_loss"]
  assert losses["auto"] != losses["none"], losses


def test_schedule_prints_restart_steps_and_writes_png(tmp_path, capsys):
  """Cycles 10, 20, 40 after a 5-step warmup restart at 15, 35 and 75."""
  out = tmp_path / "sched"
  argv = ["schedule", "--first-cycle-steps", "10", "--cycle-mult", "2"]
  argv += ["--warmup-steps", "5", "--steps", "90", "--out", str(out)]
  assert _cli.main(argv) == 0
  assert "restart steps: 15, 35, 75" in capsys.readouterr().out
  assert _is_png(out / "schedule.png")


def _npz(tmp_path, name, **arrays):
  path = tmp_path / name
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  return str(path)


def _bad_inputs(tmp_path):
  x = np.ones((20, 3))
  y = np.arange(20) % 2
  text = tmp_path / "notes.npz"
  text.write_text("not a zip")
  nan = x.copy()
  nan[3, 1] = np.nan
  return {
    "unknown optimizer": (["train", "--optimizer", "adamx"], "adamx"),
    "negative steps": (["train", "--steps", "-5"], "-5"),
    "negative lr": (["train", "--learning-rate", "-1"], "-1"),
    "missing data": (["train", "--data", str(tmp_path / "no.npz")], "no such file"),
    "not npz": (["train", "--data", str(text)], "not a readable .npz"),
    "no y": (["train", "--data", _npz(tmp_path, "a.npz", x=x)], "missing array(s) y"),
    "1-d x": (["train", "--data", _npz(tmp_path, "b.npz", x=y, y=y)], "x must be 2-D"),
    "short y": (
      ["train", "--data", _npz(tmp_path, "c.npz", x=x, y=y[:5])],
      "y must have shape",
    ),
    "NaN": (["train", "--data", _npz(tmp_path, "d.npz", x=nan, y=y)], "NaN"),
    "float y": (
      ["train", "--data", _npz(tmp_path, "e.npz", x=x, y=x[:, 0])],
      "integer class labels",
    ),
    "batch > data": (["train", "--batch-size", "5000"], "--batch-size 5000"),
    "cycle on adamw": (
      ["train", "--optimizer", "adamw", "--first-cycle-steps", "5"],
      "adamwr/sgdwr",
    ),
    "grid 0": (["sweep", "--grid", "0"], "'0'"),
    "chunk not a multiple of the devices": (
      ["sweep", "--chunk-size", "12"],
      "--chunk-size 12 is not a multiple of the 8 devices",
    ),
    "grid 3 sizes": (["sweep", "--grid", "2x3x4"], "AxL"),
    "grid half": (["sweep", "--grid", "3x"], "'3x' must be AxL or N"),
    "budgets with optimizers": (
      ["sweep", "--budgets", "10,20", "--optimizers", "sgdw"],
      "do not apply",
    ),
    "budgets with lr range": (
      ["sweep", "--budgets", "10,20", "--lr-range", "1,2"],
      "do not apply",
    ),
    "empty optimizers": (["sweep", "--optimizers", ","], "no optimizer named"),
    "one budget": (["sweep", "--budgets", "100"], "two or more"),
    "repeated budget": (["sweep", "--budgets", "100,100"], "two or more"),
    "test fraction on mnist1d": (["sweep", "--test-fraction", "0.5"], "fixed"),
    "unknown model": (["train", "--model", "resnet"], "resnet"),
    "reversed range": (["sweep", "--lr-range", "1e-2,1e-3"], "LO must be <= HI"),
    "bad range": (["sweep", "--wd-range", "abc"], "LO,HI"),
    "negative range": (["sweep", "--wd-range=-1,1"], "'-1'"),
    "unknown in list": (["sweep", "--optimizers", "adamw,foo"], "foo"),
    "library check": (
      ["schedule", "--min-value", "2", "--max-value", "1"],
      "min_value=2.0 must be <= max_value=1.0",
    ),
    "library decay": (["schedule", "--cycle-decay", "2"], "cycle_decay=2.0"),
  }


@pytest.mark.parametrize(
  "case",
  [
    "unknown optimizer",
    "negative steps",
    "negative lr",
    "missing data",
    "not npz",
    "no y",
    "1-d x",
    "short y",
    "NaN",
    "float y",
    "batch > data",
    "cycle on adamw",
    "grid 0",
    "chunk not a multiple of the devices",
    "grid 3 sizes",
    "grid half",
    "budgets with optimizers",
    "budgets with lr range",
    "empty optimizers",
    "one budget",
    "repeated budget",
    "test fraction on mnist1d",
    "unknown model",
    "reversed range",
    "bad range",
    "negative range",
    "unknown in list",
    "library check",
    "library decay",
  ],
)
def test_bad_input_exits_nonzero_with_one_line_and_writes_nothing(
  tmp_path, capsys, case
):
  """Exit status 2, one stderr line naming the problem, no --out created."""
  argv, expected = _bad_inputs(tmp_path)[case]
  out = tmp_path / "out"
  assert _cli.main([*argv, "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1, err
  assert expected in err and "Traceback" not in err, err
  assert not out.exists(), os.listdir(out)
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".optax")]


@pytest.mark.parametrize(
  "env, expected",
  [
    ({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' must be an integer"),
    ({"JAX_NUM_PROCESSES": "0"}, "JAX_NUM_PROCESSES=0 must be >= 1"),
    (
      {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
      "JAX_PROCESS_ID=2 must be in [0, 2)",
    ),
  ],
)
def test_a_bad_process_environment_is_refused_before_joining(
  tmp_path, capsys, monkeypatch, env, expected
):
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  out = tmp_path / "out"
  assert _cli.main(["sweep", "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert expected in err and len(err.strip().splitlines()) == 1, err
  assert not out.exists()


@pytest.mark.parametrize("command", ["train", "sweep", "schedule"])
def test_every_subcommand_has_help(capsys, command):
  with pytest.raises(SystemExit) as exit_info:
    _cli.main([command, "--help"])
  assert exit_info.value.code == 0
  assert f"usage: optax-decoupled {command}" in capsys.readouterr().out


def test_console_script_reports_bad_input_without_traceback(tmp_path):
  """As a real process: exit 2, one line on stderr, no traceback, no --out."""
  out = tmp_path / "out"
  env = {**os.environ, "PYTHONPATH": ROOT}
  argv = [sys.executable, "-m", "optax_decoupled", "sweep", "--grid", "0"]
  proc = subprocess.run(
    [*argv, "--out", str(out)], capture_output=True, text=True, env=env, cwd=ROOT
  )
  assert proc.returncode == 2, proc
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "--grid" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
  assert not out.exists()


def test_no_arguments_print_the_usage_and_every_subcommand(capsys):
  assert _cli.main([]) == 2
  err = capsys.readouterr().err
  assert err.startswith("usage: optax-decoupled")
  for command in ("train", "sweep", "restarts", "schedule"):
    assert f"    {command} " in err, command
