"""``optax_decoupled.sweep``: the public sweep on a user's own model.

Every number is checked against something the sweep did not compute: a
hand-written ``optax`` loop, the command line's results from before it was
built on this module, or the same grid laid out differently. A run done on
another number of devices, or in chunks, is the same program on another
number of configurations per device; XLA's float32 rounding then differs in
the last bits (Adam's ``pow``), so those compare to ``rtol=1e-5`` after a few
steps, and bit for bit where each device trains the same number of
configurations at once.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from optax_decoupled import sweep

HERE = pathlib.Path(__file__).parent
RTOL, ATOL = 1e-5, 1e-6
STEPS, BATCH = 20, 16
LRS, WDS = [1e-2, 1e-1], [1e-3, 3e-2]

_rng = np.random.default_rng(0)
X = _rng.normal(size=(80, 6)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int32)
X_TEST = _rng.normal(size=(50, 6)).astype(np.float32)
Y_TEST = (X_TEST[:, 0] + X_TEST[:, 1] > 0).astype(np.int32)


def init(key):
  """A tanh MLP, and a state: examples seen and an average of batch means."""
  k1, k2 = jax.random.split(key)
  params = {
    "w1": jax.random.normal(k1, (6, 8)) * 0.5,
    "b1": jnp.zeros(8),
    "w2": jax.random.normal(k2, (8, 2)) * 0.5,
  }
  return params, {"seen": jnp.zeros(()), "mean": jnp.zeros(6)}


def _forward(params, x):
  return jnp.tanh(x @ params["w1"] + params["b1"][None, :]) @ params["w2"]


def loss(params, state, batch):
  x, y = batch
  value = optax.softmax_cross_entropy_with_integer_labels(_forward(params, x), y)
  state = {
    "seen": state["seen"] + x.shape[0],
    "mean": 0.9 * state["mean"] + 0.1 * x.mean(0),
  }
  return value.mean(), state


def evaluate(params, state):
  logits = _forward(params, X_TEST)
  return {
    "test_error": jnp.mean((jnp.argmax(logits, -1) != Y_TEST).astype(jnp.float32)),
    "test_loss": optax.softmax_cross_entropy_with_integer_labels(logits, Y_TEST).mean(),
    "seen": state["seen"],
    "drift": jnp.linalg.norm(state["mean"]),
  }


def kernels(params):
  return {"w1": True, "b1": False, "w2": True}


def _mesh(n):
  return Mesh(np.asarray(jax.devices()[:n]), ("configs",))


def _run(**options):
  kwargs = dict(
    optimizer="adamw",
    learning_rates=LRS,
    weight_decays=WDS,
    seeds=[0, 1],
    steps=STEPS,
    batch_size=BATCH,
    mask=kernels,
    progress=False,
  )
  kwargs.update(options)
  model = [
    kwargs.pop(k, f)
    for k, f in (("init", init), ("loss", loss), ("evaluate", evaluate))
  ]
  return sweep.run(*model, (X, Y), **kwargs)


def _by_hand(tx, seed, steps=STEPS, batch_size=BATCH):
  """The run as a user writes it: a Python loop over batches of epochs of a
  seeded permutation, ``tx`` from optax, and the angular update of the kernels."""
  with jax.numpy_dtype_promotion("standard"):  # optax's bias correction needs it
    return _loop(tx, seed, steps, batch_size)


def _loop(tx, seed, steps, batch_size):
  params, state = init(jax.random.key(seed))
  key = jax.random.fold_in(jax.random.key(seed), 1)
  per_epoch = len(Y) // batch_size
  opt_state = tx.init(params)
  angles = []
  for t in range(steps):
    order = jax.random.permutation(jax.random.fold_in(key, t // per_epoch), len(Y))
    idx = order[(t % per_epoch) * batch_size :][:batch_size]
    (_, state), grads = jax.value_and_grad(loss, has_aux=True)(
      params, state, (X[idx], Y[idx])
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    angles.append(
      np.mean(
        [
          np.linalg.norm(new[k] - params[k]) / np.linalg.norm(params[k])
          for k in ("w1", "w2")
        ]
      )
    )
    params = new
  window = slice(steps // 4, max(steps // 4 + 1, 3 * steps // 4))
  metrics = {k: float(v) for k, v in evaluate(params, state).items()}
  metrics["angular_update"] = float(np.mean(angles[window]))
  return metrics


def _paper_adamw(lr, wd, steps=STEPS):
  """The paper's AdamW through optax's own: η_t α for the step and η_t λ for the
  decay (optax multiplies its weight_decay by the learning rate: λ / α)."""
  eta = lambda t: 0.5 * (1 + jnp.cos(jnp.pi * t / steps))
  return optax.adamw(
    lambda t: lr * eta(t),
    weight_decay=wd / lr,
    mask={"w1": True, "b1": False, "w2": True},
  )


def _assert_same_cells(a, b, *, exact=False):
  assert a.metrics.keys() == b.metrics.keys()
  for k in a.metrics:
    if exact:
      np.testing.assert_array_equal(a.metrics[k], b.metrics[k], err_msg=k)
    else:
      np.testing.assert_allclose(a.metrics[k], b.metrics[k], RTOL, ATOL, err_msg=k)


# ------------------------------------------------------------ the numbers


def test_a_cell_equals_a_hand_written_optax_loop():
  """Named ``adamw`` (η_t one cosine, λ not times α) against optax.adamw in a
  Python loop, every cell and seed; the state (examples seen) threads through."""
  result = _run(mesh=_mesh(1))
  assert result.metrics["test_error"].shape == (2, 2, 2)
  for i, lr in enumerate(LRS):
    for j, wd in enumerate(WDS):
      for s in (0, 1):
        want = _by_hand(_paper_adamw(lr, wd), s)
        got = {k: v[i, j, s] for k, v in result.metrics.items()}
        assert got["seen"] == STEPS * BATCH
        for k in want:
          np.testing.assert_allclose(
            got[k], want[k], 2e-5, 1e-6, err_msg=(k, lr, wd, s)
          )


def test_a_factory_optimizer_gets_each_cells_learning_rate_and_decay():
  """optax's convention (decay times the learning rate), as a factory."""
  factory = lambda lr, wd: optax.adamw(lr, weight_decay=wd)
  with jax.numpy_dtype_promotion("standard"):  # optax's bias correction needs it
    result = _run(optimizer=factory, name="optax_adamw", seeds=[3], mesh=_mesh(1))
  assert result.optimizer == "optax_adamw" and result.predicted_angular_update is None
  for i, lr in enumerate(LRS):
    for j, wd in enumerate(WDS):
      want = _by_hand(optax.adamw(lr, weight_decay=wd), 3)
      for k in want:
        np.testing.assert_allclose(
          result.metrics[k][i, j, 0], want[k], 2e-5, 1e-6, err_msg=k
        )


