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


# ---------------------------------------------------------------------------------------------
# Verification: nothing non-finite is saved; a corrupted step falls back to the previous one
# ---------------------------------------------------------------------------------------------


def _adam_state(step):
    """A state whose Adam moment is random and much larger than the rest, so it fills most of
    the data file that orbax writes."""
    rng = np.random.default_rng(step)
    return {"step": jnp.int32(step), "params": {"w": jnp.asarray(rng.standard_normal((8, 4)),
                                                                 jnp.float32)},
            "opt_state": {"mu": jnp.asarray(rng.standard_normal((128, 64)), jnp.float32)},
            "rng": jax.random.key(step)}


def _save_steps(directory, steps):
    with checkpoint.Checkpointer(directory, async_save=False) as ckpt:
        for step in steps:
            ckpt.save(step, _adam_state(step), {"step": step})


def _data_files(step_dir):
    """orbax's array data files of a step, largest first (there the Adam moment dominates)."""
    return sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()
                   and p.parent.name == "d" and "ocdbt" in p.parent.parent.name),
                  key=lambda p: -p.stat().st_size)


def _flip_adam_moment(step_dir):
    """Flips 64 bytes in the middle of the data file that holds the Adam moment (stored
    compressed, so the bytes cannot be told apart; any of them is the moment's)."""
    path = _data_files(step_dir)[0]
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])
    path.write_bytes(bytes(data))


def _swap_state_for_other_valid_arrays(step_dir):
    """The state item replaced by another step's: readable arrays with the wrong values."""
    shutil.rmtree(step_dir / "state")
    shutil.copytree(step_dir.parent / "1" / "state", step_dir / "state")


def _truncate_data_file(step_dir):
    biggest = _data_files(step_dir)[0]
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])


def _empty_step_dir(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


CORRUPTIONS = {
    "flipped_bytes_in_adam_moment": _flip_adam_moment,
    "truncated_data_file": _truncate_data_file,
    "garbage_array_metadata": lambda d: (d / "state" / "_METADATA").write_bytes(b"\x00{garbage"),
    "garbage_meta": lambda d: (d / "meta" / "metadata").write_text("{not json"),
    "missing_meta": lambda d: (d / "meta" / "metadata").unlink(),
    "missing_manifest": lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "missing_checksums": lambda d: shutil.rmtree(d / "checksums"),
    "empty_step_dir": _empty_step_dir,
    "state_swapped_for_other_valid_arrays": _swap_state_for_other_valid_arrays,
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupted_latest_step_falls_back_to_the_previous_one(tmp_path, corruption):
    _save_steps(tmp_path, (1, 2))
    CORRUPTIONS[corruption](tmp_path / "2")
    abstract = checkpoint.abstract_tree(_adam_state(0))
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
        with pytest.warns(UserWarning, match="step 2"):
            state, meta = ckpt.restore_latest(abstract, set_aside=True)
        assert meta == {"step": 1} and ckpt.restored_step == 1
        _assert_state_equal(state, _adam_state(1))
        [(skipped, reason)] = ckpt.skipped
        assert skipped == 2 and reason, reason
        if corruption == "flipped_bytes_in_adam_moment":  # read back silently but wrong
            assert reason == "checksum mismatch in 1 array(s): ['opt_state']['mu']", reason
        # The bad step is kept aside, never deleted, and the run can write step 2 again.
        assert (tmp_path / "2.rejected-0").is_dir() and ckpt.all_steps() == [1]
        ckpt.save(2, _adam_state(2), {"step": 2})
    with checkpoint.Checkpointer(tmp_path) as ckpt:  # the rewritten step 2 verifies
        _assert_state_equal(ckpt.restore_latest(abstract)[0], _adam_state(2))
        assert ckpt.skipped == []


# orbax does not need these files to read the arrays back; the checksums then prove that the
# values are the saved ones, so the step restores (rather than being skipped for a file it
# does not use).
NOT_NEEDED = {
    "missing_array_metadata": lambda d: (d / "state" / "_METADATA").unlink(),
    "missing_step_metadata": lambda d: (d / "_CHECKPOINT_METADATA").unlink(),
    "garbage_step_metadata": lambda d: (d / "_CHECKPOINT_METADATA").write_text("[[["),
    "missing_sharding_file": lambda d: (d / "state" / "_sharding").unlink(),
}


@pytest.mark.parametrize("damage", sorted(NOT_NEEDED))
def test_damage_to_files_orbax_does_not_read_restores_verified_values(tmp_path, damage):
    _save_steps(tmp_path, (1, 2))
    NOT_NEEDED[damage](tmp_path / "2")
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        state, meta = ckpt.restore_latest(checkpoint.abstract_tree(_adam_state(0)))
        assert meta == {"step": 2} and ckpt.skipped == []
        _assert_state_equal(state, _adam_state(2))


def test_readable_arrays_with_wrong_values_are_named_by_their_checksums(tmp_path):
    _save_steps(tmp_path, (1, 2))
    _swap_state_for_other_valid_arrays(tmp_path / "2")
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(checkpoint.CorruptCheckpointError,
                           match=r"step 2 .*checksum mismatch in 4 array\(s\): "
                                 r"\['opt_state'\]\['mu'\], \['params'\]\['w'\], \['rng'\]"):
            ckpt.restore(2, checkpoint.abstract_tree(_adam_state(0)))


def test_when_no_step_verifies_the_error_lists_each_and_nothing_moves(tmp_path):
    _save_steps(tmp_path, (1, 2))
    _truncate_data_file(tmp_path / "1")
    _empty_step_dir(tmp_path / "2")
    with checkpoint.Checkpointer(tmp_path) as ckpt:
        with pytest.raises(checkpoint.CheckpointError, match=r"step 2: unreadable.*step 1: "
                                                             r"unreadable"), \
                pytest.warns(UserWarning):
            ckpt.restore_latest(checkpoint.abstract_tree(_adam_state(0)), set_aside=True)
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_a_non_finite_state_is_never_saved(tmp_path):
    with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, _adam_state(1), {})
        bad = _adam_state(2)
        bad["opt_state"]["mu"] = bad["opt_state"]["mu"].at[5, 3].set(jnp.inf)
        with pytest.raises(checkpoint.NonFiniteStateError,
                           match=r"step 2 .*\['opt_state'\]\['mu'\].*newest: 1"):
            ckpt.save(2, bad, {})
        assert ckpt.all_steps() == [1]


def test_checksums_do_not_depend_on_sharding_and_see_one_changed_element():
    mesh = _mesh((8,), ("data",))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 8)), jnp.float32)
    tree = {"x": x, "key": jax.random.key(3), "b": jnp.ones((5,), jnp.bfloat16)}
    sharded = dict(tree, x=jax.device_put(x, NamedSharding(mesh, PartitionSpec("data"))))
    assert checkpoint.fingerprint(tree) == checkpoint.fingerprint(sharded)
    for i in (0, 77, 511):  # one element, one ulp
        bumped = dict(tree, x=x.reshape(-1).at[i].set(np.nextafter(x.reshape(-1)[i], np.inf))
                      .reshape(x.shape))
        assert checkpoint.fingerprint(bumped)["['x']"]["checksum"] != \
            checkpoint.fingerprint(tree)["['x']"]["checksum"]
