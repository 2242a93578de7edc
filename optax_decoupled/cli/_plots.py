"""The command line's figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import numpy as np


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def train_curves(path: str, curves: dict, title: str) -> None:
  """Loss per step, ``η_t`` and the per-step decay over the run."""
  plt = _pyplot()
  steps = curves["step"]
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
  loss = curves["batch_loss"]
  axes[0].plot(steps, loss, lw=0.5, alpha=0.4, label="batch")
  window = max(1, len(loss) // 50)
  smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
  axes[0].plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window}")
  axes[0].set(yscale="log", xlabel="step", title="train loss")
  axes[0].legend()
  axes[1].plot(steps, curves["eta"])
  axes[1].set(xlabel="step", title="schedule multiplier η_t")
  axes[2].plot(steps, curves["effective_decay"])
  axes[2].set(xlabel="step", title=curves["decay_label"])
  fig.suptitle(title)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def heatmaps(path: str, panels: list[dict]) -> None:
  """One test-error heatmap per optimizer, x = learning rate, y = weight decay.

  Each panel dict has ``name``, ``learning_rates``, ``weight_decays``,
  ``errors`` (len(lr) x len(wd)) and ``wd_label``. The best cell is boxed.
  """
  plt = _pyplot()
  from matplotlib import patches

  fig, axes = plt.subplots(
    1, len(panels), figsize=(4.6 * len(panels), 4.2), constrained_layout=True
  )
  axes = np.atleast_1d(axes)
  top = max(float(np.max(p["errors"])) for p in panels) * 100
  low = min(float(np.min(p["errors"])) for p in panels) * 100
  for ax, panel in zip(axes, panels, strict=True):
    errors = np.asarray(panel["errors"]).T * 100  # rows = weight decay
    image = ax.imshow(
      errors, origin="lower", cmap="viridis_r", vmin=low, vmax=min(top, 3 * low + 10)
    )
    for (i, j), value in np.ndenumerate(errors):
      ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color="w")
    i, j = np.unravel_index(np.argmin(errors), errors.shape)
    ax.add_patch(
      patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5)
    )
    ax.set_xticks(range(len(panel["learning_rates"])))
    ax.set_xticklabels([f"{v:.0e}" for v in panel["learning_rates"]], rotation=45)
    ax.set_yticks(range(len(panel["weight_decays"])))
    ax.set_yticklabels([f"{v:.0e}" for v in panel["weight_decays"]])
    ax.set(
      xlabel="learning rate α (log)",
      ylabel=panel["wd_label"],
      title=f"{panel['name']}: best {errors[i, j]:.1f}% test error",
    )
  fig.colorbar(image, ax=axes, label="test error (%)", shrink=0.85)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def schedule(path: str, steps, eta, decay, restarts, title: str) -> None:
  """``η_t`` and the restart-normalized decay, restarts marked."""
  plt = _pyplot()
  fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True, constrained_layout=True)
  axes[0].plot(steps, eta)
  axes[0].set(ylabel="η_t", title=title)
  axes[1].plot(steps, decay, color="C1")
  axes[1].set(ylabel="λ_norm / sqrt(T_i)", xlabel="step")
  for ax in axes:
    for r in restarts:
      ax.axvline(r, color="grey", lw=0.6, ls="--")
  fig.savefig(path, dpi=90)
  plt.close(fig)