def test_the_cli_model_gives_the_numbers_of_the_sweep_before_this_api():
  """The command line's BatchNorm MLP through ``from_nnx`` and this module
  against rows the previous engine wrote (tests/data/sweep_reference.json)."""
  pytest.importorskip("flax")
  pytest.importorskip("mnist1d")
  from optax_decoupled.cli import _data, _models, _sweep

  reference = json.loads((HERE / "data" / "sweep_reference.json").read_text())
  data = _data.subsample(_data.load_mnist1d(), 512, seed=0)
  arch = _models.Architecture(hidden=16)
  lrs, wds = _sweep.log_grid(1e-3, 1e-1, 2), _sweep.log_grid(1e-3, 1e-1, 3)
  rows = []
  for name in ("adam_l2", "adamw"):
    result = _sweep.run_grid(
      name, data, arch, lrs, wds, [0, 1], steps=30, batch_size=64,
      mesh=_mesh(1), progress=False,
    )  # fmt: skip
    rows += result.rows()
  assert len(rows) == len(reference["rows"]) == 12
  for got, want in zip(rows, reference["rows"], strict=True):
    assert got.keys() == want.keys()
    for key, value in want.items():
      if isinstance(value, str):
        assert got[key] == value
      else:
        np.testing.assert_allclose(got[key], value, RTOL, ATOL, err_msg=key)


# ------------------------------------------------------------ devices and chunks


def test_every_device_gives_the_numbers_of_one():
  """8 devices, one configuration each, against one device with all 8."""
  one = _run(mesh=_mesh(1))
  eight = _run()
  assert eight.run["devices"] == 8 and one.run["devices"] == 1
  assert eight.run["chunks"] == 1 and eight.run["configs_per_chunk"] == 8
  _assert_same_cells(one, eight)


