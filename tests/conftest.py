"""A strict JAX environment for every test.

Eight host CPU devices (set before jax is imported) for the multi-device tests,
strict dtype promotion and rank promotion errors, as equinox does.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
