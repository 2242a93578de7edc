"""A learning-rate x weight-decay sweep of an Equinox model.

``optax_decoupled.sweep.run`` takes three pure functions; an Equinox model
gives them with ``eqx.partition`` (its arrays are the parameters) and
``eqx.combine``. The network is scale-invariant in its hidden kernel
(LayerNorm without scale or bias after it), so AdamW's best λ should not move
with α, and Adam+L2's should.

  python examples/sweep_equinox.py
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optax_decoupled as odx
from optax_decoupled import sweep


class Net(eqx.Module):
  hidden: eqx.nn.Linear
  norm: eqx.nn.LayerNorm
  out: eqx.nn.Linear

  def __init__(self, key):
    k1, k2 = jax.random.split(key)
    self.hidden = eqx.nn.Linear(64, 64, use_bias=False, key=k1)
    self.norm = eqx.nn.LayerNorm(64, use_weight=False, use_bias=False)
    self.out = eqx.nn.Linear(64, 10, key=k2)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.norm(self.hidden(x))))


#: The model's structure without its arrays, the same for every seed.
STATIC = eqx.partition(eqx.filter_eval_shape(Net, jax.random.key(0)), eqx.is_array)[1]


def init(key):
  params, _ = eqx.partition(Net(key), eqx.is_inexact_array)
  return params, None  # no state besides the parameters


def cross_entropy(params, x, y):
  logits = jax.vmap(eqx.combine(params, STATIC))(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def main(argv=None) -> list[sweep.SweepResult]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--grid", type=int, nargs=2, default=(4, 6), metavar=("A", "L"))
  args = parser.parse_args(argv)
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
    x, y, test_size=0.2, random_state=0, stratify=y
  )

  def loss(params, state, batch):
    return cross_entropy(params, *batch)[0], state

  def evaluate(params, state):
    test_loss, logits = cross_entropy(params, x_test, y_test)
    wrong = (jnp.argmax(logits, -1) != y_test).astype(jnp.float32)
    return {"test_error": wrong.mean(), "test_loss": test_loss}

  results = []
  for optimizer in ("adam_l2", "adamw"):
    result = sweep.run(
      init,
      loss,
      evaluate,
      (x_train, y_train),
      optimizer=optimizer,
      learning_rates=np.geomspace(1e-3, 1e-1, args.grid[0]),
      weight_decays=np.geomspace(1e-4, 1.0, args.grid[1]),
      seeds=[0, 1],
      steps=args.steps,
      batch_size=64,
      mask=odx.mask_by_path(r"^hidden/weight", decay=True),
    )
    summary = result.summary()
    print(
      f"{optimizer}: best test error {summary['best']['test_error']:.3f}; best λ "
      "per α: "
      + ", ".join(
        f"{r['weight_decay']:.0e}" for r in summary["best_weight_decay_per_lr"]
      )
      + f" ({summary['best_wd_spread_decades']:.1f} decades)"
    )
    results.append(result)
  return results


if __name__ == "__main__":
  main()
