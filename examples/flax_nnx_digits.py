"""Train a Flax NNX MLP on scikit-learn's digits with AdamWR.

The 8x8 digit images ship with scikit-learn, so nothing is downloaded.
Biases and LayerNorm parameters are left undecayed by a mask; the table of
what is decayed is printed before training.

  python examples/flax_nnx_digits.py --steps 600
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optax_decoupled as odx


class MLP(nnx.Module):
  """64 -> hidden -> LayerNorm -> ReLU -> 10."""

  def __init__(self, hidden: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, hidden, rngs=rngs)
    self.norm = nnx.LayerNorm(hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(nnx.relu(self.norm(self.hidden(x))))


def load(seed: int):
  """Digits scaled to [0, 1], split 80/20 into train and test."""
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x, y) -> jax.Array:
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def accuracy(model: MLP, x, y) -> jax.Array:
  return jnp.mean((jnp.argmax(model(x), axis=-1) == y).astype(jnp.float32))


def main(argv=None) -> float:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--learning-rate", type=float, default=3e-3)
  parser.add_argument("--weight-decay", type=float, default=1e-4)
  parser.add_argument("--cycle-steps", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  x_train, x_test, y_train, y_test = load(args.seed)
  model = MLP(args.hidden, rngs=nnx.Rngs(args.seed))

  # Decay kernels only (rank >= 2); biases and LayerNorm scale/bias are exempt.
  mask = odx.mask_by_ndim(2)
  print(odx.describe_mask(nnx.state(model, nnx.Param), mask))
  tx = odx.adamwr(
    learning_rate=args.learning_rate,
    first_cycle_steps=min(args.cycle_steps, args.steps),
    cycle_mult=2,
    weight_decay=args.weight_decay,
    mask=mask,
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  rng = np.random.default_rng(args.seed)
  for step in range(args.steps):
    idx = rng.choice(len(x_train), args.batch_size, replace=False)
    loss = train_step(model, optimizer, x_train[idx], y_train[idx])
    if step % max(args.steps // 5, 1) == 0 or step == args.steps - 1:
      print(f"step {step:5d}  loss {float(loss):.4f}")

  acc = float(accuracy(model, x_test, y_test))
  print(f"test accuracy: {acc:.4f}")
  return acc


if __name__ == "__main__":
  main()
