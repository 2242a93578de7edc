"""``python -m optax_decoupled``: the ``optax-decoupled`` command line."""

import sys

from optax_decoupled.cli import main

if __name__ == "__main__":
  sys.exit(main())
