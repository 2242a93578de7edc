"""``optax-decoupled restarts`` and its pieces: the study's runs equal ``train``,
the snapshot ensemble and weight average equal NumPy, and the command writes a
complete ``restarts.json``. Tiny settings: the default study is not a test.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from flax import nnx  # noqa: E402

from optax_decoupled.cli import _data, _models, _restarts, _train  # noqa: E402
from optax_decoupled.cli import _main as _cli  # noqa: E402

STEPS, BATCH = 45, 32


@pytest.fixture(scope="module")
def digits():
  x, y = _data.load_digits()
  return _data.split(x, y, seed=0, test_fraction=0.5, train_size=300)


def _recipe(family, arm, data, arch, lr, wd, steps=STEPS):
  return _restarts.recipe(
    family,
    arm,
    learning_rate=lr,
    weight_decay=wd,
    steps=steps,
    batch_size=BATCH,
    num_examples=len(data.y_train),
    mask=arch.decay_mask(),
  )


@pytest.mark.parametrize(
  "family, arms",
  [
    ("adam", ("restarts-x2-norm", "wsd-s", "step-drop")),
    ("sgd", ("restarts-x1", "constant")),
  ],
)
def test_a_vmapped_study_run_equals_the_same_run_through_train(digits, family, arms):
  """Schedules as per-step tables in one vmapped program against ``train``'s
  nnx.Optimizer loop with the optimizer the recipe builds (adamwr with its
  own normalized λ schedule, WSD-S, ...): the same angular update at every
  step and the same test error. A cosine of 20 steps run for 45 stays put
  after step 20 (η = 0 there)."""
  arch = _models.Architecture("bn", hidden=16, depth=2)
  lr, wd = (1e-2, 3e-3) if family == "adam" else (0.1, 3e-3)
  recipes = {arm: _recipe(family, arm, digits, arch, lr, wd) for arm in arms}
  short = _recipe(family, "cosine", digits, arch, lr, wd, steps=20)
  configs = [_restarts.Config(arm, r, 0) for arm, r in recipes.items()]
  configs.append(_restarts.Config("short", short, 0))
  out = _restarts.run_configs(
    family,
    configs,
    digits,
    arch,
    steps=STEPS,
    eval_steps=[20, STEPS],
    compensation="auto",
  )
  for k, (arm, r) in enumerate(recipes.items()):
    alone = _train.train(r, digits, arch=arch, seed=0, progress=False)
    np.testing.assert_allclose(
      out["angles"][k], alone["curves"]["angular_update"], rtol=2e-3, err_msg=arm
    )
    np.testing.assert_allclose(out["eta"][k], alone["curves"]["eta"], rtol=1e-6)
    error = 1 - alone["test_accuracy"]
    assert abs(error - out["errors"][k, 1]) <= 1.5 / len(digits.y_test), (arm, error)
  # The short cosine is the 20-step run through train, read at step 20; its η
  # table is 0 after that. AdamW's parameters then stay put; the paper's SGDW
  # keeps its momentum (m_t = β m_{t-1} + η_t α g_t), so they still move.
  alone = _train.train(short, digits, arch=arch, seed=0, progress=False)
  np.testing.assert_allclose(
    out["angles"][-1, :20], alone["curves"]["angular_update"], rtol=2e-3
  )
  error = 1 - alone["test_accuracy"]
  assert abs(error - out["errors"][-1, 0]) <= 1.5 / len(digits.y_test), error
  assert np.all(out["eta"][-1, 20:] == 0) and out["eta"][-1, 19] > 0
  snapshots = jax.tree.leaves(out["snapshots"])
  frozen = all(np.array_equal(s[-1, 0], s[-1, 1]) for s in snapshots)
  assert frozen == (family == "adam")
  assert np.all(out["angles"][-1, 20:] == 0) == (family == "adam")


def _numpy_forward(params, x_train, x):
  """The BatchNorm MLP in NumPy: hidden kernels, each normalized with the
  training set's batch statistics (biased variance, eps 1e-5), ReLU, output."""
  h_train, h = x_train, x
  for kernel in params["hidden"]:
    h_train, h = h_train @ kernel, h @ kernel
    mean, var = h_train.mean(0), h_train.var(0)
    h_train = np.maximum((h_train - mean) / np.sqrt(var + 1e-5), 0)
    h = np.maximum((h - mean) / np.sqrt(var + 1e-5), 0)
  logits = h @ params["out"]["kernel"] + params["out"]["bias"]
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_snapshot_ensemble_and_weight_average_against_numpy():
  """Three random snapshots of a tiny BatchNorm MLP: the ensemble's error is
  that of the mean of their probabilities, the weight average's that of the
  mean of their parameters, each with the training set's statistics (the
  stale statistics passed in are garbage, so using them would fail)."""
  rng = np.random.default_rng(0)
  features, hidden, classes = 3, 4, 3
  x_train = rng.normal(size=(40, features)).astype(np.float32)
  x_test = rng.normal(size=(200, features)).astype(np.float32)
  y_test = rng.integers(0, classes, 200)
  data = _data.Split(x_train, np.arange(40) % classes, x_test, y_test)
  arch = _models.Architecture("bn", hidden=hidden, depth=2)
  graphdef, _, rest = nnx.split(arch.make(features, classes, 0), nnx.Param, ...)
  rest = jax.tree.map(lambda a: a + 100.0, rest)  # stale statistics
  snaps = []
  for _ in range(3):
    snaps.append(
      {
        "hidden": [
          rng.normal(size=(features, hidden)),
          rng.normal(size=(hidden, hidden)),
        ],
        "out": {
          "kernel": rng.normal(size=(hidden, classes)),
          "bias": rng.normal(size=classes),
        },
      }
    )
  _, params, _ = nnx.split(arch.make(features, classes, 0), nnx.Param, ...)
  stacked = jax.tree.map(lambda a: np.zeros((1, 3, *a.shape), np.float32), params)
  for m, snap in enumerate(snaps):
    for i, kernel in enumerate(snap["hidden"]):
      stacked["hidden"][i]["kernel"][...][0, m] = kernel
    stacked["out"]["kernel"][...][0, m] = snap["out"]["kernel"]
    stacked["out"]["bias"][...][0, m] = snap["out"]["bias"]
  ensemble, average = _restarts.snapshot_errors(data, arch, stacked, rest)
  probs = np.mean([_numpy_forward(s, x_train, x_test) for s in snaps], axis=0)
  mean_params = jax.tree.map(lambda *a: np.mean(a, axis=0), *snaps)
  swa = _numpy_forward(mean_params, x_train, x_test)
  assert ensemble[0] == pytest.approx(np.mean(probs.argmax(-1) != y_test), abs=1e-7)
  assert average[0] == pytest.approx(np.mean(swa.argmax(-1) != y_test), abs=1e-7)
  # The two differ from each other and from a single snapshot here.
  single = np.mean(_numpy_forward(snaps[-1], x_train, x_test).argmax(-1) != y_test)
  assert len({float(ensemble[0]), float(average[0]), float(single)}) == 3


