"""The run's persistent compilation cache (issue 24): on by default under the workdir, scoped to
the run, and a second run with the same directory loads programs instead of compiling them."""

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import config as jax_config
from jax._src import monitoring

from r1jax.rl import config as rl_config
from r1jax.rl import trainer


def test_auto_is_the_processs_cache_else_under_the_workdir_and_none_is_off(tmp_path):
    auto = rl_config.ExperimentConfig(base_dir="unused", total_steps=1)
    assert auto.compilation_cache_dir == "auto"
    with jax_config.compilation_cache_dir(None):
        assert trainer.compilation_cache_dir(auto, str(tmp_path)) == str(
            tmp_path / trainer.COMPILATION_CACHE_NAME)
        assert trainer.compilation_cache_dir(auto, None) is None
    with jax_config.compilation_cache_dir("/shared/cache"):  # JAX_COMPILATION_CACHE_DIR
        assert trainer.compilation_cache_dir(auto, str(tmp_path)) == "/shared/cache"
    off = rl_config.ExperimentConfig(base_dir="unused", total_steps=1, compilation_cache_dir=None)
    assert trainer.compilation_cache_dir(off, str(tmp_path)) is None


def test_a_second_run_loads_its_programs_from_the_cache(tmp_path):
    """Two 'runs' (the context `train` wraps itself in) with the same directory: the first
    writes the program, the second (in-memory caches cleared, as in a new process) hits it;
    the process's previous setting is back after each."""
    hits = []

    def listener(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    monitoring.register_event_listener(listener)
    before = jax.config.jax_compilation_cache_dir
    path = str(tmp_path / trainer.COMPILATION_CACHE_NAME)
    fn = lambda x: jnp.sin(x) * 3.0 + 1.0  # noqa: E731
    try:
        with jax_config.persistent_cache_min_compile_time_secs(0), \
                jax_config.persistent_cache_min_entry_size_bytes(-1):  # cache even tiny programs
            for run in range(2):
                jax.clear_caches()
                with trainer._compilation_cache(path):
                    assert jax.config.jax_compilation_cache_dir == path
                    jax.jit(fn)(np.arange(3.0, dtype=np.float32)).block_until_ready()
                assert jax.config.jax_compilation_cache_dir == before
                assert len(hits) == run  # run 0 compiles and writes, run 1 loads
                assert os.listdir(path)
    finally:
        monitoring.unregister_event_listener(listener)
