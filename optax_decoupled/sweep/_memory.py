"""How much memory a sweep's program needs, and how much a device has."""

import math

import jax
from jax.sharding import Mesh

#: The share of the free memory a sweep plans to use.
USABLE = 0.8


def available_bytes() -> int | None:
  """Memory a new allocation can get now, or None where it cannot be told."""
  found = []
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          found.append(int(line.split()[1]) * 1024)
  except (OSError, ValueError, IndexError):
    pass
  for limit, usage in (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    (
      "/sys/fs/cgroup/memory/memory.limit_in_bytes",
      "/sys/fs/cgroup/memory/memory.usage_in_bytes",
    ),
  ):
    try:
      with open(limit) as f, open(usage) as g:
        found.append(int(f.read()) - int(g.read()))
    except (OSError, ValueError):
      pass  # absent, or "max" (no limit)
  return min(found) if found else None


def compiled_bytes(compiled) -> int | None:
  """Per device: arguments, outputs and temporaries of a compiled program
  (XLA's own account), or None where the backend does not tell."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def budget(mesh: Mesh, memory: int | None) -> int | None:
  """Bytes a sweep may use on each of ``mesh``'s devices: ``memory``, or
  ``USABLE`` of what the emptiest local device has free. Host (CPU) devices
  share the machine's memory, so it is split between them."""
  if memory is not None:
    return memory
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  free = []
  for device in local:
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
      free.append(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  if free:
    return int(USABLE * min(free))
  host = available_bytes()
  return None if host is None else int(USABLE * host / max(len(local), 1))


def size(n: float) -> str:
  if n < 2**30:
    return f"{n / 2**20:.0f} MiB"
  exponent = min(int(math.log(n, 1024)), 6)
  unit = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")[exponent]
  return f"{n / 1024**exponent:.3g} {unit}"
