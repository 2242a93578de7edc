"""The command line's classifiers (Flax NNX): normalized or plain MLPs.

``bn`` is the paper's setting at small scale: every hidden kernel feeds a
batch normalization without scale or bias, so the function does not change
when a kernel is multiplied by a positive number (scale invariance). Weight
decay then sets the kernels' norm, and through it the effective step size,
rather than regularizing the function. ``ln`` does the same with layer
normalization; ``mlp`` has no normalization, the control.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optax_decoupled as odx

MODELS = ("bn", "ln", "mlp")
#: The parameter dtypes of ``--param-dtype`` (parameters, moments, arithmetic).
PARAM_DTYPES = ("float32", "bfloat16")

#: The kernels that are scale-invariant in the normalized models (and decayed).
HIDDEN_KERNELS = r"^hidden/\d+/kernel"


class MLP(nnx.Module):
  """``features -> [Linear, norm, ReLU] x depth -> Linear -> classes``.

  ``norm`` is ``"bn"`` (BatchNorm without affine: batch statistics in
  training; with ``use_running_average`` the statistics of the last
  training-mode call, which :func:`evaluate` makes the whole training set),
  ``"ln"`` (LayerNorm without affine) or ``"mlp"`` (none). Normalized hidden
  layers have no bias, so that their kernel alone is scale-invariant.
  """

  def __init__(
    self,
    features: int,
    hidden: int,
    classes: int,
    depth: int,
    *,
    norm: str,
    rngs,
    dtype: Any = jnp.float32,
  ):
    if norm not in MODELS:
      raise ValueError(f"model={norm!r} must be one of {', '.join(MODELS)}")
    self.norm = norm
    plain = norm == "mlp"
    sizes = [features] + [hidden] * depth
    self.hidden = nnx.List(
      [
        nnx.Linear(a, b, use_bias=plain, dtype=dtype, param_dtype=dtype, rngs=rngs)
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
      ]
    )
    if norm == "bn":
      # momentum 0: the stored statistics are those of the last training-mode
      # call, so one call on the whole training set sets them exactly.
      make = lambda: nnx.BatchNorm(
        hidden,
        momentum=0.0,
        use_bias=False,
        use_scale=False,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
      )
    else:
      make = lambda: nnx.LayerNorm(
        hidden,
        use_bias=False,
        use_scale=False,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
      )
    self.norms = nnx.List([make() for _ in range(0 if plain else depth)])
    self.out = nnx.Linear(sizes[-1], classes, dtype=dtype, param_dtype=dtype, rngs=rngs)

  def __call__(self, x, *, use_running_average: bool = False):
    norms = list(self.norms) or [None] * len(self.hidden)
    for layer, norm in zip(self.hidden, norms, strict=True):
      x = layer(x)
      if isinstance(norm, nnx.BatchNorm):
        x = norm(x, use_running_average=use_running_average)
      elif norm is not None:
        x = norm(x)
      x = jax.nn.relu(x)
    return self.out(x)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """Which MLP: ``norm`` (one of :data:`MODELS`), width, number of hidden layers,
  and the dtype of its parameters and arithmetic (:data:`PARAM_DTYPES`)."""

  norm: str = "bn"
  hidden: int = 64
  depth: int = 2
  dtype: str = "float32"

  def module(self, features: int, classes: int, rngs: nnx.Rngs) -> MLP:
    """The MLP drawn from ``rngs``."""
    return MLP(
      features,
      self.hidden,
      classes,
      self.depth,
      norm=self.norm,
      rngs=rngs,
      dtype=jnp.dtype(self.dtype),
    )

  def _mlp(self, features: int, classes: int, seed: int) -> MLP:
    return self.module(features, classes, nnx.Rngs(seed))

  def make(self, features: int, classes: int, seed: int) -> MLP:
    """The MLP initialized from ``seed`` (in one compiled call, not op by op)."""
    return nnx.jit(lambda: self._mlp(features, classes, seed))()

  def graphdef(self, features: int, classes: int):
    """The model's structure, without computing any weights."""
    model = nnx.eval_shape(lambda: self._mlp(features, classes, 0))
    return nnx.split(model, nnx.Param, ...)[0]

  def decay_mask(self) -> Callable[[Any], Any]:
    """Which leaves are decayed: the scale-invariant hidden kernels of a
    normalized model; every kernel (not the biases) of the plain MLP."""
    if self.norm == "mlp":
      return odx.mask_by_ndim(2)
    return odx.mask_by_path(HIDDEN_KERNELS, decay=True)


def hidden_kernels(params) -> list[jax.Array]:
  """The hidden layers' kernels of an MLP's ``nnx.Param`` state, in order."""
  return [layer["kernel"][...] for layer in params["hidden"].values()]


def kernel_angular_update(params, new_params) -> jax.Array:
  """``odx.angular_update`` (``‖Δθ‖/‖θ‖``) of the hidden kernels, averaged."""
  angles = odx.angular_update(hidden_kernels(params), hidden_kernels(new_params))
  return jnp.mean(jnp.stack(angles))


def cross_entropy(logits, labels):
  """Mean cross-entropy, its softmax in float32 whatever the logits' dtype."""
  if jnp.finfo(logits.dtype).bits < 32:
    logits = logits.astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def loss_and_error(logits, labels):
  """Mean cross-entropy and error rate (the fraction misclassified)."""
  wrong = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
  return cross_entropy(logits, labels), jnp.mean(wrong)


def evaluate(model: MLP, x_train, y_train, x_test, y_test):
  """``(train_loss, train_error, test_loss, test_error)``.

  The train set is seen in training mode: BatchNorm normalizes it with its own
  (whole-set) statistics and stores them; the test set is then normalized with
  those stored statistics, not its own.
  """
  train = loss_and_error(model(x_train), y_train)
  test = loss_and_error(model(x_test, use_running_average=True), y_test)
  return (*train, *test)
