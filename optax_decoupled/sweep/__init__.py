"""The paper's Figure 2 on your own model: a learning-rate x weight-decay sweep.

An optional module (``pip install "optax-decoupled[sweep]"`` for its progress
bar and figures); ``import optax_decoupled`` does not import it::

  from optax_decoupled import sweep

  result = sweep.run(
    init, loss, evaluate, (x_train, y_train),
    optimizer="adamw",
    learning_rates=np.geomspace(1e-4, 1e-1, 7),
    weight_decays=np.geomspace(1e-5, 1.0, 11),
    seeds=[0, 1], steps=3000, batch_size=64,
  )
  print(result.summary()["best_wd_spread_decades"])
  result.save("sweep.json")
  result.heatmap("heatmap.png")

Every (α, λ, seed) trains in one compiled program, sharded over every device
of every process and cut into chunks that fit in memory.
"""

from optax_decoupled.sweep._nnx import Model, from_nnx
from optax_decoupled.sweep._optimizers import OPTIMIZERS
from optax_decoupled.sweep._result import SweepResult, angular, heatmaps, write_json
from optax_decoupled.sweep._run import run
from optax_decoupled.sweep._summary import GOOD_ROW_FACTOR

__all__ = [
  "GOOD_ROW_FACTOR",
  "OPTIMIZERS",
  "Model",
  "SweepResult",
  "angular",
  "from_nnx",
  "heatmaps",
  "run",
  "write_json",
]