@pytest.fixture(scope="module")
def restarts_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("restarts") / "out"
  argv = ["restarts", "--optimizers", "adamw", "--grid", "2", "--seeds", "2"]
  argv += ["--steps", str(STEPS), "--hidden", "16", "--batch-size", str(BATCH)]
  argv += ["--dataset", "digits", "--test-fraction", "0.5", "--train-size", "300"]
  assert _cli.main([*argv, "--out", str(out)]) == 0
  return out, json.loads((out / "restarts.json").read_text())


def test_restarts_command_writes_every_arm_with_its_snapshots(restarts_run):
  out, study = restarts_run
  assert sorted(os.listdir(out)) == ["restarts.json", "restarts.png"]
  result = study["families"]["adam"]
  assert list(result["arms"]) == list(_restarts.ARMS)
  arms = result["arms"]
  # 45 steps: T_0 = 3 doubling (ends 3, 9, 21, 45) and T_0 = 9 (9, 18, ... 45).
  assert arms["restarts-x2"]["snapshot_steps"] == [3, 9, 21, 45]
  assert arms["restarts-x1"]["snapshot_steps"] == [9, 18, 27, 36, 45]
  assert arms["wsd-s"]["snapshot_steps"] == [9, 18, 27, 36, 45]
  assert result["reference_lengths"] == [3, 9, 18, 21, 27, 36]
  for arm in _restarts.SNAPSHOT_ARMS:
    entry = arms[arm]
    assert entry["ensemble_steps"] == entry["snapshot_steps"][-3:]
    for key in ("ensemble_test_error", "weight_average_test_error"):
      assert len(entry[key]["per_seed"]) == 2 and 0 <= entry[key]["mean"] <= 1
    assert [p["step"] for p in entry["anytime"]] == entry["snapshot_steps"]
    # At the end the reference is the one-cosine arm itself, same seeds.
    assert entry["anytime"][-1]["one_cosine_of_that_length"] == {
      k: arms["cosine"]["final_test_error"][k] for k in ("mean", "std", "per_seed")
    }
  assert "ensemble_test_error" not in arms["cosine"]
  # The curve is recorded at every evaluation step, and its last point is the
  # final error; the mean and sample std agree with the seeds' values.
  for entry in arms.values():
    final = entry["final_test_error"]
    assert len(entry["curve_mean"]) == len(result["eval_steps"])
    assert entry["curve_mean"][-1] == pytest.approx(final["mean"])
    assert final["mean"] == pytest.approx(np.mean(final["per_seed"]))
    assert final["std"] == pytest.approx(np.std(final["per_seed"], ddof=1))
  # Each arm runs at the best cell of its own tuning grid.
  grid = study["grids"]["adam"]
  for arm, tuning in result["tuning"].items():
    errors = np.asarray(tuning["test_error"])
    i, j = np.unravel_index(np.argmin(errors), errors.shape)
    assert arms[arm]["learning_rate"] == pytest.approx(grid["learning_rates"][i])
    assert tuning["weight_decay"] == pytest.approx(grid["weight_decays"][j])
  angular = result["angular"]
  assert len(angular["restarts-x2"]["measured"]) == STEPS // angular["bin_steps"]
  # The restart arm's η jumps back to 1 on each restart (bins of 1 step here).
  eta = np.asarray(angular["restarts-x2"]["eta"])
  assert [int(s) for s in np.flatnonzero(np.diff(eta) > 0) + 1] == [3, 9, 21]
  assert study["settings"]["seeds"] == [1, 2] and study["settings"]["tune_seed"] == 0


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--optimizers", "adam_l2"], "--optimizers 'adam_l2'"),
    (["--optimizers", "adamw,adamw"], "once each"),
    (["--steps", "10"], "--steps 10 must be a multiple of 15"),
    (["--steps", "3010"], "--steps 3010 must be a multiple of 15"),
    (["--snapshots", "5"], "--snapshots 5 must be at most 4"),
    (["--grid", "0"], "--grid"),
    (["--snapshots", "0"], "--snapshots"),
  ],
)
def test_restarts_refuses_bad_input_before_writing(tmp_path, capsys, argv, message):
  out = tmp_path / "out"
  assert _cli.main(["restarts", *argv, "--out", str(out)]) == 2
  assert message in capsys.readouterr().err
  assert not out.exists()