def test_the_same_configurations_per_device_give_the_same_bits():
  """2 devices in 2 chunks of 4 and 4 devices in one piece of 8: each device
  trains 2 configurations at once in both, so every bit agrees."""
  chunked = _run(mesh=_mesh(2), chunk_size=4)
  whole = _run(mesh=_mesh(4))
  assert chunked.run["chunks"] == 2 and whole.run["chunks"] == 1
  _assert_same_cells(chunked, whole, exact=True)


def test_a_grid_that_does_not_divide_is_padded_and_the_padding_dropped():
  """3 x 2 x 1 = 6 configurations on 4 devices (padded to 8), and on one device
  in chunks of 4 (the last one padded): the grid's own numbers, once each."""
  options = dict(learning_rates=[1e-2, 3e-2, 1e-1], seeds=[0])
  one = _run(mesh=_mesh(1), **options)
  padded = _run(mesh=_mesh(4), **options)
  chunked = _run(mesh=_mesh(1), chunk_size=4, **options)
  assert padded.run["configs_per_chunk"] == 8 and chunked.run["chunks"] == 2
  for result in (padded, chunked):
    assert result.metrics["test_error"].shape == (3, 2, 1)
    _assert_same_cells(one, result)


def test_a_grid_larger_than_the_memory_runs_in_chunks_that_fit():
  """``memory`` just under what the whole grid needs: it runs in chunks, each
  within the budget by XLA's own account, with the one-piece numbers."""
  whole = _run(mesh=_mesh(1))
  need = whole.run["memory_per_device_bytes"]
  chunked = _run(mesh=_mesh(1), memory=need - 1)
  assert chunked.run["chunks"] > 1
  assert chunked.run["memory_per_device_bytes"] <= need - 1
  _assert_same_cells(whole, chunked)


def test_a_budget_below_one_configuration_is_refused_before_training():
  calls = []
  with pytest.raises(
    ValueError, match=r"memory=1000 \(0 MiB per device\) is less than one configuration"
  ):
    _run(mesh=_mesh(1), memory=1000, loss=_counting(calls))
  assert calls == []


# ------------------------------------------------------------ the result


