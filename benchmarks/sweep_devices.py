"""The default sweep on 1 device, 8 host devices and 2 processes x 4 devices,
and a grid 4x larger than fits in one piece, run in chunks.

  python benchmarks/sweep_devices.py --out docs/sweep-devices

Each layout is ``optax-decoupled sweep`` in fresh processes (the device count
is fixed when JAX starts); the two processes join through ``jax.distributed``
on 127.0.0.1. Writes ``devices.json``: per layout the wall and CPU seconds,
the peak resident memory of each process, XLA's bytes per device, and how far
its ``sweep.json`` is from the one-device run's. On a 2-core machine no
layout can be faster than the cores allow; what more devices change is the
memory each device needs.

The chunked run: ``--memory`` is set to what AdamW's default 7x11 grid needs
in one piece, and the grid is 14x22 (4x the configurations), so it runs in
chunks of the default grid's size; its wall time is compared with 4x the one
piece's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "optax_decoupled", "sweep"]
METRICS = ("test_error_per_seed", "train_loss_per_seed", "angular_update_per_seed")


def _env(devices: int, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    **extra,
  )
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(argv: list[str], envs: list[dict[str, str]]) -> dict[str, Any]:
  """Runs one process per environment; the peak resident bytes and the CPU
  seconds of each (the whole process: start-up and figures included)."""
  with tempfile.TemporaryFile("w+") as log:
    procs = [
      subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
      for env in envs
    ]
    peaks: dict[str, Any] = {"peak_rss_bytes": [], "cpu_seconds": []}
    start = time.perf_counter()
    for p in procs:
      _, status, usage = os.wait4(p.pid, 0)
      p.returncode = os.waitstatus_to_exitcode(status)
      peaks["peak_rss_bytes"].append(usage.ru_maxrss * 1024)  # KiB on Linux
      peaks["cpu_seconds"].append(usage.ru_utime + usage.ru_stime)
    # The whole command, start-up and figures included, until the last exits.
    peaks["wall_seconds"] = time.perf_counter() - start
    if any(p.returncode for p in procs):
      log.seek(0)
      raise SystemExit(f"{' '.join(argv)} failed:\n{log.read()[-3000:]}")
  return peaks


def layout(name: str, devices: int, processes: int, folder: str, args) -> dict:
  """One layout of the default sweep: its sweep.json and what it cost."""
  out = os.path.join(folder, name)
  argv = [*CLI, "--out", out, *args.sweep]
  if processes == 1:
    envs = [_env(devices)]
  else:
    port = _free_port()
    envs = [
      _env(
        devices,
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(i),
      )
      for i in range(processes)
    ]
  peaks = _launch(argv, envs)
  with open(os.path.join(out, "sweep.json"), encoding="utf-8") as f:
    payload = json.load(f)
  payload["per_process"] = peaks
  return payload


def _differences(a: dict, b: dict) -> dict:
  """Largest differences between the rows of two sweep.json files."""
  out = {"identical_rows": a["rows"] == b["rows"]}
  for key in METRICS:
    x = np.asarray([r[key] for r in a["rows"]], np.float64)
    y = np.asarray([r[key] for r in b["rows"]], np.float64)
    out[f"max_abs_{key}"] = float(np.nanmax(np.abs(x - y)))
  same = all(
    a["summary"][n][k] == b["summary"][n][k]
    for n in a["summary"]
    for k in ("best", "best_weight_decay_per_lr")
  )
  out["same_best_cells_and_best_wd_per_lr"] = same
  seeds = np.asarray([r["test_error_per_seed"] for r in a["rows"]], np.float64)
  out["max_seed_gap_test_error"] = float(np.nanmax(seeds.max(1) - seeds.min(1)))
  out["spread_decades"] = {
    n: [
      a["summary"][n]["best_wd_spread_decades"],
      b["summary"][n]["best_wd_spread_decades"],
    ]
    for n in a["summary"]
  }
  return out


def _cost(payload: dict) -> dict:
  t = payload["time"]
  return {
    "devices": payload["hardware"]["devices"],
    "processes": payload["hardware"]["processes"],
    "wall_seconds": t["wall_seconds"],
    "cpu_seconds": t["cpu_seconds"],
    "per_process": payload["per_process"],
    "load_average": t["load_average"],
    "memory_per_device_bytes": {
      n: timing["memory_per_device_bytes"] for n, timing in payload["timing"].items()
    },
    "configs_per_chunk": {
      n: timing["configs_per_chunk"] for n, timing in payload["timing"].items()
    },
    "chunks": {n: timing["chunks"] for n, timing in payload["timing"].items()},
    "grid_seconds": {
      n: timing["vmapped_seconds"] for n, timing in payload["timing"].items()
    },
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="docs/sweep-devices")
  parser.add_argument(
    "--sweep", nargs=argparse.REMAINDER, default=[], help="extra sweep arguments"
  )
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  with tempfile.TemporaryDirectory() as folder:
    runs = {
      "1 device": layout("one", 1, 1, folder, args),
      "8 devices": layout("eight", 8, 1, folder, args),
      "2 processes x 4 devices": layout("two", 4, 2, folder, args),
    }
    # The chunked run: AdamW alone, memory = what its default grid needs.
    whole = runs["1 device"]["timing"]["adamw"]
    memory_mib = whole["memory_per_device_bytes"] / 2**20
    chunked_argv = ["--optimizers", "adamw", "--grid", "14x22", *args.sweep]
    out = os.path.join(folder, "chunked")
    peaks = _launch(
      [*CLI, "--out", out, "--memory", f"{memory_mib:.6f}", *chunked_argv], [_env(1)]
    )
    with open(os.path.join(out, "sweep.json"), encoding="utf-8") as f:
      chunked = json.load(f)
    chunked["per_process"] = peaks
  reference = runs["1 device"]
  payload = {
    "sweep_arguments": args.sweep,
    "layouts": {
      name: {**_cost(p), "against_1_device": _differences(reference, p)}
      for name, p in runs.items()
    },
    "8_devices_against_2_processes": _differences(
      runs["8 devices"], runs["2 processes x 4 devices"]
    ),
    "chunked": {
      **_cost(chunked),
      "memory_mib": memory_mib,
      "configs": chunked["timing"]["adamw"]["configs"],
      "one_piece_configs": whole["configs"],
      "one_piece_seconds": whole["vmapped_seconds"],
      "extrapolated_seconds": whole["vmapped_seconds"]
      * chunked["timing"]["adamw"]["configs"]
      / whole["configs"],
    },
  }
  with open(os.path.join(args.out, "devices.json"), "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=1)
  print(json.dumps(payload, indent=1))


def _mib(n: float) -> str:
  return f"{n / 2**20:.0f} MiB"


def render(payload: dict) -> dict[str, str]:
  """The docs' blocks from devices.json."""
  lines = [
    "| layout | wall | CPU of each process | cores busy | peak memory of each "
    "process | XLA's bytes per device (Adam+L2 / AdamW) | rows against 1 device |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, r in payload["layouts"].items():
    d = r["against_1_device"]
    if name == "1 device":
      verdict = "(the reference)"
    elif d["identical_rows"]:
      verdict = "identical"
    else:
      verdict = (
        f"largest test-error difference {100 * d['max_abs_test_error_per_seed']:.2f} "
        f"points (the two seeds of a cell: up to "
        f"{100 * d['max_seed_gap_test_error']:.2f}); "
        f"{'the same' if d['same_best_cells_and_best_wd_per_lr'] else 'other'} "
        "best cells or best λ per α; spread "
        + ", ".join(
          f"{n} {b:.1f} decades (1 device {a:.1f})"
          for n, (a, b) in d["spread_decades"].items()
        )
      )
    per_device = " / ".join(_mib(v) for v in r["memory_per_device_bytes"].values())
    cpu = r["per_process"]["cpu_seconds"]
    wall = r["per_process"]["wall_seconds"]
    lines.append(
      f"| {name} | {wall:.0f} s | {' + '.join(f'{v:.0f} s' for v in cpu)} "
      f"| {sum(cpu) / wall:.2f} "
      f"| {' + '.join(_mib(v) for v in r['per_process']['peak_rss_bytes'])} "
      f"| {per_device} | {verdict} |"
    )
  pair = payload["8_devices_against_2_processes"]
  c = payload["chunked"]
  return {
    "table": "\n".join(lines),
    "processes": (
      "8 devices in one process against 2 processes x 4 devices: "
      + (
        "identical rows, bit for bit."
        if pair["identical_rows"]
        else f"largest test-error difference {100 * pair['max_abs_test_error_per_seed']:.2f} points."
      )
    ),
    "chunked": (
      f"AdamW's 14x22 grid x 2 seeds ({c['configs']} runs) with `--memory "
      f"{c['memory_mib']:.0f}` (what the default {c['one_piece_configs']} runs need in "
      f"one piece) ran in {c['chunks']['adamw']} chunks of "
      f"{c['configs_per_chunk']['adamw']} in {c['grid_seconds']['adamw']:.0f} s, "
      f"against {c['extrapolated_seconds']:.0f} s extrapolated from one piece "
      f"({c['one_piece_seconds']:.0f} s for {c['one_piece_configs']}); peak memory "
      f"{_mib(c['per_process']['peak_rss_bytes'][0])}, XLA's bytes per device "
      f"{_mib(c['memory_per_device_bytes']['adamw'])}."
    ),
  }


if __name__ == "__main__":
  main()
