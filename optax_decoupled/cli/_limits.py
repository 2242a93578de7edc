"""Up-front bounds: refuse a run that cannot fit, before it starts.

Integers are bounded by their type (steps are int32 in the optimizer state);
memory by an estimate of what a run holds at once, compared with the memory
available now (``MemAvailable``, and the cgroup's limit in a container). The
estimates are rough (within a small factor) and only refuse runs that are
clearly too big: the largest allocations scale with what they name.
"""

from __future__ import annotations

from optax_decoupled.sweep._memory import available_bytes
from optax_decoupled.sweep._memory import size as _size

INT32_MAX = 2**31 - 1
#: Layers are unrolled into the compiled program: compile time grows with
#: depth (minutes from a few hundred layers on), and the paper's effect shows
#: in shallow networks.
MAX_DEPTH = 64
_F32 = 4
#: Per step of a ``train`` or ``schedule`` run: the loss, η_t and λ_t curves in
#: float32 and float64 copies, the step numbers, and matplotlib's copies.
_PER_STEP = 96


def mlp_parameters(features: int, hidden: int, depth: int, classes: int) -> int:
  sizes = [features] + [hidden] * depth + [classes]
  return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def _model_bytes(args, features, classes, examples):
  """Parameters with grads and two moments, and one forward pass over the
  largest of a batch, the train set and the test set (evaluation is one call)."""
  hidden, depth = getattr(args, "hidden", 128), getattr(args, "depth", 2)
  params = mlp_parameters(features, hidden, depth, classes)
  activations = examples * (hidden * depth + classes) * 2
  return _F32 * (5 * params + activations)


def run_bytes(args, *, features: int, classes: int, train: int, test: int) -> dict:
  """The estimate for ``args.command`` (train, sweep or restarts), by part."""
  examples = max(args.batch_size, train, test)
  parts = {"data": _F32 * (train + test) * (features + 1)}
  if args.command == "sweep":
    # The grid runs in chunks that fit (optax_decoupled.sweep): one run must.
    steps = max(args.budgets) if args.budgets else args.steps
    parts["one run"] = _model_bytes(args, features, classes, examples)
    parts["batch indices"] = args.seeds * steps * args.batch_size * _F32
    parts["per-step angular updates"] = steps * _F32
  elif args.command == "restarts":
    # 8 schedules x the tuning grid, then (8 + up to 8 shorter cosines) x seeds,
    # each recording its parameters at about 50 evaluation steps.
    n_lr, n_wd = args.grid
    runs = max(8 * n_lr * n_wd, 16 * args.seeds)
    params = mlp_parameters(features, args.hidden, args.depth, classes)
    parts["model x runs"] = runs * _model_bytes(args, features, classes, examples)
    parts["snapshots"] = 16 * args.seeds * 50 * params * _F32
    parts["batch indices"] = (
      (runs + args.seeds + 1) * args.steps * args.batch_size * _F32
    )
    parts["per-step tables and angular updates"] = 3 * runs * args.steps * _F32
  else:
    parts["model"] = _model_bytes(args, features, classes, examples)
    parts["per-step curves"] = args.steps * _PER_STEP
  return parts


def check(parts: dict, knobs: str) -> None:
  """Raises ``ValueError`` (one line) if ``parts`` exceed the memory available."""
  need = sum(parts.values())
  have = available_bytes()
  if have is None or need <= 0.8 * have:
    return
  largest = max(parts, key=lambda k: parts[k])
  raise ValueError(
    f"this run would need about {_size(need)} of memory ({largest}: "
    f"{_size(parts[largest])}), more than the {_size(have)} available; "
    f"lower {knobs}"
  )


def schedule_bytes(steps: int) -> dict:
  return {"per-step curves": steps * _PER_STEP}
