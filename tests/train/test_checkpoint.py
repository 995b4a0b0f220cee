"""Orbax checkpoints: round trip on 8 simulated devices, keep-N, resharding, atomicity."""

import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from r1jax.train import checkpoint


def _mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def _state(step, sharding=None):
    w = jnp.arange(32.0).reshape(8, 4) + step
    if sharding is not None:
        w = jax.device_put(w, sharding)
    return {
        "step": jnp.int32(step),
        "params": {"w": w, "b": jnp.full((3,), step, jnp.bfloat16)},
        "rng": jax.random.key(step),
    }


def _assert_state_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    got, want = dict(got), dict(want)
    got["rng"], want["rng"] = jax.random.key_data(got["rng"]), jax.random.key_data(want["rng"])
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_sharded_round_trip_keep_n_and_latest(tmp_path):
    assert jax.device_count() == 8
    sharding = NamedSharding(_mesh((8,), ("data",)), PartitionSpec("data"))
    with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.restore_latest(checkpoint.abstract_tree(_state(0, sharding))) is None
        for step in (1, 2, 3):
            assert ckpt.save(step, _state(step, sharding), {"data_position": step * 10})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 3]
        assert ckpt.latest_step() == 3
    with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as ckpt:  # a fresh process resumes
        state, meta = ckpt.restore_latest(checkpoint.abstract_tree(_state(0, sharding)))
        assert meta == {"data_position": 30}
        _assert_state_equal(state, _state(3))
        assert state["params"]["w"].sharding == sharding
        old_state, old_meta = ckpt.restore(2, checkpoint.abstract_tree(_state(0, sharding)))
        assert old_meta["data_position"] == 20 and int(old_state["step"]) == 2


def test_restore_into_a_different_sharding(tmp_path):
    saved_sharding = NamedSharding(_mesh((8,), ("data",)), PartitionSpec("data"))
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        ckpt.save(5, _state(5, saved_sharding), {"config": {"lr": 1e-6}})
    mesh = _mesh((2, 4), ("fsdp", "tensor"))
    target = NamedSharding(mesh, PartitionSpec("tensor", "fsdp"))
    abstract = checkpoint.abstract_tree(_state(0))
    abstract["params"]["w"] = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=target)
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        state, meta = ckpt.restore_latest(abstract)
    assert state["params"]["w"].sharding == target
    assert state["params"]["w"].addressable_shards[0].data.shape == (2, 2)
    _assert_state_equal(state, _state(5))
    assert meta == {"config": {"lr": 1e-6}}


def test_a_half_written_checkpoint_is_never_latest(tmp_path):
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, _state(1), {"data_position": 1})
    # A crash while writing step 2 leaves orbax's temporary directory (renamed to "2" only once
    # complete). Make it hold a full copy of a checkpoint, so only the name marks it unfinished.
    tmp_dir = tmp_path / "2.orbax-checkpoint-tmp"
    shutil.copytree(tmp_path / "1", tmp_dir)
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1
        state, meta = ckpt.restore_latest(checkpoint.abstract_tree(_state(0)))
        assert meta == {"data_position": 1}
        _assert_state_equal(state, _state(1))
        ckpt.save(2, _state(2), {"data_position": 2})  # waits for the leftover's cleanup first
        ckpt.wait()
        assert ckpt.latest_step() == 2
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_save_interval_and_force(tmp_path):
    with checkpoint.Checkpointer(tmp_path, save_interval_steps=10, async_save=False) as ckpt:
        assert ckpt.save(10, _state(10), {})
        assert not ckpt.save(13, _state(13), {})
        assert ckpt.save(17, _state(17), {}, force=True)
        assert ckpt.all_steps() == [10, 17]


def test_bad_meta_fails_before_writing(tmp_path):
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match="step 4 is not JSON-serialisable"):
            ckpt.save(4, _state(4), {"array": np.zeros(2)})
        assert ckpt.latest_step() is None
    with pytest.raises(ValueError, match="max_to_keep=0"):
        checkpoint.Checkpointer(tmp_path, max_to_keep=0)


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import jax.numpy as jnp
    from r1jax.train import checkpoint
    ckpt = checkpoint.Checkpointer(sys.argv[1])
    ckpt.save(1, {"w": jnp.ones((4,))}, {"pos": 1})
    ckpt.wait()
    ckpt.save(2, {"w": jnp.ones((4096, 4096))}, {"pos": 2})  # 64 MB, written in the background
    # Die mid-write: as soon as the step-2 temporary directory exists (polling, not a fixed
    # sleep, so a fast or a loaded machine both hit the window).
    for _ in range(20000):
        names = os.listdir(sys.argv[1])
        if "2" in names:
            os._exit(3)  # the save finished before we could interrupt it
        if any(n.startswith("2.") for n in names):
            os._exit(0)
        time.sleep(0.0005)
    os._exit(4)
""")


def test_a_process_killed_mid_save_resumes_from_the_previous_step(tmp_path):
    subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], check=True, timeout=120)
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith("2.")]
    assert leftovers, os.listdir(tmp_path)  # the save of step 2 was interrupted
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1
        state, meta = ckpt.restore_latest({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
        assert meta == {"pos": 1}
        np.testing.assert_array_equal(state["w"], np.ones(4))
        ckpt.save(2, {"w": jnp.zeros((4,))}, {"pos": 2})
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]