def test_train_takes_the_new_schedules(tmp_path):
  """``train --schedule wsd --checkpoints`` and ``--schedule step-drop``: the
  recorded η_t is the closed form (WSD-S: 1-sqrt cool-downs of 25 % before
  step 20 and 40)."""
  base = ["train", "--optimizer", "adamw", "--steps", "40", "--dataset", "digits"]
  base += ["--train-size", "200", "--hidden", "8", "--batch-size", "32", "--quiet"]
  wsd = tmp_path / "wsd"
  argv = [*base, "--schedule", "wsd", "--checkpoints", "20", "--cooldown", "0.25"]
  assert _cli.main([*argv, "--out", str(wsd)]) == 0
  eta = np.load(wsd / "curves.npz")["eta"]
  want = np.ones(40)
  want[15:20] = [1 - math.sqrt(k / 5) for k in range(5)]
  want[30:40] = [1 - math.sqrt(k / 10) for k in range(10)]
  np.testing.assert_allclose(eta, want, rtol=1e-6, atol=1e-7)
  drop = tmp_path / "drop"
  argv = [
    *base,
    "--schedule",
    "step-drop",
    "--drop-at",
    "0.25,0.5",
    "--drop-factor",
    "0.5",
  ]
  assert _cli.main([*argv, "--out", str(drop)]) == 0
  eta = np.load(drop / "curves.npz")["eta"]
  np.testing.assert_allclose(eta, np.repeat([1, 0.5, 0.25], [10, 10, 20]), rtol=1e-7)
  hyper = json.loads((drop / "metrics.json").read_text())["hyperparameters"]
  assert hyper["schedule"] == "step-drop" and hyper["drop_at"] == [0.25, 0.5]
  assert hyper["cooldown"] is None and hyper["checkpoints"] is None
  hyper = json.loads((wsd / "metrics.json").read_text())["hyperparameters"]
  assert (hyper["cooldown"], hyper["cooldown_shape"]) == (0.25, "1-sqrt")


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--optimizer", "adamwr", "--schedule", "wsd"], "adamwr restarts"),
    (
      ["--optimizer", "adamw", "--cooldown", "0.3"],
      "--cooldown applies to --schedule wsd",
    ),
    (["--optimizer", "sgdw", "--schedule", "wsd", "--drop-at", "0.5"], "--drop-at"),
    (
      ["--optimizer", "adamw", "--schedule", "step-drop", "--drop-at", "0.75,0.5"],
      "--drop-at",
    ),
    (
      [
        "--optimizer",
        "adamw",
        "--schedule",
        "wsd",
        "--checkpoints",
        "990",
        "--steps",
        "1000",
      ],
      "cool-down before step 1000",
    ),
  ],
)
def test_train_schedule_options_are_checked_before_writing(
  tmp_path, capsys, argv, message
):
  out = tmp_path / "out"
  assert _cli.main(["train", *argv, "--dataset", "digits", "--out", str(out)]) == 2
  assert message in capsys.readouterr().err
  assert not out.exists()
