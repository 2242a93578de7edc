"""``optax-decoupled``: train with the paper's optimizers, sweep lr x weight decay.

Subcommands ``train``, ``sweep``, ``restarts`` and ``schedule`` (see ``--help`` of each).
Every argument is checked before anything is written; a bad one ends the
command with a one-line message and exit status 2. ``--out`` is claimed before
any work (see ``_outputs``): outputs are staged inside it and moved into place
only when complete; Ctrl-C and SIGTERM leave nothing behind.
"""

from __future__ import annotations

import contextlib
import sys

from optax_decoupled.cli import (
  _args,
  _cmd_restarts,
  _cmd_schedule,
  _cmd_sweep,
  _cmd_train,
  _outputs,
)

#: The subcommands, each a module with ``add_parser(sub)`` and ``run(args)``.
_COMMANDS = {
  "train": _cmd_train,
  "sweep": _cmd_sweep,
  "restarts": _cmd_restarts,
  "schedule": _cmd_schedule,
}


def _parser():
  parser = _args.Parser(
    prog="optax-decoupled",
    description="Decoupled weight decay (Loshchilov & Hutter): train a small "
    "MLP, reproduce the paper's learning-rate x weight-decay heatmaps, compare "
    "warm restarts with other schedules, plot SGDR schedules.",
  )
  parser.add_argument("--version", action="version", version=_version())
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_args.Parser)

  for command in _COMMANDS.values():
    command.add_parser(sub)
  return parser


def _version():
  from optax_decoupled import __version__

  return f"%(prog)s {__version__}"


#: What the ``examples`` extra installs, by import name.
_EXTRA = ("flax", "sklearn", "matplotlib", "tqdm")


def main(argv=None) -> int:
  """Runs the command line; returns the exit status.

  0 on success; the usage and the subcommands on stderr and 2 without
  arguments; 2 with one line on stderr for bad input or an ``--out`` that
  cannot be used; 1 with one line when the ``examples`` extra is missing; 130
  (Ctrl-C) and 143 (SIGTERM), with nothing left behind.
  """
  as_program = argv is None  # not called from Python: own the signals
  argv = sys.argv[1:] if argv is None else list(argv)
  command = next((a for a in argv if a in _COMMANDS), None)
  prog = "optax-decoupled" + (f" {command}" if command else "")
  signals = _outputs.on_signals(prog) if as_program else contextlib.nullcontext()
  with signals:
    if not argv:  # no subcommand: say what there is, as a usage error
      print(_parser().format_help(), end="", file=sys.stderr)
      return 2
    try:
      args = _parser().parse_args(argv)
      return _COMMANDS[args.command].run(args)
    except ValueError as error:
      message = " ".join(str(error).split())
      print(f"{prog}: error: {message}", file=sys.stderr)
      return 2
    except ModuleNotFoundError as error:
      if (error.name or "").split(".")[0] not in _EXTRA:
        raise
      print(
        f"{prog}: error: the command line needs the 'examples' extra "
        f"({error.name} is not installed): "
        "pip install -e '.[examples]' in a clone of the repository (the package "
        "is not on a package index yet)",
        file=sys.stderr,
      )
      return 1
    except OSError as error:  # e.g. the disk filled up: nothing half-written stays
      print(f"{prog}: error: {error}; nothing was written", file=sys.stderr)
      return 1
    except KeyboardInterrupt:  # a signal handler other than ours was active
      print(f"{prog}: interrupted (Ctrl-C); nothing was written", file=sys.stderr)
      return 130
    finally:
      _outputs.release()
