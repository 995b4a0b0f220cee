"""Multi-host GRPO: two local processes joined by `jax.distributed` (4 CPU devices each, gloo
collectives) run the smoke preset and must reproduce a one-process run on 8 devices with the
same mesh; the checkpoint they write restores in this (one-process, 8-device) test process.

Also the settings resolution of `r1jax.distributed.initialize` and the row helpers.
"""

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
from conftest import config_preset

from r1jax import distributed, sharding
from r1jax.models import transformer
from r1jax.rl import config as rl_config
from r1jax.rl import step
from r1jax.train import base, checkpoint, metrics
from r1jax.train import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3
# Same global mesh in both runs; batch shards = fsdp * expert = 4, so 4 prompts (2 per host).
OVERRIDES = {"total_steps": STEPS, "mesh": {"fsdp": 2, "expert": 2, "tensor": 2},
             "grpo.prompts_per_step": 4, "eval.num_prompts": 4, "eval.every": 0,
             # Evaluation samples like training (one compiled sampler), without greedy.
             "eval.temperature": 1.0, "eval.top_p": None, "eval.greedy": False,
             "tensorboard": False, "plots": False}

_RUNNER = """
import importlib.util, json, sys
from r1jax import distributed
distributed.initialize()  # R1JAX_* environment variables; a no-op for one process
spec = importlib.util.spec_from_file_location("c", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config("smoke")
config.base_dir = sys.argv[2]
for key, value in json.loads(sys.argv[4]).items():
    if "." in key:
        config.update_from_flattened_dict({key: value})
    else:
        config[key] = value
from r1jax.rl import trainer
summary = trainer.train(config, sys.argv[3])
print("SUMMARY " + json.dumps(summary, default=float), flush=True)
"""


# ---------------------------------------------------------------------------------------------
# Settings and helpers (one process)
# ---------------------------------------------------------------------------------------------


def test_settings_come_from_arguments_then_environment(monkeypatch):
    monkeypatch.setenv(distributed.ENV_COORDINATOR, "10.0.0.1:1234")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "4")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "3")
    assert distributed.resolve() == distributed.Settings("10.0.0.1:1234", 4, 3)
    assert distributed.resolve(num_processes=8, process_id=5) == \
        distributed.Settings("10.0.0.1:1234", 8, 5)
    with pytest.raises(ValueError, match="process_id=4"):
        distributed.resolve(process_id=4)
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "x")
    with pytest.raises(ValueError, match="R1JAX_PROCESS_ID='x'"):
        distributed.resolve()


def test_initialize_is_a_no_op_for_one_process_and_names_missing_settings(monkeypatch):
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                 distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.initialize()
    assert not distributed.initialize(num_processes=1)
    with pytest.raises(ValueError, match="coordinator_address.*process_id"):
        distributed.initialize(num_processes=2)


def test_global_batch_and_fetch_round_trip_on_one_process():
    mesh = sharding.make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    arrays = distributed.global_batch({"x": x}, {"x": sharding.batch_sharding(mesh, 2)})
    assert arrays["x"].sharding.spec == sharding.logical_to_spec(("act_batch", None))
    np.testing.assert_array_equal(distributed.fetch(arrays)["x"], x)
    assert distributed.host_rows(8) == slice(0, 8)
    assert distributed.gather_prompts({"prompt_tokens": x}, 0) == {"prompt_tokens": x}


# ---------------------------------------------------------------------------------------------
# Two processes vs one
# ---------------------------------------------------------------------------------------------




def _start(base_dir, workdir, cache, devices, process=None):
    env = cpu_env.env(devices, JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    if process is not None:
        env.update(process)
    args = [sys.executable, "-c", _RUNNER, str(REPO / "configs/r1_zero.py"), str(base_dir),
            str(workdir), json.dumps(OVERRIDES)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO)


@pytest.fixture(scope="module")
def runs(base_dir, tmp_path_factory):
    """(one-process workdir, two-process workdir, their summaries), run concurrently."""
    cache = tmp_path_factory.mktemp("dist_cache")
    single, multi = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("multi")
    port = portpicker.pick_unused_port()
    processes = [_start(base_dir, single, cache, 8)]
    processes += [_start(base_dir, multi, cache, 4, {
        distributed.ENV_COORDINATOR: f"127.0.0.1:{port}", distributed.ENV_NUM_PROCESSES: "2",
        distributed.ENV_PROCESS_ID: str(i)}) for i in range(2)]
    summaries = processes_lib.finish_all(processes, "SUMMARY ")
    return single, multi, summaries


def _non_timing(path):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")}
            for r in metrics.read_jsonl(path)]


