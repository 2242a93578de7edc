"""Where the command line writes: a run's folder appears whole or not at all.

* :func:`check_out` runs before any work. It refuses an ``--out`` that cannot
  be a folder or cannot be written, or that already holds files (unless
  ``overwrite``); then it creates the folder (and its missing parents) and
  takes an exclusive lock in it, so that a second run into the same folder is
  refused at once instead of both claiming success.
* :func:`staging` is a folder *inside* ``--out``: moving the finished files
  into place is a rename within one filesystem, even when ``--out`` is a mount
  point (tmpfs, a Docker volume, NFS). With ``overwrite`` the old files are
  moved aside first and deleted only once the new ones are in place.
* :func:`release` (called by ``main`` on every exit) and :func:`on_signals`
  (Ctrl-C, SIGTERM) remove everything a run that did not finish created: the
  staging folder, the lock, ``--out`` and parent folders it made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading

try:
  import fcntl
except ImportError:  # Windows: no advisory locks; runs are still staged
  fcntl = None

_PREFIX = ".optax-decoupled-"
_LOCK = _PREFIX + "lock"
_STAGING = _PREFIX + "staging-"
_OLD = _PREFIX + "old-"


@dataclasses.dataclass
class _Claim:
  out: str  # as the user wrote it, for messages
  path: str  # absolute
  overwrite: bool
  created: list[str]  # folders this run made, parents first
  lock_fd: int | None = None
  staging: str | None = None
  published: bool = False


_claims: dict[str, _Claim] = {}
_done: list[str] = []  # the --out of every run written whole, for messages
# Held while files move into place, so that a signal cannot clean up halfway.
_publishing = threading.RLock()


def _fail(out, reason):
  return ValueError(f"--out {out!r}: {reason}")


def check_out(out: str, *, overwrite: bool = False) -> None:
  """Claims ``out`` for this run, or raises ``ValueError`` (one line)."""
  if not out.strip():
    raise ValueError("--out must name a folder, got an empty string")
  path = os.path.abspath(out)
  if path in _claims:
    return
  if os.path.islink(path) and not os.path.exists(path):
    raise _fail(out, "is a symbolic link to nothing (dangling)")
  if os.path.exists(path) and not os.path.isdir(path):
    raise _fail(out, "exists and is not a folder")
  missing, first = [], path
  while not os.path.lexists(first):
    missing.append(first)
    first = os.path.dirname(first)
  if not os.path.isdir(first):
    reason = "a dangling symbolic link" if os.path.islink(first) else "not a folder"
    raise _fail(out, f"{first!r} is {reason}, so nothing can be created under it")
  if overwrite:
    _check_overwritable(out, path)
  claim = _Claim(out, path, overwrite, created=[])
  _claims[path] = claim
  try:
    for folder in reversed(missing):
      try:
        os.mkdir(folder)
        claim.created.append(folder)
      except FileExistsError:
        pass
    _lock(claim)
    leftovers = [e for e in os.listdir(path) if e.startswith((_STAGING, _OLD))]
    for entry in leftovers:  # from a run killed with SIGKILL: nobody holds them
      shutil.rmtree(os.path.join(path, entry), ignore_errors=True)
    held = _entries(path)
    if held and not overwrite:
      shown = ", ".join(sorted(held)[:3]) + (", ..." if len(held) > 3 else "")
      raise _fail(
        out,
        f"is not empty ({shown}); choose a new folder, or pass --overwrite to "
        "replace what is there with this run",
      )
  except OSError as error:
    _release(claim)
    raise _fail(out, f"cannot write there ({error.strerror or error})") from None
  except BaseException:
    _release(claim)
    raise


def _check_overwritable(out, path):
  """--overwrite replaces a run, never a home, a project or the working dir."""
  home = os.path.expanduser("~")
  cwd = os.getcwd()
  if (
    path in (os.path.abspath(os.sep), home)
    or cwd == path
    or cwd.startswith(path + os.sep)
    or os.path.exists(os.path.join(path, ".git"))
  ):
    raise _fail(
      out,
      "--overwrite refuses to replace this folder (it is /, ~, "
      "the working folder or one above it, or a git checkout)",
    )


def _entries(path):
  return [e for e in os.listdir(path) if e != _LOCK]


def _lock(claim):
  if fcntl is None:
    return
  lock = os.path.join(claim.path, _LOCK)
  for _ in range(5):
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise _fail(
        claim.out, "another optax-decoupled run is writing there right now"
      ) from None
    except OSError:  # a filesystem without locks (some NFS setups): go on unlocked
      claim.lock_fd = fd
      return
    try:
      same = os.stat(lock).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:  # else the lock was removed by a run that just finished: retry
      claim.lock_fd = fd
      return
    os.close(fd)
  raise _fail(claim.out, "could not take the lock (other runs keep finishing there)")


@contextlib.contextmanager
def staging(out: str):
  """A folder inside ``out`` whose files replace ``out``'s content on success."""
  path = os.path.abspath(out)
  if path not in _claims:
    check_out(out)
  claim = _claims[path]
  claim.staging = tempfile.mkdtemp(prefix=_STAGING, dir=path)
  try:
    yield claim.staging
    with _publishing:
      _publish(claim)
  finally:
    shutil.rmtree(claim.staging, ignore_errors=True)
    claim.staging = None


