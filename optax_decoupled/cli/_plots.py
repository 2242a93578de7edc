"""The command line's figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import numpy as np

from optax_decoupled.sweep._plots import _pyplot


def train_curves(path: str, curves: dict, title: str) -> None:
  """Loss per step, ``η_t``, the per-step decay, the angular update, and the
  hidden kernels' gradient norm and norm, as a 2 x 3 grid."""
  plt = _pyplot()
  steps = curves["step"]
  fig, grid = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
  axes = grid.ravel()
  loss = curves["batch_loss"]
  axes[0].plot(steps, loss, lw=0.5, alpha=0.4, label="batch")
  window = max(1, len(loss) // 50)
  axes[0].plot(
    steps[window - 1 :], _smooth(loss, window), lw=1.5, label=f"mean of {window}"
  )
  axes[0].set(yscale="log", xlabel="step", title="train loss")
  axes[0].legend()
  axes[1].plot(steps, curves["eta"])
  axes[1].set(xlabel="step", title="schedule multiplier η_t")
  axes[2].plot(steps, curves["effective_decay"])
  axes[2].set(xlabel="step", title=curves["decay_label"])
  angle = curves["angular_update"]
  axes[3].plot(steps, angle, lw=0.5, alpha=0.4, color="C2", label="measured")
  axes[3].plot(steps[window - 1 :], _smooth(angle, window), lw=1.5, color="C2")
  if "equilibrium_angular_update" in curves:
    axes[3].plot(
      steps, curves["equilibrium_angular_update"], "k--", lw=1, label="equilibrium"
    )
  axes[3].set(
    yscale="log", xlabel="step", title="angular update ‖Δθ‖/‖θ‖ (hidden kernels)"
  )
  axes[3].legend()
  grad = curves["grad_norm"]
  axes[4].plot(steps, grad, lw=0.5, alpha=0.4, color="C3")
  axes[4].plot(steps[window - 1 :], _smooth(grad, window), lw=1.5, color="C3")
  axes[4].set(yscale="log", xlabel="step", title="gradient norm (hidden kernels)")
  axes[5].plot(steps, curves["kernel_norm"], color="C4")
  axes[5].set(xlabel="step", title="norm of the hidden kernels ‖θ‖")
  fig.suptitle(title)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _smooth(values, window):
  return np.convolve(values, np.ones(window) / window, mode="valid")


def budgets(path: str, study: dict) -> None:
  """Test error against λ for each run length, and the best λ against steps."""
  plt = _pyplot()
  from matplotlib.ticker import LogLocator, NullFormatter

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
  wds = study["weight_decays"]
  runs = study["runs"]
  colors = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(runs)))
  for run, color in zip(runs, colors, strict=True):
    axes[0].plot(
      wds,
      np.asarray(run["test_error"]) * 100,
      "o-",
      ms=3,
      color=color,
      label=f"{run['steps']} steps",
    )
    axes[0].axvline(run["best_weight_decay"], color=color, lw=0.8, ls=":")
  axes[0].plot([], [], "k:", lw=0.8, label="best λ of each (refined)")
  axes[0].set(
    xscale="log",
    xlabel="decoupled weight decay λ",
    ylabel="test error (%)",
    title=f"AdamW at α={study['learning_rate']:g}",
  )
  axes[0].legend(fontsize=8)
  steps = np.asarray([r["steps"] for r in runs], np.float64)
  best = np.asarray([r["best_weight_decay"] for r in runs])
  axes[1].plot(steps, best, "o", color="k", label="best λ (refined)")
  for step, lam in zip(steps, best, strict=True):
    axes[1].annotate(
      f"{lam:.2g}", (step, lam), textcoords="offset points", xytext=(6, -3), fontsize=8
    )
  fit = np.exp(np.polyval(np.polyfit(np.log(steps), np.log(best), 1), np.log(steps)))
  axes[1].plot(steps, fit, "k-", lw=1, label=f"fit: slope {study['slope']:+.2f}")
  anchor = best[0] * (steps / steps[0]) ** -0.5
  axes[1].plot(steps, anchor, "C3--", lw=1, label="normalized decay: slope -0.5")
  axes[1].set(
    xscale="log",
    yscale="log",
    xlabel="steps",
    ylabel="best λ",
    title="best λ against the run length",
  )
  # Ticks at the budgets themselves (log minor ticks would collide).
  axes[1].set_xticks(steps, [f"{int(s)}" for s in steps])
  axes[1].xaxis.set_minor_formatter(NullFormatter())
  axes[1].yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
  axes[1].yaxis.set_minor_formatter(NullFormatter())
  axes[1].legend(fontsize=8)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def schedule(
  path: str, steps, eta, decay, restarts, title: str, lambda_norm: float
) -> None:
  """``η_t`` and the restart-normalized decay, restarts marked."""
  plt = _pyplot()
  fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True, constrained_layout=True)
  axes[0].plot(steps, eta)
  axes[0].set(ylabel="η_t", title=title)
  axes[1].plot(steps, decay, color="C1")
  axes[1].set(
    ylabel="λ_t = λ_norm / sqrt(T_i)",
    xlabel="step",
    title=f"restart-normalized decay, λ_norm = {lambda_norm:g} (T_i in steps)",
  )
  for ax in axes:
    for r in restarts:
      ax.axvline(r, color="grey", lw=0.6, ls="--")
  fig.savefig(path, dpi=90)
  plt.close(fig)


