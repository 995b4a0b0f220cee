"""The R1 pipeline's SFT stage across two processes (issue 21): two local processes joined by
`jax.distributed` (4 CPU devices each, one 8-device mesh) run `common.sft_stage`, the stage
function of the cold start, the rejection-sampling SFT and the distillation SFT. The params are
trained sharded across both processes, saved once (`common.save_model`: gathered leaf by leaf,
written by process 0) and reloaded by both.
"""

import hashlib
import json
import pathlib
import subprocess
import sys

import cpu_env
import jax
import numpy as np
import portpicker
import processes as processes_lib
import pytest
from flax import traverse_util

from r1jax import config_utils, distributed, sharding
from r1jax.r1 import config as r1_config
from r1jax.train import base, checkpoint, metrics, partition
from r1jax.train import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
#: One SFT step of 8 packed rows (one per device of the 8-device fsdp mesh).
SECTION = {"sft": {"steps": 1, "batch_size": 8, "seq_len": 128, "log_every": 1,
                   "checkpoint_every": 1}, "optim": {"learning_rate": 1e-3, "warmup_steps": 0}}

_RUNNER = """
import hashlib, json, pathlib, sys
from r1jax import distributed
distributed.initialize()  # R1JAX_* environment variables
import jax, numpy as np
from flax import traverse_util
from r1jax import config_utils
from r1jax.data import templates
from r1jax.r1 import common, data
from r1jax.r1 import config as r1_config
from r1jax.train import base
assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
section = config_utils.freeze(r1_config.SFTStage, json.loads(sys.argv[3]), "sft")
records = data.cold_start_records("arithmetic", {"min_digits": 1, "max_digits": 2}, 8, 0,
                                  templates.get("r1_zero"))
model_dir = common.sft_stage(pathlib.Path(sys.argv[2]), sys.argv[1], records, section,
                             desc="sft")
_, params, _ = base.load_model(model_dir)
flat = traverse_util.flatten_dict(params)
digest = hashlib.sha256(b"".join(np.asarray(flat[k]).tobytes() for k in sorted(flat)))
print("RESULT " + json.dumps({"dir": str(model_dir), "digest": digest.hexdigest()}), flush=True)
"""


def _digest(params) -> str:
    """The runner's digest of a param tree (leaves in path order)."""
    flat = traverse_util.flatten_dict(params)
    return hashlib.sha256(b"".join(np.asarray(flat[k]).tobytes() for k in sorted(flat))
                          ).hexdigest()


def _run_two_processes(base_dir, stage_dir, timeout=600) -> list[dict]:
    """Starts both processes, waits for both (killing both if one fails), returns their
    RESULT lines."""
    port = portpicker.pick_unused_port()
    processes = [subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(base_dir), str(stage_dir), json.dumps(SECTION)],
        env=cpu_env.env(4, **{distributed.ENV_COORDINATOR: f"127.0.0.1:{port}",
                              distributed.ENV_NUM_PROCESSES: "2",
                              distributed.ENV_PROCESS_ID: str(i)}),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        for i in range(2)]
    return processes_lib.finish_all(processes, "RESULT ", timeout)


def _restore_trained_params(stage_dir, model_config, section):
    """The params of the stage's last SFT checkpoint, restored onto this process's 8 devices
    with the training sharding (verified against the checksums the two processes wrote)."""
    mesh = sharding.make_mesh(dict(section.sft.mesh))
    abstract_params, _ = partition.param_shardings(model_config, mesh)
    abstract = jax.eval_shape(lambda p: state_lib.create_train_state(
        p, section.optim, jax.random.key(section.sft.seed)), abstract_params)
    shardings = partition.state_shardings(abstract, abstract_params, mesh)
    with checkpoint.Checkpointer(stage_dir / "train" / "checkpoints") as ckpt:
        state, _ = ckpt.restore(section.sft.steps, checkpoint.abstract_tree(abstract, shardings))
    return state["params"]


@pytest.mark.slow  # two interpreters start JAX and compile one SFT step: ~40-90 s on 2 cores
def test_sft_stage_saves_and_reloads_across_two_processes(base_dir, tmp_path):
    stage_dir = tmp_path / "cold_start"
    results = _run_two_processes(base_dir, stage_dir)
    model_dir = stage_dir / "model"
    assert [r["dir"] for r in results] == [str(model_dir)] * 2 and base.exists(model_dir)
    # Both processes reloaded the same saved model, and so does this process.
    model_config, saved, _ = base.load_model(model_dir)
    assert results[0]["digest"] == results[1]["digest"] == _digest(saved)
    # What was saved is what was trained, bit for bit: the params were sharded over both
    # processes' devices (fsdp 8), so a shard gathered into the wrong place fails here.
    section = config_utils.freeze(r1_config.SFTStage, SECTION, "sft")
    trained = _restore_trained_params(stage_dir, model_config, section)
    spans = [leaf for leaf in jax.tree.leaves(trained)
             if leaf.addressable_shards[0].data.size < leaf.size]
    assert spans, "no parameter was sharded: the test would not cross processes"
    flat_saved = traverse_util.flatten_dict(saved)
    for path, leaf in traverse_util.flatten_dict(trained).items():
        np.testing.assert_array_equal(np.asarray(flat_saved[path]), np.asarray(leaf),
                                      err_msg=str(path))
    # The one step trained on real tokens and moved the base.
    (record,) = metrics.read_jsonl(stage_dir / "train" / "metrics.jsonl")
    assert np.isfinite(record["ce"]) and record["ce"] > 0
    _, start, _ = base.load_model(base_dir)
    assert _digest(start) != _digest(saved)
