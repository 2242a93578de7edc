"""Does the corrected decay (AdamC) stop the gradient norm rising at the end?

Defazio (2025) reports that with decoupled decay and a cosine schedule the
gradient norm of normalized layers rises as ``η_t`` anneals, and that scaling
the decay coefficient by ``η_t / η_max`` removes the rise. This runs
``optax-decoupled train`` twice on mnist1d's BatchNorm MLP, with ``adamw`` and
``adamw_corrected`` at the same α and λ, plots the hidden kernels' gradient
norm over training from each run's ``curves.npz`` (``corrected.png``) and
writes the numbers to ``corrected.json``; the runs themselves go to a
temporary folder.

  python examples/corrected_decay.py --steps 3000 --out runs/corrected
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from optax_decoupled.cli import main


def _smooth(values, window):
  return np.convolve(values, np.ones(window) / window, mode="valid")


NAMES = ("adamw", "adamw_corrected")


def run(steps: int, learning_rate: float, weight_decay: float, out: str) -> dict:
  """Trains both optimizers into ``out/NAME``; returns each one's
  gradient-norm ratio (last tenth of the run over its middle half)."""
  ratios = {}
  for name in NAMES:
    argv = ["train", "--optimizer", name, "--steps", str(steps), "--quiet"]
    argv += ["--learning-rate", str(learning_rate), "--weight-decay", str(weight_decay)]
    if main([*argv, "--out", os.path.join(out, name)]) != 0:
      raise SystemExit(f"train --optimizer {name} failed")
    with open(os.path.join(out, name, "metrics.json")) as f:
      ratios[name] = json.load(f)["grad_norm_end_over_middle"]
  return ratios


def summary(runs: str, steps: int) -> dict:
  """What the docs quote, from the runs in ``runs``: each optimizer's ratio
  and test accuracy, and the corrected run's end-of-run gradient norm over
  AdamW's (both over the last tenth of the run)."""
  out: dict = {"steps": steps, "runs": {}}
  end = {}
  for name in NAMES:
    with open(os.path.join(runs, name, "metrics.json")) as f:
      metrics = json.load(f)
    end[name] = float(
      np.load(os.path.join(runs, name, "curves.npz"))["grad_norm"][
        -max(1, steps // 10) :
      ].mean()
    )
    out["runs"][name] = {
      "grad_norm_end_over_middle": metrics["grad_norm_end_over_middle"],
      "test_accuracy": metrics["test_accuracy"],
      "hyperparameters": {
        k: metrics["hyperparameters"][k] for k in ("learning_rate", "weight_decay")
      },
    }
  out["corrected_end_grad_norm_over_adamw"] = end["adamw_corrected"] / end["adamw"]
  return out


def plot(out: str, steps: int, runs: str | None = None) -> str:
  """Draws ``out/corrected.png`` from the runs in ``runs`` (default ``out``)."""
  runs = out if runs is None else runs
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
  window = max(1, steps // 50)
  for name, color in (("adamw", "C0"), ("adamw_corrected", "C3")):
    curves = np.load(os.path.join(runs, name, "curves.npz"))
    grad = curves["grad_norm"]
    ax.plot(curves["step"], grad, lw=0.4, alpha=0.3, color=color)
    ax.plot(
      curves["step"][window - 1 :], _smooth(grad, window), color=color, label=name
    )
  ax.set(
    yscale="log",
    xlabel="step (η_t: one cosine from 1 to 0)",
    ylabel="gradient norm, hidden kernels",
    title="BatchNorm MLP on mnist1d, same α and λ",
  )
  ax.legend()
  path = os.path.join(out, "corrected.png")
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def _main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--learning-rate", type=float, default=1e-2)
  parser.add_argument("--weight-decay", type=float, default=3e-3)
  parser.add_argument("--out", default="runs/corrected")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  with tempfile.TemporaryDirectory() as runs:
    ratios = run(args.steps, args.learning_rate, args.weight_decay, runs)
    for name, ratio in ratios.items():
      print(f"{name}: gradient norm, last tenth / middle half of the run = {ratio:.2f}")
    with open(os.path.join(args.out, "corrected.json"), "w") as f:
      json.dump(summary(runs, args.steps), f, indent=1)
      f.write("\n")
    print(f"-> {plot(args.out, args.steps, runs)}")


if __name__ == "__main__":
  _main()
