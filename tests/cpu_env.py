"""The environment of every JAX process the suite starts: CPU only, cheap compiles.

The suite is mostly XLA compiling tiny programs, so LLVM runs at -O0 with its expensive passes
off and the pre-fusion-emitter CPU codegen (about 5x faster compiles of a GRPO step). Only code
generation changes: the HLO passes (sharding, collectives, buffer assignment, which the
compiled-program tests read) run as in production. Tests whose claim is about production code
generation (tests/models/test_precision.py) set their own flags.
"""

import os

CHEAP_CODEGEN = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                 "--xla_cpu_use_fusion_emitters=false")


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for `devices` simulated CPU devices with cheap code generation."""
    return f"--xla_force_host_platform_device_count={devices} {CHEAP_CODEGEN}"


def env(devices: int = 1, **extra: str) -> dict[str, str]:
    """This process's environment for a child JAX process on `devices` CPU devices, plus
    `extra`."""
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices), **extra)
