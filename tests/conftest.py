"""Test-wide settings: 8 simulated CPU devices (single-device tests use the first one)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