def restarts(path: str, study: dict) -> None:
  """Test error during the run, one column per family: the restart schedules
  against one cosine (top), the restart-free ones (middle); the angular update
  of the restart and one-cosine runs with its equilibrium (bottom).

  The one-cosine runs as long as each cycle end are black crosses; the
  T_mult=2 restarts are dotted lines.
  """
  plt = _pyplot()
  families = study["families"]
  fig, axes = plt.subplots(
    3,
    len(families),
    figsize=(7.5 * len(families), 12.5),
    squeeze=False,
    constrained_layout=True,
  )
  groups = (
    ("cosine", "restarts-x2", "restarts-x1", "restarts-x2-norm"),
    ("cosine", "step-drop", "wsd", "wsd-s", "constant"),
  )
  for column, result in enumerate(families.values()):
    steps = np.asarray(result["eval_steps"])
    arms = result["arms"]
    restarts = arms["restarts-x2"]["snapshot_steps"][:-1]
    finals = [a["final_test_error"]["mean"] for a in arms.values()]
    for row, group in enumerate(groups):
      ax = axes[row, column]
      for name in group:
        k = list(arms).index(name)
        mean = 100 * np.asarray(arms[name]["curve_mean"])
        std = 100 * np.asarray(arms[name]["curve_std"])
        ax.plot(steps, mean, color=f"C{k}", lw=1.4, label=arms[name]["label"])
        ax.fill_between(steps, mean - std, mean + std, color=f"C{k}", alpha=0.15, lw=0)
      if row == 0:
        points = sorted(
          {
            (p["step"], 100 * p["one_cosine_of_that_length"]["mean"])
            for name in ("restarts-x2", "restarts-x1")
            for p in arms[name]["anytime"]
          }
        )
        ax.plot(
          *zip(*points, strict=True),
          "kx",
          ms=8,
          mew=2,
          label="one cosine as long as the run so far",
        )
      for r in restarts if row == 0 else ():
        ax.axvline(r, color="grey", lw=0.8, ls=":")
      what = "warm restarts" if row == 0 else "schedules without restarts"
      ax.set(
        xlabel="step",
        ylabel="test error (%)",
        ylim=(100 * min(finals) - 1.5, 100 * max(finals) + 16),
        title=f"{result['optimizer']}: {what} (mean of seeds, ± 1 sd)",
      )
      ax.legend(fontsize=8, loc="upper right")
    bottom = axes[2, column]
    angular = result["angular"]
    bins = angular["bin_steps"]
    for k, name in enumerate(("cosine", "restarts-x2")):
      curve = angular[name]
      x = (np.arange(len(curve["measured"])) + 0.5) * bins
      label = arms[name]["label"]
      bottom.plot(
        x, curve["measured"], color=f"C{k}", lw=1.4, label=f"{label}: measured"
      )
      bottom.plot(
        x,
        curve["predicted"],
        color=f"C{k}",
        lw=1,
        ls="--",
        label=f"{label}: equilibrium sqrt(2λη_t(1-β1)/(1+β1))",
      )
    for r in restarts:
      bottom.axvline(r, color="grey", lw=0.8, ls=":")
    bottom.set(
      yscale="log",
      xlabel="step",
      ylabel="‖Δθ‖/‖θ‖ per step",
      title=f"{result['optimizer']}: angular update of the hidden kernels "
      f"(mean over {bins}-step bins)",
    )
    bottom.legend(fontsize=8, loc="lower left")
  fig.savefig(path, dpi=90)
  plt.close(fig)
