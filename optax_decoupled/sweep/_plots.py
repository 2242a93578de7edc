"""The sweep's figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import numpy as np


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _ticks(values):
  return [f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e") for v in values]


def heatmaps(path: str, panels: list[dict]) -> None:
  """One test-error heatmap per optimizer: rows α, columns λ, as the paper's
  Figure 2. Each row's best λ is circled, the grid's best cell boxed.

  Each panel dict has ``name``, ``learning_rates``, ``weight_decays``,
  ``errors`` (len(lr) x len(wd)) and ``wd_label``. The colour scale spans the
  lowest to the highest error of all panels (a square-root stretch, so the
  good region is resolved; nothing is clipped).
  """
  from matplotlib import patches
  from matplotlib.colors import PowerNorm

  plt = _pyplot()
  n_wd = max(len(p["weight_decays"]) for p in panels)
  n_lr = max(len(p["learning_rates"]) for p in panels)
  fig, axes = plt.subplots(
    1,
    len(panels),
    figsize=(0.62 * n_wd * len(panels) + 2.2, 0.5 * n_lr + 2.0),
    constrained_layout=True,
  )
  axes = np.atleast_1d(axes)
  low = min(float(np.min(p["errors"])) for p in panels) * 100
  top = max(float(np.max(p["errors"])) for p in panels) * 100
  norm = PowerNorm(0.5, vmin=low, vmax=max(top, low + 1e-6))
  cmap = plt.get_cmap("viridis_r")
  for ax, panel in zip(axes, panels, strict=True):
    errors = np.asarray(panel["errors"]) * 100  # rows = learning rate
    image = ax.imshow(errors, origin="lower", cmap=cmap, norm=norm, aspect="auto")
    for (i, j), value in np.ndenumerate(errors):
      r, g, b, _ = cmap(norm(value))
      ink = "k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "w"
      ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7, color=ink)
    for i, j in enumerate(np.argmin(errors, axis=1)):
      ax.add_patch(patches.Circle((j, i), 0.42, fill=False, ec="magenta", lw=1.6))
    i, j = np.unravel_index(np.argmin(errors), errors.shape)
    ax.add_patch(
      patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5)
    )
    ax.set_xticks(range(len(panel["weight_decays"])))
    ax.set_xticklabels(_ticks(panel["weight_decays"]), rotation=45)
    ax.set_yticks(range(len(panel["learning_rates"])))
    ax.set_yticklabels(_ticks(panel["learning_rates"]))
    ax.set(
      xlabel=panel["wd_label"] + " (log)",
      ylabel="learning rate α (log)",
      title=f"{panel['name']}: best {errors[i, j]:.1f}%",
    )
  fig.colorbar(image, ax=axes, label="test error (%)", shrink=0.85)
  fig.suptitle("circles: each α row's best λ; red box: the best cell", fontsize=9)
  fig.savefig(path, dpi=90)
  plt.close(fig)


def angular(path: str, panels: list[dict], *, steps: int) -> None:
  """Measured angular update against λ, one line per α, and the
  rotational-equilibrium prediction (decoupled optimizers)."""
  plt = _pyplot()
  fig, axes = plt.subplots(
    1, len(panels), figsize=(5 * len(panels), 4), sharey=True, constrained_layout=True
  )
  axes = np.atleast_1d(axes)
  for ax, panel in zip(axes, panels, strict=True):
    wds, lrs = panel["weight_decays"], panel["learning_rates"]
    colors = plt.get_cmap("plasma")(np.linspace(0, 0.9, len(lrs)))
    for lr, row, color in zip(lrs, panel["angular_update"], colors, strict=True):
      ax.plot(wds, row, "o-", ms=3, lw=1, color=color, label=f"α={lr:.0e}")
    if "predicted" in panel:
      ax.plot(wds, panel["predicted"], "k--", lw=2, label="sqrt(2λη(1-β1)/(1+β1))")
    if panel.get("equilibrium_min_wd"):
      ax.axvspan(wds[0], panel["equilibrium_min_wd"], color="0.9", zorder=0)
      ax.text(
        wds[0],
        0.95,
        " too short to equilibrate",
        transform=ax.get_xaxis_transform(),
        fontsize=7,
        va="top",
      )
    ax.set(
      xscale="log",
      yscale="log",
      xlabel=panel["wd_label"],
      title=f"{panel['name']}: {panel.get('angular_label', 'hidden kernels')}, "
      f"middle half of {steps} steps",
    )
    ax.legend(fontsize=7)
  axes[0].set_ylabel("mean angular update ‖Δθ‖/‖θ‖ per step")
  fig.savefig(path, dpi=90)
  plt.close(fig)
