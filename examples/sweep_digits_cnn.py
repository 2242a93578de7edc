"""The paper's Figure 2 on a model of your own: a small CNN on scikit-learn's digits.

``optax_decoupled.sweep`` trains a learning-rate x weight-decay grid of Adam+L2
and AdamW in one compiled program per optimizer, on every device there is.
The CNN comes in two forms: with BatchNorm after each convolution (its
convolution kernels are scale-invariant, the paper's setting) and without
(the control). The 8x8 digit images ship with scikit-learn; 30 % of the
training labels are replaced by another class (``--label-noise``).

  python examples/sweep_digits_cnn.py --out runs/cnn

writes ``bn.json`` and ``plain.json`` (rows, summary per optimizer) and their
heatmaps ``heatmap-bn.png`` and ``heatmap-plain.png``.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optax_decoupled as odx
from optax_decoupled import sweep


class CNN(nnx.Module):
  """8x8x1 -> conv 3x3 (8) -> [BN] -> ReLU -> 2x2 mean pool -> conv 3x3 (16)
  -> [BN] -> ReLU -> global mean pool -> linear (10).

  With ``norm``, each convolution has no bias and feeds a BatchNorm without
  scale or bias (momentum 0: its statistics are those of the last training-
  mode call, which :func:`make_model`'s ``evaluate`` makes the training set).
  """

  def __init__(self, norm: bool, *, rngs: nnx.Rngs):
    self.convs = nnx.List(
      [
        nnx.Conv(1, 8, (3, 3), use_bias=not norm, rngs=rngs),
        nnx.Conv(8, 16, (3, 3), use_bias=not norm, rngs=rngs),
      ]
    )
    self.norms = nnx.List(
      [
        nnx.BatchNorm(c, momentum=0.0, use_bias=False, use_scale=False, rngs=rngs)
        for c in ((8, 16) if norm else ())
      ]
    )
    self.out = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, x, *, train: bool = True):
    norms = list(self.norms) or [None, None]
    for i, (conv, norm) in enumerate(zip(self.convs, norms, strict=True)):
      x = conv(x)
      if norm is not None:
        x = norm(x, use_running_average=not train)
      x = nnx.relu(x)
      if i == 0:
        x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
    return self.out(x.mean(axis=(1, 2)))


def load(label_noise: float, seed: int = 0):
  """Digits as 8x8x1 images in [0, 1], split 80/20 (stratified); a
  ``label_noise`` share of the training labels replaced by another class, so
  that fitting the training set hurts and regularization matters (the digits
  are otherwise too easy: a fraction of a percent of test error)."""
  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=0.2, random_state=seed, stratify=y
  )
  rng = np.random.default_rng(seed)
  noisy = rng.random(len(y_train)) < label_noise
  shift = rng.integers(1, 10, len(y_train))
  y_train = np.where(noisy, (y_train + shift) % 10, y_train).astype(np.int32)
  return x_train, x_test, y_train, y_test


def make_model(norm: bool, x_train, y_train, x_test, y_test) -> sweep.Model:
  """The CNN as the sweep's ``(init, loss, evaluate)``, through ``from_nnx``."""

  def loss(model, batch):
    x, y = batch
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def evaluate(model):
    model(x_train)  # training mode: BatchNorm keeps the training set's statistics
    logits = model(x_test, train=False)
    wrong = (jnp.argmax(logits, -1) != y_test).astype(jnp.float32)
    return {"test_error": wrong.mean()}

  return sweep.from_nnx(lambda rngs: CNN(norm, rngs=rngs), loss, evaluate)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/cnn")
  parser.add_argument("--steps", type=int, default=800)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--grid", type=int, nargs=2, default=(5, 6), metavar=("A", "L"))
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--label-noise", type=float, default=0.3)
  args = parser.parse_args(argv)
  x_train, x_test, y_train, y_test = load(args.label_noise)
  os.makedirs(args.out, exist_ok=True)
  learning_rates = np.geomspace(1e-3, 1e-1, args.grid[0])
  weight_decays = np.geomspace(1e-5, 1.0, args.grid[1])
  payloads = {}
  for name, norm in (("bn", True), ("plain", False)):
    model = make_model(norm, x_train, y_train, x_test, y_test)
    # Decay the convolution kernels (scale-invariant with BatchNorm) and, in
    # the plain CNN, every kernel; record the convolutions' angular update.
    mask = odx.mask_by_path(r"^convs/\d+/kernel", decay=True)
    if not norm:
      mask = odx.mask_by_ndim(2)
    results = [
      sweep.run(
        *model,
        (x_train, y_train),
        optimizer=optimizer,
        learning_rates=learning_rates,
        weight_decays=weight_decays,
        seeds=range(args.seeds),
        steps=args.steps,
        batch_size=args.batch_size,
        mask=mask,
        angular=odx.mask_by_path(r"^convs/\d+/kernel", decay=True),
      )
      for optimizer in ("adam_l2", "adamw")
    ]
    for r in results:
      best = r.summary()["best"]
      print(
        f"{name} {r.optimizer}: best test error {best['test_error']:.3f} at "
        f"α {best['learning_rate']:.1e}, λ {best['weight_decay']:.1e}; best λ spread "
        f"{r.summary()['best_wd_spread_decades']:.1f} decades"
      )
    payloads[name] = {
      "settings": {**vars(args), "norm": norm, "test_examples": len(y_test)},
      "hardware": {"devices": jax.device_count(), "processes": jax.process_count()},
      "summary": {r.optimizer: r.summary() for r in results},
      "rows": [row for r in results for row in r.rows()],
      "timing": {r.optimizer: r.run for r in results},
    }
    sweep.write_json(os.path.join(args.out, f"{name}.json"), payloads[name])
    sweep.heatmaps(os.path.join(args.out, f"heatmap-{name}.png"), results)
  return payloads


if __name__ == "__main__":
  main()
