"""Wall and CPU time of a command, with the machine's cores and load."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any


def clock() -> Callable[[str], dict[str, Any]]:
  """Starts timing; the returned ``stop(measures)`` gives the wall and CPU
  seconds since (this process, all threads), the cores, the 1-minute load
  average at the end, the process's peak resident memory, and what was
  timed."""
  started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)

  def stop(measures: str) -> dict[str, Any]:
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
      "wall_seconds": time.perf_counter() - started,
      "cpu_seconds": after.ru_utime
      + after.ru_stime
      - before.ru_utime
      - before.ru_stime,
      "cpus": os.cpu_count(),
      "load_average": os.getloadavg()[0],
      # ru_maxrss is in KiB on Linux (bytes on macOS): the process's peak.
      "peak_rss_bytes": after.ru_maxrss * (1 if sys.platform == "darwin" else 1024),
      "measures": measures,
    }

  return stop


def describe_time(t: dict[str, Any]) -> str:
  return (
    f"{t['wall_seconds']:.0f} s wall, {t['cpu_seconds']:.0f} s CPU on {t['cpus']} "
    f"cores, load average {t['load_average']:.1f}"
  )
