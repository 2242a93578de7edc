"""AdamW step time: optax-decoupled vs optax vs PyTorch's fused AdamW.

    python benchmarks/bench_adamw.py            # full run (a few minutes)
    python benchmarks/bench_adamw.py --quick    # ~1 min: fewer rounds and cases
    python benchmarks/bench_adamw.py --bf16     # bfloat16 params: what
                                                # compensated updates cost

Three workloads: one 24M-parameter float32 leaf (past the L3 cache), a
transformer-like tree (51 leaves, 16.8M parameters) and 1000 leaves of 1000
parameters. Every JAX step is ``tx.update`` plus ``optax.apply_updates`` under
one ``jax.jit`` with params and state donated; PyTorch is
``torch.optim.AdamW(fused=True).step()``. All competitors of a workload run in
the same process, interleaved round by round; the table gives medians. The
1000-leaf workload also times two floors, the cheapest step over the same
buffers: ``optax.sgd`` and ``torch.optim.SGD(foreach=True)``.

The run is repeated in a second process with XLA:CPU's multi-output fusion on
(``XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion``),
where ``odx.adamw`` compiles into one loop per leaf. ``--no-one-pass`` skips it.

Columns: ``GB/s`` is the useful traffic (read θ, g, m, v and write θ, m, v, in
their storage dtypes) divided by the median time; ``triad`` is that bandwidth
over the best 2-thread triad ``a = b + s c`` of the run (STREAM counting, three
arrays; the triad also pays a hidden write-allocate, an in-place AdamW does
not, so the fraction can exceed 1); ``loops`` counts loop fusions over the big
leaf's shape (trees: all kernels); ``compile`` is lowering plus XLA
compilation; ``state`` the optimizer state's bytes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import threading
import time

ONE_PASS_FLAG = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"
LR, WD = 1e-3, 1e-2  # optax/torch convention; odx's λ is LR * WD


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="fewer rounds, smaller set")
  p.add_argument("--no-one-pass", action="store_true", help="skip the 2nd process")
  p.add_argument(
    "--bf16",
    action="store_true",
    help="bfloat16 params and moments instead: odx.adamw without compensation, "
    "with Kahan (the default) and with stochastic rounding, next to optax.adamw",
  )
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  return p.parse_args()


# --------------------------------------------------------------------------
# Workloads


def tree_shapes(kind):
  if kind == "big":
    return {"w": (24_000_000,)}
  if kind == "many":
    return {f"w{i:04d}": (1000,) for i in range(1000)}
  d, f, vocab, layers = 512, 2048, 8192, 4  # "tfm": a small transformer
  tree = {"embed": (vocab, d), "ln_f": {"scale": (d,), "bias": (d,)}}
  for i in range(layers):
    tree[f"layer{i}"] = {
      "ln1": {"scale": (d,), "bias": (d,)},
      "qkv": {"kernel": (d, 3 * d), "bias": (3 * d,)},
      "proj": {"kernel": (d, d), "bias": (d,)},
      "ln2": {"scale": (d,), "bias": (d,)},
      "mlp_in": {"kernel": (d, f), "bias": (f,)},
      "mlp_out": {"kernel": (f, d), "bias": (d,)},
    }
  return tree


def make_tree(kind, seed, scale=1.0, dtype="float32"):
  import jax
  import jax.numpy as jnp

  shapes = tree_shapes(kind)
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(
    treedef,
    [
      (scale * jax.random.normal(k, s, jnp.float32)).astype(dtype)
      for k, s in zip(keys, leaves, strict=True)
    ],
  )


# --------------------------------------------------------------------------
# Cases: each has .run() (one step, blocking) and metadata


class Case:
  def __init__(self, name, run, traffic, state_bytes=None, loops=None, compile_s=None):
    self.name, self.run, self.traffic = name, run, traffic
    self.state_bytes, self.loops, self.compile_s = state_bytes, loops, compile_s
    self.times = []


def nbytes(tree):
  import jax

  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def jax_case(name, make_tx, kind, grads, dtype="float32"):
  import jax
  import optax

  tx = make_tx()

  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  params = make_tree(kind, 0, dtype=dtype)
  state = tx.init(params)
  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
  compile_s = time.perf_counter() - t0
  entry = compiled.as_text().split("ENTRY", 1)[1]
  fusions = [line for line in entry.splitlines() if " fusion(" in line]
  if kind == "big":
    n = tree_shapes("big")["w"][0]
    loops = sum(f"[{n}]" in line.split(" fusion(")[0] for line in fusions)
  else:
    loops = len(fusions)
  # Useful traffic: θ read+write, g read, moments read+write in their dtypes.
  leaves = jax.tree.leaves(params)
  moments = [x for x in jax.tree.leaves(state) if x.ndim > 0 or x.size > 1]
  traffic = 3 * nbytes(leaves) + 2 * sum(x.size * x.dtype.itemsize for x in moments)
  holder = [params, state]

  def run():
    holder[0], holder[1] = compiled(holder[0], holder[1], grads)
    jax.block_until_ready(holder[0])

  return Case(name, run, traffic, nbytes(state), loops, compile_s)


def torch_case(kind, grads, floor=False):
  """torch.optim.AdamW(fused=True); with ``floor``, plain SGD (θ -= α g, foreach)."""
  import jax
  import numpy as np
  import torch

  params = [torch.from_numpy(np.array(x)) for x in jax.tree.leaves(make_tree(kind, 0))]
  for p, g in zip(params, jax.tree.leaves(grads), strict=True):
    p.grad = torch.from_numpy(np.array(g))
  if floor:
    opt = torch.optim.SGD(params, lr=LR, foreach=True)
    name, arrays = "floor: torch SGD(foreach)", 3
  else:
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, fused=True)
    name, arrays = f"torch AdamW(fused) {torch.get_num_threads()}thr", 7
  opt.step()
  state = sum(
    t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
  )
  traffic = arrays * sum(p.numel() * 4 for p in params)
  return Case(name, opt.step, traffic, state)


def triad_cases(n):
  """a = b + s c, 2 threads: in XLA (jit, a donated), PyTorch, NumPy."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  cases = []
  b = jax.random.normal(jax.random.PRNGKey(2), (n,), jnp.float32)
  c = jax.random.normal(jax.random.PRNGKey(3), (n,), jnp.float32)
  triad = jax.jit(lambda a, b, c: b + 3.0 * c, donate_argnums=0, keep_unused=True)
  holder = [jnp.zeros(n, jnp.float32)]

  def run_jax():
    holder[0] = triad(holder[0], b, c)
    holder[0].block_until_ready()

  cases.append(Case("triad: XLA (jit, donated)", run_jax, 12 * n))
  bn, cn, an = np.array(b), np.array(c), np.zeros(n, np.float32)
  chunk = 1 << 18  # 1 MiB per array: the two passes of a chunk stay in cache

  def half(lo, hi):
    for i in range(lo, hi, chunk):
      j = min(i + chunk, hi)
      np.multiply(cn[i:j], np.float32(3.0), out=an[i:j])
      np.add(an[i:j], bn[i:j], out=an[i:j])

  def run_numpy():
    ts = [threading.Thread(target=half, args=r) for r in ((0, n // 2), (n // 2, n))]
    for t in ts:
      t.start()
    for t in ts:
      t.join()

  cases.append(Case("triad: NumPy 2 threads", run_numpy, 12 * n))
  try:
    import torch
  except ImportError:
    return cases
  tb, tc, ta = torch.from_numpy(bn), torch.from_numpy(cn), torch.from_numpy(an)
  cases.append(
    Case("triad: torch.add(out=)", lambda: torch.add(tb, tc, alpha=3.0, out=ta), 12 * n)
  )
  return cases


def measure(cases, rounds, reps):
  for case in cases:
    for _ in range(3):  # first touches of fresh pages are slow on this VM
      case.run()
  for _ in range(rounds):
    for case in cases:
      for _ in range(reps):
        t0 = time.perf_counter()
        case.run()
        case.times.append(time.perf_counter() - t0)


# --------------------------------------------------------------------------


def optimizers(kind, quick, one_pass):
  import jax.numpy as jnp
  import optax

  import optax_decoupled as odx

  opts = [("optax.adamw", lambda: optax.adamw(LR, weight_decay=WD))]
  if not (quick and kind == "many"):
    opts.append(("odx.adamw", lambda: odx.adamw(LR, weight_decay=LR * WD)))
  if kind != "many" and not quick:
    opts += [
      (
        "odx.adamw mu bf16",
        lambda: odx.adamw(LR, weight_decay=LR * WD, mu_dtype=jnp.bfloat16),
      ),
      (
        "odx.adamw mu+nu bf16",
        lambda: odx.adamw(
          LR, weight_decay=LR * WD, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16
        ),
      ),
    ]
  if kind != "big":
    opts.append(
      (
        "odx.flatten_small_leaves(adamw)",
        lambda: odx.flatten_small_leaves(odx.adamw(LR, weight_decay=LR * WD)),
      )
    )
  if kind == "many" and not quick and not one_pass:
    opts.append(
      ("optax.flatten(adamw)", lambda: optax.flatten(optax.adamw(LR, weight_decay=WD)))
    )
  return opts


def optimizers_bf16():
  """bfloat16 params (and moments): what each compensation costs."""
  import optax

  import optax_decoupled as odx

  return [
    ("optax.adamw", lambda: optax.adamw(LR, weight_decay=WD)),
    ("odx.adamw none", lambda: odx.adamw(LR, weight_decay=LR * WD, compensation=None)),
    ("odx.adamw kahan", lambda: odx.adamw(LR, weight_decay=LR * WD)),
    (
      "odx.adamw stochastic",
      lambda: odx.adamw(LR, weight_decay=LR * WD, compensation="stochastic"),
    ),
  ]


def run_workload(kind, quick, one_pass, has_torch, bf16=False):
  import jax
  import numpy as np
  import optax

  if bf16:
    grads = make_tree(kind, 1, scale=0.1, dtype="bfloat16")
    cases = [jax_case(n, f, kind, grads, "bfloat16") for n, f in optimizers_bf16()]
    measure(cases, 3 if quick else 10, reps=3)
    med = {c.name: float(np.median(c.times)) for c in cases}
    return cases, [], med, sum(x.size for x in jax.tree.leaves(grads))
  grads = make_tree(kind, 1, scale=0.1)
  cases = [jax_case(n, f, kind, grads) for n, f in optimizers(kind, quick, one_pass)]
  if has_torch:
    cases.append(torch_case(kind, grads))
  if kind == "many":  # the cheapest step with the same buffers in and out
    cases.append(jax_case("floor: optax.sgd", lambda: optax.sgd(LR), kind, grads))
    if has_torch:
      cases.append(torch_case(kind, grads, floor=True))
  triads = triad_cases(tree_shapes("big")["w"][0]) if kind == "big" else []
  rounds = 3 if quick else 10
  measure(cases + triads, rounds, reps=5 if kind == "many" else 3)
  n_params = sum(x.size for x in jax.tree.leaves(grads))
  med = {c.name: float(np.median(c.times)) for c in cases + triads}
  return cases, triads, med, n_params


def fmt_table(kind, cases, triads, med, n_params, triad_best):
  optax_t = med["optax.adamw"]
  if "odx.adamw none" in med:  # the bfloat16 run: ratios to no compensation
    base = med["odx.adamw none"]
    rows = [
      f"\n### {kind}: {n_params / 1e6:.1f}M bfloat16 params\n",
      "| optimizer | median ms | min ms | vs none | vs optax | state MB |",
      "|---|---:|---:|---:|---:|---:|",
    ]
    rows += [
      f"| {c.name} | {med[c.name] * 1e3:.2f} | {min(c.times) * 1e3:.2f} "
      f"| {med[c.name] / base:.2f} | {med[c.name] / optax_t:.2f} "
      f"| {c.state_bytes / 1e6:.1f} |"
      for c in cases
    ]
    return "\n".join(rows)
  torch_t = next((med[c.name] for c in cases if c.name.startswith("torch")), None)
  optax_ct = cases[0].compile_s
  lines = [
    f"\n### {kind}: {n_params / 1e6:.1f}M params\n",
    "| optimizer | median ms | min ms | GB/s | triad | vs optax | vs torch "
    "| loops | compile s (vs optax) | state MB |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for c in cases:
    t = med[c.name]
    gbs = c.traffic / t / 1e9
    vs_torch = f"{t / torch_t:.2f}" if torch_t else "-"
    comp = f"{c.compile_s:.2f} ({c.compile_s / optax_ct:.2f})" if c.compile_s else "-"
    frac = f"{gbs / triad_best:.2f}" if triad_best else "-"
    loops = "-" if c.loops is None else str(c.loops)
    state = f"{c.state_bytes / 1e6:.1f}" if c.state_bytes is not None else "-"
    lines.append(
      f"| {c.name} | {t * 1e3:.2f} | {min(c.times) * 1e3:.2f} | {gbs:.1f} | {frac} "
      f"| {t / optax_t:.2f} | {vs_torch} | {loops} | {comp} | {state} |"
    )
  for c in triads:
    t = med[c.name]
    lines.append(
      f"| {c.name} | {t * 1e3:.2f} | {min(c.times) * 1e3:.2f} "
      f"| {c.traffic / t / 1e9:.1f} | - | - | - | - | - | - |"
    )
  return "\n".join(lines)


def header(one_pass):
  import jax
  import optax

  try:
    import torch

    tv = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
  except ImportError:
    tv = "torch absent"
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
  except (OSError, StopIteration):
    pass
  mode = "multi-output fusion ON" if one_pass else "default XLA flags"
  return (
    f"## {mode}\n\n{datetime.date.today()} | {cpu}, {os.cpu_count()} CPUs | "
    f"jax {jax.__version__}, optax {optax.__version__}, {tv} | "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
  )


def run_all(quick, one_pass, bf16=False):
  try:
    import torch  # noqa: F401

    has_torch = True
  except ImportError:
    has_torch = False
  print(header(one_pass), flush=True)
  from optax_decoupled import _fused

  t0 = time.perf_counter()  # once per process, before the compile timings
  on = _fused.multi_output_fusion()
  print(
    f"\none-pass probe: multi-output fusion {'on' if on else 'off'} "
    f"({time.perf_counter() - t0:.2f} s, once per process)",
    flush=True,
  )
  triad_best = None
  for kind in ("big", "tfm") if bf16 else ("big", "tfm", "many"):
    cases, triads, med, n = run_workload(kind, quick, one_pass, has_torch, bf16)
    if triads:
      triad_best = max(c.traffic / med[c.name] / 1e9 for c in triads)
    print(fmt_table(kind, cases, triads, med, n, triad_best), flush=True)
  if triad_best:
    print(
      f"\ntriad column: GB/s over the best triad of this process, {triad_best:.1f} GB/s"
    )


def main():
  args = parse_args()
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  if args.child:
    run_all(args.quick, one_pass=True)
    return
  run_all(args.quick, one_pass=False, bf16=args.bf16)
  if args.no_one_pass or args.bf16:
    return
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {ONE_PASS_FLAG}".strip()
  cmd = [sys.executable, os.path.abspath(__file__), "--child"]
  cmd += ["--quick"] if args.quick else []
  print("", flush=True)
  subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
  main()