def test_the_result_summarizes_saves_and_draws(tmp_path):
  pytest.importorskip("matplotlib")
  lrs = [1e-2, 3e-2, 1e-1]
  result = _run(learning_rates=lrs)
  rows = result.rows()
  assert len(rows) == 6 and rows[0]["test_error_per_seed"] == list(
    result.metrics["test_error"][0, 0]
  )
  summary = result.summary()
  errors = result.metrics["test_error"].mean(-1)
  i, j = np.unravel_index(np.argmin(errors), errors.shape)
  assert summary["best"] == {
    "learning_rate": lrs[i],
    "weight_decay": WDS[j],
    "test_error": errors[i, j],
  }
  assert [r["weight_decay"] for r in summary["best_weight_decay_per_lr"]] == [
    WDS[k] for k in errors.argmin(1)
  ]
  assert "equilibrium" in summary  # named and decoupled: the prediction applies
  result.save(str(tmp_path / "sweep.json"))
  saved = json.loads((tmp_path / "sweep.json").read_text())
  assert saved["rows"] == json.loads(json.dumps(rows))
  assert saved["run"]["devices"] == 8 and saved["run"]["processes"] == 1
  result.heatmap(str(tmp_path / "heatmap.png"))
  result.angular(str(tmp_path / "angular.png"))
  for name in ("heatmap.png", "angular.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(tmp_path)) == ["angular.png", "heatmap.png", "sweep.json"]


def test_the_metric_the_summary_minimizes_can_be_another_one():
  result = _run(metric="test_loss")
  losses = result.metrics["test_loss"].mean(-1)
  assert result.summary()["best"]["test_loss"] == losses.min()


def test_predicted_angular_update_against_the_closed_form():
  """Named AdamW: sqrt(2 λ η_t (1-β1)/(1+β1)) averaged over the window."""
  result = _run(seeds=[0])
  t = np.arange(STEPS)[STEPS // 4 : 3 * STEPS // 4]
  eta = 0.5 * (1 + np.cos(np.pi * t / STEPS))
  for j, wd in enumerate(WDS):
    want = np.mean(np.sqrt(2 * wd * eta * 0.1 / 1.9))
    assert result.predicted_angular_update[j] == pytest.approx(want, rel=1e-6)


# ------------------------------------------------------------ bad input


def _counting(calls):
  def counted(params, state, batch):
    jax.debug.callback(lambda: calls.append(1))
    return loss(params, state, batch)

  return counted


BAD = {
  "loss returns only the loss": (
    dict(loss=lambda p, s, b: loss(p, s, b)[0]),
    ValueError,
    "must return a pair",
  ),
  "loss returns a state of another shape": (
    dict(loss=lambda p, s, b: (loss(p, s, b)[0], {"seen": s["seen"]})),
    ValueError,
    "not shaped like",
  ),
  "loss is not a scalar": (
    dict(loss=lambda p, s, b: (jnp.zeros(3), s)),
    ValueError,
    "float scalar",
  ),
  "init returns params alone": (
    dict(init=lambda key: init(key)[0]),
    TypeError,
    r"must return a pair \(params, state\)",
  ),
  "evaluate returns a tuple": (
    dict(evaluate=lambda p, s: (1.0, 2.0)),
    ValueError,
    "dict of named scalars",
  ),
  "metric is not evaluated": (
    dict(metric="accuracy"),
    ValueError,
    r"metric='accuracy' is not one of",
  ),
  "a zero learning rate": (
    dict(learning_rates=[0.0, 1e-2]),
    ValueError,
    r"learning_rates=\[0.0, 0.01\]: every value must be finite and > 0",
  ),
  "a negative weight decay": (
    dict(weight_decays=[-1e-3]),
    ValueError,
    r"weight_decays=\[-0.001\]: every value must be finite and > 0",
  ),
  "a NaN weight decay": (
    dict(weight_decays=[float("nan")]),
    ValueError,
    "finite and > 0",
  ),
  "an empty grid": (dict(learning_rates=[]), ValueError, "non-empty"),
  "a repeated value": (dict(weight_decays=[1e-3, 1e-3]), ValueError, "repeats"),
  "no seeds": (dict(seeds=[]), ValueError, "at least one seed"),
  "a negative seed": (dict(seeds=[-1]), ValueError, r"seeds=-1 must be in"),
  "zero steps": (dict(steps=0), ValueError, r"steps=0 must be in \[1,"),
  "steps beyond int32": (dict(steps=2**31), ValueError, "steps=2147483648"),
  "a float batch size": (dict(batch_size=16.0), TypeError, "batch_size=16.0"),
  "a batch larger than the data": (
    dict(batch_size=81),
    ValueError,
    r"batch_size=81 must be in \[1, 80\]",
  ),
  "an unknown optimizer": (dict(optimizer="adamwr"), ValueError, "'adamwr' is not one"),
  "a factory that returns no transformation": (
    dict(optimizer=lambda lr, wd: lr),
    TypeError,
    "not an optax.GradientTransformation",
  ),
  "a chunk the mesh does not divide": (
    dict(mesh="two", chunk_size=3),
    ValueError,
    r"chunk_size=3 is not a multiple of the mesh's 2 devices",
  ),
  "a mesh that is not a Mesh": (
    dict(mesh=jax.devices()),
    TypeError,
    "jax.sharding.Mesh",
  ),
  "a zero memory": (dict(memory=0), ValueError, r"memory=0 must be in"),
  "an angular mask of the wrong length": (
    dict(angular={"w1": True}),
    ValueError,
    "angular= gives 1 flags for the 3 leaves",
  ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_refused_before_any_training(case):
  options, error, message = BAD[case]
  options = dict(options)
  if options.get("mesh") == "two":
    options["mesh"] = _mesh(2)
  calls = []
  options.setdefault("loss", _counting(calls))
  with pytest.raises(error, match=message):
    _run(**options)
  jax.effects_barrier()
  assert calls == []


def test_data_whose_arrays_disagree_on_the_examples_is_refused():
  with pytest.raises(ValueError, match="share their first axis"):
    sweep.run(
      init, loss, evaluate, (X, Y[:-1]), optimizer="adamw",
      learning_rates=LRS, weight_decays=WDS, steps=2, batch_size=4,
    )  # fmt: skip


def test_importing_the_library_does_not_import_the_sweep():
  code = (
    "import sys, optax_decoupled; "
    "print(any(m.startswith('optax_decoupled.sweep') for m in sys.modules), "
    "'tqdm' in sys.modules, 'matplotlib' in sys.modules, 'flax' in sys.modules)"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True
  )
  assert out.stdout.split() == ["False", "False", "False", "False"]


# ------------------------------------------------------------ several processes


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


TINY = [
  "sweep", "--grid", "2x2", "--seeds", "2", "--steps", "12", "--train-size", "256",
  "--hidden", "8", "--batch-size", "32",
]  # fmt: skip


def _launch(out, processes):
  """``optax-decoupled sweep`` on 8 host devices split over ``processes``
  processes joined on 127.0.0.1; their exit codes and logs."""
  base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  base.update(
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}",
  )
  if processes > 1:
    base.update(
      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
      JAX_NUM_PROCESSES=str(processes),
    )
  procs = [
    subprocess.Popen(
      [sys.executable, "-m", "optax_decoupled", *TINY, "--out", str(out)],
      env=dict(base, **({"JAX_PROCESS_ID": str(i)} if processes > 1 else {})),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      cwd=HERE.parent,
    )
    for i in range(processes)
  ]
  try:
    logs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return [p.returncode for p in procs], logs


@pytest.mark.slow
def test_two_processes_write_the_sweep_of_one(tmp_path):
  """``optax-decoupled sweep`` as 2 processes x 4 devices (jax.distributed on
  127.0.0.1, from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)
  against one process of 8 devices: the same rows bit for bit (each device
  trains the same configurations), written once, by process 0."""
  pytest.importorskip("flax")
  pytest.importorskip("mnist1d")
  codes, logs = _launch(tmp_path / "one", 1)
  assert codes == [0], logs
  codes, logs = _launch(tmp_path / "two", 2)
  assert codes == [0, 0], "\n".join(logs)[-3000:]
  one = json.loads((tmp_path / "one" / "sweep.json").read_text())
  two = json.loads((tmp_path / "two" / "sweep.json").read_text())
  assert one["hardware"] == {"platform": "cpu", "devices": 8, "processes": 1}
  assert two["hardware"] == {"platform": "cpu", "devices": 8, "processes": 2}
  assert two["rows"] == one["rows"] and two["summary"] == one["summary"]
  assert sorted(os.listdir(tmp_path / "two")) == [
    "angular.png",
    "heatmap.png",
    "sweep.json",
  ]
  assert "->" in logs[0] and "->" not in logs[1]  # only process 0 wrote


@pytest.mark.slow
def test_an_out_that_process_0_refuses_stops_every_process(tmp_path):
  """--out is a file: process 0 refuses it, process 1 hears so and stops too,
  both before training; the file is untouched."""
  pytest.importorskip("flax")
  pytest.importorskip("mnist1d")
  out = tmp_path / "taken"
  out.write_text("keep me")
  codes, logs = _launch(out, 2)
  assert codes == [2, 2], logs
  assert "exists and is not a folder" in logs[0], logs[0]
  assert "process 0 refused it" in logs[1], logs[1]
  assert "grid x" not in "".join(logs)  # no grid started
  assert out.read_text() == "keep me"


# ------------------------------------------------------------ the examples


def _example(name):
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    name, HERE.parent / "examples" / f"{name}.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_equinox_example_sweeps_an_equinox_model():
  pytest.importorskip("equinox")
  pytest.importorskip("sklearn")
  results = _example("sweep_equinox").main(["--steps", "30", "--grid", "2", "2"])
  assert [r.optimizer for r in results] == ["adam_l2", "adamw"]
  for r in results:
    assert r.metrics["test_error"].shape == (2, 2, 2)
    assert np.all(r.metrics["test_error"] < 0.9)  # it learned something in 30 steps
    # only the hidden kernel is decayed and tracked: its angular update moved
    assert np.all(r.metrics["angular_update"] > 0)


def test_the_cnn_example_writes_both_models(tmp_path):
  pytest.importorskip("flax")
  pytest.importorskip("sklearn")
  argv = ["--out", str(tmp_path), "--steps", "10", "--grid", "2", "2", "--seeds", "1"]
  with jax.numpy_dtype_promotion("standard"):  # flax's avg_pool divides by an int
    payloads = _example("sweep_digits_cnn").main(argv)
  assert sorted(os.listdir(tmp_path)) == [
    "bn.json", "heatmap-bn.png", "heatmap-plain.png", "plain.json",
  ]  # fmt: skip
  for name in ("bn", "plain"):
    saved = json.loads((tmp_path / f"{name}.json").read_text())
    assert saved["summary"].keys() == {"adam_l2", "adamw"}
    assert len(saved["rows"]) == 8 and saved == json.loads(json.dumps(payloads[name]))
