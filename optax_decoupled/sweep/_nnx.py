"""A Flax NNX model as the pure ``init``, ``loss`` and ``evaluate`` of a sweep."""

from collections.abc import Callable
from typing import Any, NamedTuple


class Model(NamedTuple):
  """The three functions :func:`run` takes: ``run(*model, data, ...)``."""

  init: Callable[[Any], tuple[Any, Any]]
  loss: Callable[[Any, Any, Any], tuple[Any, Any]]
  evaluate: Callable[[Any, Any], dict[str, Any]]


def from_nnx(
  make: Callable[[Any], Any],
  loss: Callable[[Any, Any], Any],
  evaluate: Callable[[Any], dict[str, Any]],
) -> Model:
  """Adapts a Flax NNX model with ``nnx.split`` / ``nnx.merge``.

  Args:
    make: ``rngs -> module``, e.g. ``lambda rngs: CNN(rngs=rngs)``; called
      with ``nnx.Rngs(key)`` of each seed.
    loss: ``(module, batch) -> scalar`` (in training mode).
    evaluate: ``module -> {name: scalar}`` at the end of a run.

  Returns:
    A :class:`Model`: ``params`` are the module's ``nnx.Param`` state,
    ``state`` everything else (BatchNorm statistics, counters), which
    ``loss`` and ``evaluate`` may update as they run.
  """
  from flax import nnx

  graphdef = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))), nnx.Param, ...)[0]

  def init(key):
    _, params, state = nnx.split(make(nnx.Rngs(key)), nnx.Param, ...)
    return params, state

  def loss_fn(params, state, batch):
    module = nnx.merge(graphdef, params, state, copy=True)
    value = loss(module, batch)
    return value, nnx.split(module, nnx.Param, ...)[2]

  def evaluate_fn(params, state):
    return evaluate(nnx.merge(graphdef, params, state, copy=True))

  return Model(init, loss_fn, evaluate_fn)
