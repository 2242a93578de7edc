"""Decoupled weight decay (Loshchilov & Hutter) for JAX and Optax.

The paper's AdamW, AdamWR, SGDW and SGDWR, their L2 baselines, and the pieces
they are built from, as ``optax.GradientTransformation``\\ s and schedules.
"""

from optax_decoupled._adam import ScaleByAdamState as ScaleByAdamState
from optax_decoupled._adam import scale_by_adam as scale_by_adam
from optax_decoupled._alias import DEFAULT_WEIGHT_DECAY as DEFAULT_WEIGHT_DECAY
from optax_decoupled._alias import adam_l2 as adam_l2
from optax_decoupled._alias import adamw as adamw
from optax_decoupled._alias import adamwr as adamwr
from optax_decoupled._alias import sgd_l2 as sgd_l2
from optax_decoupled._alias import sgdw as sgdw
from optax_decoupled._alias import sgdwr as sgdwr
from optax_decoupled._checkpoint import check_restore_target as check_restore_target
from optax_decoupled._compensation import CompensationState as CompensationState
from optax_decoupled._compensation import compensate_rounding as compensate_rounding
from optax_decoupled._conventions import (
  weight_decay_from_timescale as weight_decay_from_timescale,
)
from optax_decoupled._conventions import (
  weight_decay_from_torch as weight_decay_from_torch,
)
from optax_decoupled._conventions import (
  weight_decay_to_torch as weight_decay_to_torch,
)
from optax_decoupled._cooldown import step_drop as step_drop
from optax_decoupled._cooldown import warmup_stable_decay as warmup_stable_decay
from optax_decoupled._decay_variants import with_peak as with_peak
from optax_decoupled._diagnostics import angular_update as angular_update
from optax_decoupled._diagnostics import (
  equilibrium_angular_update as equilibrium_angular_update,
)
from optax_decoupled._diagnostics import equilibrium_steps as equilibrium_steps
from optax_decoupled._flatten import (
  FlattenSmallLeavesState as FlattenSmallLeavesState,
)
from optax_decoupled._flatten import flatten_small_leaves as flatten_small_leaves
from optax_decoupled._masks import all_of as all_of
from optax_decoupled._masks import describe_mask as describe_mask
from optax_decoupled._masks import mask_by_ndim as mask_by_ndim
from optax_decoupled._masks import mask_by_path as mask_by_path
from optax_decoupled._schedules import CyclePosition as CyclePosition
from optax_decoupled._schedules import cosine_warm_restarts as cosine_warm_restarts
from optax_decoupled._schedules import cycle_position as cycle_position
from optax_decoupled._schedules import (
  normalized_weight_decay as normalized_weight_decay,
)
from optax_decoupled._schedules import (
  restart_normalized_weight_decay as restart_normalized_weight_decay,
)
from optax_decoupled._schedules import restart_steps as restart_steps
from optax_decoupled._sharding import trace as trace
from optax_decoupled._weight_decay import AddL2State as AddL2State
from optax_decoupled._weight_decay import (
  DecoupledWeightDecayState as DecoupledWeightDecayState,
)
from optax_decoupled._weight_decay import (
  add_decoupled_weight_decay as add_decoupled_weight_decay,
)
from optax_decoupled._weight_decay import add_l2 as add_l2
from optax_decoupled._weight_decay import (
  with_decoupled_weight_decay as with_decoupled_weight_decay,
)

__version__ = "0.1.0"

__all__ = (
  "DEFAULT_WEIGHT_DECAY",
  "AddL2State",
  "CompensationState",
  "CyclePosition",
  "DecoupledWeightDecayState",
  "FlattenSmallLeavesState",
  "adam_l2",
  "adamw",
  "adamwr",
  "add_decoupled_weight_decay",
  "add_l2",
  "all_of",
  "angular_update",
  "check_restore_target",
  "compensate_rounding",
  "cosine_warm_restarts",
  "cycle_position",
  "describe_mask",
  "equilibrium_angular_update",
  "equilibrium_steps",
  "flatten_small_leaves",
  "mask_by_ndim",
  "mask_by_path",
  "normalized_weight_decay",
  "restart_normalized_weight_decay",
  "restart_steps",
  "scale_by_adam",
  "sgd_l2",
  "sgdw",
  "sgdwr",
  "step_drop",
  "trace",
  "weight_decay_from_timescale",
  "weight_decay_from_torch",
  "weight_decay_to_torch",
  "warmup_stable_decay",
  "with_decoupled_weight_decay",
  "with_peak",
)
