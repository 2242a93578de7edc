"""The ``optax-decoupled`` command line, an application built on the library.

It imports the library's public face only (``import optax_decoupled as odx``);
data, models, the training loop, the sweep and the plots live here.
"""

from optax_decoupled.cli._main import main as main

__all__ = ("main",)