def _publish(claim):
  path, tmp = claim.path, str(claim.staging)
  old_entries = [e for e in _entries(path) if e != os.path.basename(tmp)]
  if old_entries and not claim.overwrite:
    raise _fail(claim.out, "files appeared there during the run; nothing was replaced")
  old = tempfile.mkdtemp(prefix=_OLD, dir=path) if old_entries else ""
  moved_old, moved_new = [], []
  try:
    for entry in old_entries:
      os.rename(os.path.join(path, entry), os.path.join(old, entry))
      moved_old.append(entry)
    for entry in os.listdir(tmp):
      os.rename(os.path.join(tmp, entry), os.path.join(path, entry))
      moved_new.append(entry)
  except OSError as error:  # put everything back as it was
    for entry in moved_new:
      os.rename(os.path.join(path, entry), os.path.join(tmp, entry))
    for entry in moved_old:
      os.rename(os.path.join(old, entry), os.path.join(path, entry))
    if old:
      with contextlib.suppress(OSError):
        os.rmdir(old)  # empty again; kept (with the old run) if not
    raise _fail(
      claim.out, f"could not move the outputs in ({error.strerror})"
    ) from None
  claim.published = True
  _done.append(claim.out)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def release() -> None:
  """Ends every claim: unlocks, and removes what an unfinished run created."""
  with _publishing:
    for claim in list(_claims.values()):
      _release(claim)


def _release(claim):
  if not claim.published and claim.staging:
    shutil.rmtree(claim.staging, ignore_errors=True)
  if claim.lock_fd is not None:
    with contextlib.suppress(OSError):
      os.unlink(os.path.join(claim.path, _LOCK))
    os.close(claim.lock_fd)
    claim.lock_fd = None
  if not claim.published:
    for folder in reversed(claim.created):
      with contextlib.suppress(OSError):
        os.rmdir(folder)  # only if empty: never someone else's files
  _claims.pop(claim.path, None)


@contextlib.contextmanager
def on_signals(prog: str):
  """Ctrl-C (exit 130) and SIGTERM (exit 143): one line, nothing left behind.

  Python runs signal handlers only between bytecodes of the main thread,
  which may sit in one long compiled JAX call; a watcher thread woken through
  ``signal.set_wakeup_fd`` cleans up and exits at once instead, without the
  interpreter's shutdown (where JAX's threads can crash).
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  read, write = os.pipe()
  os.set_blocking(write, False)
  signals = (signal.SIGINT, signal.SIGTERM)
  previous = {s: signal.signal(s, lambda *_: None) for s in signals}
  previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
  watcher = threading.Thread(target=_watch, args=(read, prog), daemon=True)
  watcher.start()
  try:
    yield
  finally:
    signal.set_wakeup_fd(previous_fd)
    for s, handler in previous.items():
      signal.signal(s, handler)
    os.close(write)
    watcher.join(timeout=5)
    os.close(read)


def _watch(read, prog):
  while True:
    data = os.read(read, 1)
    if not data:
      return
    if data[0] not in (signal.SIGINT, signal.SIGTERM):
      continue
    interrupt = data[0] == signal.SIGINT
    with _publishing:
      release()
      done = list(_done)
      what = "interrupted (Ctrl-C)" if interrupt else "terminated (SIGTERM)"
      kept = f"the run in {done[0]} is complete" if done else "nothing was written"
      with contextlib.suppress(Exception):
        sys.stdout.flush()
      with contextlib.suppress(Exception):
        os.write(2, f"{prog}: {what}; {kept}\n".encode())
      os._exit(130 if interrupt else 143)


def _finite(obj, path, nulled):
  """``obj`` with every non-finite float replaced by None (strict JSON)."""
  if isinstance(obj, float) and not math.isfinite(obj):
    nulled.append(path)
    return None
  if isinstance(obj, dict):
    return {
      k: _finite(v, f"{path}.{k}" if path else str(k), nulled) for k, v in obj.items()
    }
  if isinstance(obj, (list, tuple)):
    return [_finite(v, f"{path}[{i}]", nulled) for i, v in enumerate(obj)]
  return obj


def write_json(path: str, obj) -> list[str]:
  """Writes strict JSON: NaN and infinities become ``null``, and are reported.

  Returns the keys that were not finite (a diverged run), after printing them
  in one line.
  """
  nulled: list[str] = []
  obj = _finite(obj, "", nulled)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, allow_nan=False)
    f.write("\n")
  if nulled:
    shown = ", ".join(nulled[:4]) + (
      f" and {len(nulled) - 4} more" if len(nulled) > 4 else ""
    )
    print(
      f"note: {shown} not finite (the run diverged): written as null in "
      f"{os.path.basename(path)}",
      flush=True,
    )
  return nulled
