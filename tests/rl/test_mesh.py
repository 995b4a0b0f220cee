"""rl.trainer.make_mesh: topology-aware device placement (mesh_utils), the hybrid mesh across
slices, and the persistent compilation cache option."""

import dataclasses

import jax
import numpy as np
import pytest

from r1jax import sharding
from r1jax.rl import config as rl_config
from r1jax.rl import trainer

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def experiment(**fields):
    return rl_config.ExperimentConfig(base_dir="unused", total_steps=1, **fields)


def test_mesh_axes_sizes_and_types():
    mesh = trainer.make_mesh(experiment(mesh=(("data", 2), ("fsdp", -1), ("tensor", 2))))
    assert mesh.axis_names == sharding.MESH_AXES
    assert mesh.devices.shape == (2, 2, 1, 2)
    assert set(mesh.axis_types) == {jax.sharding.AxisType.Auto}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    """What mesh_utils reads of a multi-slice device (not TPU: each slice keeps its order)."""

    id: int
    slice_index: int
    process_index: int = 0
    platform: str = "cpu"
    device_kind: str = "cpu"


def test_hybrid_mesh_puts_the_data_axis_across_slices():
    # Two slices of 4 devices, listed interleaved: the slice must still be the outer data axis.
    devices = [FakeDevice(i, i % 2) for i in range(8)]
    order = trainer._topology_order((4, 2, 1, 1), devices, num_slices=2)
    grid = np.asarray([d.slice_index for d in order]).reshape(4, 2, 1, 1)
    assert (grid[:2] == grid[0, 0]).all() and (grid[2:] == grid[2, 0]).all()
    assert grid[0, 0] != grid[2, 0]  # data rows 0-1 on one slice, 2-3 on the other
    with pytest.raises(ValueError, match="data=3 must be a multiple of config.num_slices=2"):
        trainer._topology_order((3, 2, 1, 1), devices[:6], num_slices=2)


def test_compilation_cache_dir_is_applied(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        trainer.make_mesh(experiment(compilation_cache_dir=str(tmp_path)))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path)
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_num_slices_is_validated():
    with pytest.raises(ValueError, match="num_slices"):
        experiment(num_slices=0)