def test_two_processes_reproduce_one_process(runs):
    single, multi, summaries = runs
    one, two = _non_timing(single / "metrics.jsonl"), _non_timing(multi / "metrics.jsonl")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [0, 1, 2, 3, 3]
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert summaries[1]["step"] == summaries[2]["step"] == STEPS
    assert summaries[1]["train"]["reward/total"] == summaries[2]["train"]["reward/total"]
    # Only process 0 writes logs: one metrics file, the samples of each eval step once.
    assert [r["step"] for r in metrics.read_jsonl(multi / "samples.jsonl")] == [0, 0, 3, 3]


def _load_smoke(base_dir):
    config = config_preset("r1_zero", "smoke")
    config.base_dir = str(base_dir)
    config.update_from_flattened_dict({k: v for k, v in OVERRIDES.items() if "." in k})
    return rl_config.from_config_dict(config)


def _restore(workdir, s, base_dir):
    """Restores checkpoint `s` of a run into this process's 8 devices, mesh as in the run."""
    config = _load_smoke(base_dir)
    model = base.load_config(base_dir)
    step_config = step.StepConfig(model, config.grpo, config.optim, config.sampling.temperature,
                                  config.sampling.max_new_tokens)
    mesh = sharding.make_mesh(OVERRIDES["mesh"])
    abstract = jax.eval_shape(lambda p: step.init_state(p, step_config, 0),
                              transformer.abstract_params(model))
    abstract = checkpoint.abstract_tree(abstract, step.state_shardings(step_config, mesh))
    return checkpoint.Checkpointer(workdir / "checkpoints").restore(s, abstract)


def _adam_direction_bound(b1: float, b2: float, t: int) -> float:
    """max |m_hat_t / sqrt(v_hat_t)| over all gradient sequences (Cauchy-Schwarz):
    (1 - b1) / (1 - b1^t) * sqrt((1 - b2^t) / (1 - b2)) * sqrt(sum_{k<t} (b1^2 / b2)^k)."""
    ratio = sum((b1 * b1 / b2) ** k for k in range(t))
    return (1 - b1) / (1 - b1**t) * np.sqrt((1 - b2**t) / (1 - b2)) * np.sqrt(ratio)


def test_two_process_checkpoint_restores_in_one_process(runs, base_dir):
    """The checkpoint two processes wrote restores here bit for bit (`restore` verifies every
    array against the checksums the two processes computed on the global arrays when saving:
    exact, whatever the reduction order), and holds the same training as the one-process run.

    The last comparison cannot be exact: the runs reduce across devices in different orders
    (gloo between processes vs. in one process), so their float32 gradients differ by rounding.
    Most elements then agree to float32 noise (rtol 1e-5 of the leaf's scale). Adam divides
    by sqrt(v_hat) + eps, so where a gradient is zero up to rounding the update direction
    m_hat / (sqrt(v_hat) + eps) can land anywhere in [-U_t, U_t] in either run: such a
    parameter may differ by up to 2 * U_t * lr_t per update, summed over the run's updates
    (the bound below, about 1.2e-2 here). Those elements are rare (1 in 12,800 embedding
    values once differed by 2.6e-5 relative), so at most 0.1% of a leaf may exceed the noise
    tolerance, and none the Adam bound; a wrong shard or a stale array fails both.
    """
    single, multi, _ = runs
    assert checkpoint.Checkpointer(multi / "checkpoints").all_steps() == [2, 3]
    state_two, meta_two = _restore(multi, STEPS, base_dir)
    state_one, meta_one = _restore(single, STEPS, base_dir)
    config = _load_smoke(base_dir)
    updates = STEPS * config.updates_per_step
    assert meta_two == meta_one == {"step": STEPS, "data": {"step": STEPS},
                                    "nonfinite": {"consecutive": 0, "recent": [0] * updates}}
    assert int(state_two["step"]) == int(state_one["step"]) == updates
    o = config.optim
    lr = state_lib.learning_rate_schedule(o)
    adam_bound = sum(2 * _adam_direction_bound(o.b1, o.b2, t + 1) * float(lr(t))
                     for t in range(updates))
    flat_two = jax.tree_util.tree_leaves_with_path(state_two)
    for (path, a), b in zip(flat_two, jax.tree.leaves(state_one)):
        name = jax.tree_util.keystr(path)
        assert a.sharding == b.sharding, name
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind not in "fc":
            np.testing.assert_array_equal(a, b, err_msg=name)
            continue
        diff = np.abs(a.astype(np.float64) - b)
        noisy = diff > 1e-5 * float(np.max(np.abs(b))) + 1e-12
        assert noisy.sum() <= max(1, a.size // 1000), (name, int(noisy.sum()), a.size)
        if name.startswith(("['params']", "['ref_params']")):
            assert diff.max() <= adam_bound, (name, float(diff.max()), adam_bound)
        else:  # Adam's moments (no division by a small number): rounding noise only
            assert not noisy.any(), (name, float(diff.max()))
