"""GRPO trainer: config validation, dynamic sampling, the sharded step vs one device, the
non-finite guard, and real runs of `train` in subprocesses (SIGKILL + resume, SIGTERM, a
corrupted checkpoint, faults injected into the update through a hook).

The runs use `configs/r1_zero.py:smoke` on a random 2-layer MoE base model with a tokenizer
trained here; they share a persistent compilation cache so only the first one compiles.
"""

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import cpu_env
import jax
import numpy as np
import pytest
from conftest import config_preset, small_model

from r1jax import sharding
from r1jax.evals import rollout
from r1jax.models import transformer
from r1jax.rl import config as rl_config
from r1jax.rl import runs, step
from r1jax.train import base, checkpoint, metrics
from r1jax.train import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
TIMING_PREFIX = "perf/"


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_presets_build_and_bad_fields_are_named():
    for name in ("tiny", "smoke"):
        config = rl_config.from_config_dict(config_preset("r1_zero", name))
        assert config.optim.total_steps == config.total_steps * config.updates_per_step
    c = config_preset("r1_zero", "smoke")
    c.grpo.group_size = 0
    with pytest.raises(ValueError, match=r"grpo\.group_size=0"):
        rl_config.from_config_dict(c)
    c = config_preset("r1_zero", "smoke")
    c.grpo.num_minibatches = 3
    with pytest.raises(ValueError, match=r"grpo\.num_minibatches=3.*must divide"):
        rl_config.from_config_dict(c)
    c = config_preset("r1_zero", "smoke")
    c.sampling.temprature = 1.0
    with pytest.raises(ValueError, match=r"sampling: unknown field.*temprature"):
        rl_config.from_config_dict(c)
    c = config_preset("r1_zero", "smoke")
    c.rewards = {"no_such_reward": 1.0}
    with pytest.raises(ValueError, match="no_such_reward"):
        rl_config.from_config_dict(c)
    with pytest.raises(ValueError, match="unknown r1_zero preset"):
        config_preset("r1_zero", "nope")


@pytest.mark.parametrize("key,value,message", [
    ("grpo.group_size", 1, r"grpo\.group_size=1: must be an int >= 2: advantages are relative"),
    ("grpo.beta", float("nan"), r"grpo\.beta=nan: must be a finite number"),
    ("grpo.clip_eps_high", float("inf"), r"grpo\.clip_eps_high=inf: must be a finite"),
    ("grpo.max_nonfinite_fraction", 2.0, r"grpo\.max_nonfinite_fraction=2\.0"),
    ("optim.learning_rate", float("inf"), r"OptimConfig\.learning_rate=inf: must be a finite"),
    ("optim.weight_decay", float("inf"), r"OptimConfig\.weight_decay=inf: must be a finite"),
    ("sampling.temperature", float("inf"), r"sampling\.temperature=inf: must be a finite"),
])
def test_degenerate_and_non_finite_settings_are_named(key, value, message):
    c = config_preset("r1_zero", "smoke")
    c.update_from_flattened_dict({key: value})
    with pytest.raises(ValueError, match=message):
        rl_config.from_config_dict(c)


# ---------------------------------------------------------------------------------------------
# Dynamic sampling (DAPO)
# ---------------------------------------------------------------------------------------------


def fake_rollout(rewards, width, tag):
    n = len(rewards)
    return {"prompt_tokens": np.full((n, width), tag, np.int32),
            "prompt_lengths": np.full((n,), width, np.int32),
            "rewards": np.asarray(rewards, np.float32), "texts": [f"{tag}-{i}" for i in range(n)],
            "fields": {"answer": [str(tag)] * n}}


def test_fill_batch_keeps_informative_groups_and_caps_draws():
    g = 2
    draws = [fake_rollout([1, 1, 0, 1, 0, 0], 3, 0),  # groups: equal, mixed, equal
             fake_rollout([0, 1, 1, 1, 1, 0], 5, 1)]  # mixed, equal, mixed
    calls = []

    def draw(j):
        calls.append(j)
        return draws[j]

    batch, stats = rollout.fill_batch(draw, 3, g, max_extra_draws=4, pad_id=-1)
    assert calls == [0, 1]
    assert batch["texts"] == ["0-2", "0-3", "1-0", "1-1", "1-4", "1-5"]
    assert batch["prompt_tokens"].shape == (6, 5)
    np.testing.assert_array_equal(batch["prompt_tokens"][0], [0, 0, 0, -1, -1])
    assert stats["dynamic/extra_draws"] == 1 and stats["dynamic/filled_frac"] == 1.0

    calls.clear()
    batch, stats = rollout.fill_batch(draw, 3, g, max_extra_draws=0, pad_id=-1)
    assert calls == [0]  # the cap: no extra draw; dropped groups complete the batch
    assert batch["texts"] == ["0-2", "0-3", "0-0", "0-1", "0-4", "0-5"]
    assert stats["dynamic/filled_frac"] == pytest.approx(1 / 3)


def test_accuracy_metrics_use_the_runs_own_checker_and_need_no_pool_for_it(monkeypatch):
    from r1jax.data import templates
    from r1jax.rewards import pool as pool_lib
    from r1jax.rewards import registry

    texts = [" <think> 3 + 4 = 7 </think> <answer> 7 </answer>",   # right, formatted
             " <think> 3 + 4 = 8 </think> <answer> 8 </answer>",   # wrong, formatted
             " <thinkink> so 7 </thinkink> <anan> 7 </anan>",      # right read leniently only
             " The answer is 12, no, 6",                             # wrong
             " <think> hm </think> <answer> 9 </answer> so 7"]       # lenient reads the last 7
    rollout_ = {"texts": texts, "lengths": np.full([5], 9), "fields": {"answer": ["7"] * 5}}
    want_accuracy, want_lenient = [1, 0, 0, 0, 0], [1, 0, 1, 0, 1]
    numeric = registry.Spec.from_dict({"numeric": 1.0, "format_strict": 0.5})
    assert not rollout.needs_pool(numeric)
    assert rollout.needs_pool(registry.Spec.from_dict({"format_strict": 1.0}))
    assert rollout.needs_pool(registry.Spec.from_dict(
        {"numeric": 1.0}, routes={"arithmetic": ["numeric"]}))
    ctx = rollout.Context(None, None, templates.get("r1_zero"), numeric, None, None)
    with monkeypatch.context() as m:  # no worker process may start (each costs seconds)
        m.setattr(pool_lib.WorkerPool, "__init__", lambda *a, **k: pytest.fail("pool started"))
        scored = rollout.score(ctx, rollout_)
        with rollout.reward_pool(numeric, 2) as none:  # what the trainer and evaluate enter
            assert none is None
    np.testing.assert_array_equal(scored["accuracy"], want_accuracy)
    np.testing.assert_array_equal(scored["lenient_accuracy"], want_lenient)
    generic = registry.Spec.from_dict({"format_strict": 1.0})  # falls back to pooled "accuracy"
    with rollout.reward_pool(generic, 1) as pool:
        assert isinstance(pool, pool_lib.WorkerPool)
        scored = rollout.score(rollout.Context(None, None, templates.get("r1_zero"), generic,
                                               pool, None), rollout_)
    np.testing.assert_array_equal(scored["accuracy"], want_accuracy)
    np.testing.assert_array_equal(scored["lenient_accuracy"], want_lenient)


# ---------------------------------------------------------------------------------------------
# The sharded step
# ---------------------------------------------------------------------------------------------


def step_config(beta=0.04):
    grpo_cfg = rl_config.GRPOConfig(group_size=4, prompts_per_step=4, num_micro_batches=2,
                                    beta=beta, clip_eps_low=0.2, clip_eps_high=0.28)
    # Adam's first step is lr * g / (|g| + eps): with eps = 1e-8 a gradient entry near zero
    # maps float32 reduction-order noise to O(lr) changes. A large eps makes the update a
    # smooth function of the gradient, so the comparison below tests sharding, not Adam.
    optim = state_lib.OptimConfig(learning_rate=1e-2, eps=1e-3)
    return step.StepConfig(small_model(300), grpo_cfg, optim, temperature=0.7, max_new_tokens=8)


def random_batch(seed=0, n=16, p=8, t=8, vocab=300):
    rng = np.random.default_rng(seed)
    return {
        "prompt_tokens": rng.integers(0, vocab, (n, p)).astype(np.int32),
        "prompt_lengths": rng.integers(1, p + 1, n).astype(np.int32),
        "completion_tokens": rng.integers(0, vocab, (n, t)).astype(np.int32),
        "completion_mask": np.arange(t)[None] < rng.integers(1, t + 1, n)[:, None],
        "old_logps": (-5 * rng.random((n, t))).astype(np.float32),
        "ref_logps": (-5 * rng.random((n, t))).astype(np.float32),
        "advantages": rng.standard_normal(n).astype(np.float32),
    }


def run_step(config, params, batch, mesh):
    """(grads, new state, metrics) of one train step on `mesh`."""
    state = jax.device_put(step.init_state(params, config, 0), step.state_shardings(config, mesh))
    train_step = step.jit_train_step(config, mesh)
    loss_fn = step.make_loss_fn(config)
    grads_fn = jax.jit(lambda p, b: state_lib.accumulate_gradients(loss_fn, p, b, 2)[2],
                       out_shardings=step.param_shardings(config.model, mesh))
    with jax.set_mesh(mesh):
        batch = jax.device_put(batch, step.batch_shardings(mesh))
        grads = grads_fn(state["params"], batch)
        new_state, out = train_step(state, batch)
    return jax.device_get(grads), jax.device_get(new_state), jax.device_get(out), train_step


@pytest.fixture(scope="module")
def one_device_run():
    config = step_config()
    params = jax.device_get(transformer.random_params(config.model, 1))
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    return config, params, mesh, run_step(config, params, random_batch(), mesh)


def assert_trees_close(a, b, rtol, atol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def assert_trees_close_at_scale(a, b, rtol):
    """|x - y| <= rtol * max|y| per leaf: float32 sums in another order differ by a few ulps
    of their largest terms, which an element that cancels to ~0 cannot absorb in its own rtol."""
    def check(x, y):
        np.testing.assert_allclose(x, y, rtol=0, atol=rtol * float(np.max(np.abs(y))) + 1e-12)

    jax.tree.map(check, a, b)


def test_sharded_step_matches_one_device(one_device_run):
    config, params, _, (grads1, state1, out1, _) = one_device_run
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "expert": 2})
    grads8, state8, out8, _ = run_step(config, params, random_batch(), mesh)
    assert out1["loss"] != 0 and out1["grad_norm"] > 0 and out1["kl"] > 0
    for key in out1:
        np.testing.assert_allclose(out8[key], out1[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert_trees_close_at_scale(grads8, grads1, rtol=1e-5)
    assert_trees_close_at_scale(state8["params"], state1["params"], rtol=1e-5)
    assert_trees_close_at_scale(state8["opt_state"], state1["opt_state"], rtol=1e-5)
    # The update moved the policy, not the reference; the MoE bias moved by +-gamma.
    moved = jax.tree.map(lambda x, y: float(np.abs(x - y).max()), state1["params"], params)
    assert min(jax.tree.leaves(moved)) > 0
    assert_trees_close(state1["ref_params"], params, rtol=0, atol=0)
    bias = state1["params"]["layers_1"]["mlp"]["gate"]["e_score_correction_bias"]
    old_bias = params["layers_1"]["mlp"]["gate"]["e_score_correction_bias"]
    np.testing.assert_allclose(np.abs(bias - old_bias), config.gamma, rtol=1e-4)
    assert int(state1["step"]) == 1 and int(state1["skipped"]) == 0


def test_nonfinite_step_is_skipped_inside_the_jitted_step(one_device_run):
    config, _, mesh, (_, state1, _, train_step) = one_device_run
    batch = random_batch()
    batch["advantages"][3] = np.nan
    state = jax.device_put(state1, step.state_shardings(config, mesh))
    with jax.set_mesh(mesh):
        new_state, out = train_step(state, jax.device_put(batch, step.batch_shardings(mesh)))
    new_state = jax.device_get(new_state)
    assert int(out["nonfinite"]) == 1 and not np.isfinite(out["loss"])
    assert int(new_state["skipped"]) == 1
    for key in ("step", "params", "opt_state", "ref_params"):
        assert_trees_close(new_state[key], state1[key], rtol=0, atol=0)


def test_reference_logps_score_the_completion_at_its_positions():
    """The training forward (prompt padding in the middle) equals a forward over each row's
    prompt and completion packed contiguously from position 0, padding only at the end."""
    config = step_config()
    params = transformer.random_params(config.model, 2)
    batch = random_batch(seed=3, n=4)
    got = np.asarray(jax.jit(step.make_score_fn(config))(params, batch))
    n_prompt = batch["prompt_lengths"]
    n_done = batch["completion_mask"].sum(axis=1)
    packed = np.zeros_like(np.concatenate([batch["prompt_tokens"],
                                           batch["completion_tokens"]], axis=1))
    for row in range(4):
        seq = np.concatenate([batch["prompt_tokens"][row, :n_prompt[row]],
                              batch["completion_tokens"][row, :n_done[row]]])
        packed[row, :len(seq)] = seq
    valid = np.arange(packed.shape[1])[None] < (n_prompt + n_done)[:, None]
    model = transformer.Transformer(config.model)
    logits = jax.jit(lambda p, t, m: model.apply({"params": p}, t, mask_bt=m))(
        params, packed, valid)
    logp = np.asarray(jax.nn.log_softmax(logits / 0.7))
    for row in range(4):
        start, n = n_prompt[row], n_done[row]
        want = logp[row, np.arange(start - 1, start + n - 1), packed[row, start:start + n]]
        np.testing.assert_allclose(got[row, :n], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[row, n:], 0.0)


# ---------------------------------------------------------------------------------------------
# Real runs in subprocesses
# ---------------------------------------------------------------------------------------------

_RUNNER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("c", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config("smoke")
config.base_dir = sys.argv[2]
config.update_from_flattened_dict(json.loads(sys.argv[4]))
from r1jax.rl import trainer
if len(sys.argv) > 5:  # a fault-injection hook (test code, run before training starts)
    exec(sys.argv[5])
summary = trainer.train(config, sys.argv[3])
print("SUMMARY " + json.dumps(summary, default=float), flush=True)
"""


@pytest.fixture(scope="module")
def launch(base_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    env = cpu_env.env(1, JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

    def start(workdir, overrides=None, hook=None):
        args = [sys.executable, "-c", _RUNNER, str(REPO / "configs/r1_zero.py"), str(base_dir),
                str(workdir), json.dumps(overrides or {})] + ([hook] if hook else [])
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    return start


def finish(process, timeout=600):
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return json.loads(out.split("SUMMARY ", 1)[1])


def wait_for(predicate, process, timeout=600):
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def non_timing(path):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIX)}
            for r in metrics.read_jsonl(path)]


@pytest.fixture(scope="module")
def uninterrupted(launch, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, finish(launch(workdir))


def test_train_writes_outputs_and_summary(uninterrupted):
    workdir, summary = uninterrupted
    assert summary["step"] == 4 and not summary["preempted"]
    assert summary["nonfinite_total"] == 0
    assert {"eval/pass@1", "eval/greedy_accuracy", "eval/format_rate"} <= set(summary["eval"])
    records = metrics.read_jsonl(workdir / "metrics.jsonl")
    train_steps = [r["step"] for r in records if "loss" in r]
    eval_steps = [r["step"] for r in records if "eval/pass@1" in r]
    assert train_steps == [1, 2, 3, 4] and eval_steps == [0, 2, 4]
    for key in ("reward/total", "reward/numeric", "reward/format_strict", "accuracy",
                "format_rate", "response_length/mean", "response_length/max",
                "response_length/clipped_frac", "kl", "clip_frac_low", "clip_frac_high",
                "entropy", "grad_norm", "learning_rate", "perf/sample_tokens_per_s",
                "perf/train_tokens_per_s", "perf/mfu"):
        assert key in records[1], key
    assert json.loads((workdir / "config.json").read_text())["grpo"]["group_size"] == 4
    assert [r["step"] for r in metrics.read_jsonl(workdir / "samples.jsonl")] == [0, 0, 2, 2, 4, 4]
    assert sorted(p.name for p in (workdir / "plots").iterdir()) == [
        "accuracy.png", "response_length.png", "reward.png"]
    assert list((workdir / "tensorboard").iterdir())
    assert checkpoint.Checkpointer(workdir / "checkpoints").all_steps() == [2, 4]


def test_sigkill_and_resume_reproduces_the_uninterrupted_run(launch, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    process = launch(tmp_path)
    # orbax renames the finished tmp directory to "2", so its existence means a complete one.
    wait_for(lambda: (tmp_path / "checkpoints" / "2").is_dir(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    summary = finish(launch(tmp_path))
    assert summary["step"] == 4
    assert non_timing(tmp_path / "metrics.jsonl") == non_timing(reference / "metrics.jsonl")
    assert metrics.read_jsonl(tmp_path / "samples.jsonl") == \
        metrics.read_jsonl(reference / "samples.jsonl")


# PPO on the smoke preset (issue 25): 2 steps, a checkpoint after each, no eval but at steps 0
# and 2, so that a resume from the step-1 checkpoint has one step whose critic update is compared.
_PPO = {"grpo.algorithm": "ppo", "grpo.advantage": "gae", "grpo.kl_in": "reward",
        "total_steps": 2, "checkpoint_every": 1, "eval.every": 0}


def critic_checksums(workdir, s):
    """{leaf path: checksum} of the critic's arrays (params and AdamW state) saved at step s."""
    saved = json.loads((workdir / "checkpoints" / str(s) / "checksums" / "metadata").read_text())
    return {k: v["checksum"] for k, v in saved["leaves"].items() if "'critic'" in k}


def test_a_killed_ppo_run_resumes_with_its_critic_restored_exactly(launch, tmp_path):
    # Two launches instead of three: the killed run is the finished one with its step-2
    # checkpoint removed, what a SIGKILL after the step-1 checkpoint leaves (its step-2 log
    # lines included). test_sigkill_and_resume_... covers a real SIGKILL for any algorithm.
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert finish(launch(reference, _PPO))["step"] == 2
    shutil.copytree(reference, resumed)
    shutil.rmtree(resumed / "checkpoints" / "2")
    code, out = run_to_end(launch(resumed, _PPO))
    assert code == 0, out[-3000:]
    # It resumed at step 2 (a fresh start would evaluate step 0 and reproduce the same run).
    assert "step 2: sampling" in out and "step 0: evaluating" not in out, out[-3000:]
    want, got = non_timing(reference / "metrics.jsonl"), non_timing(resumed / "metrics.jsonl")
    assert [r["step"] for r in got if "loss" in r] == [1, 2]
    # The resumed step's critic update starts from the restored critic: bit-equal figures.
    assert {"value_loss", "value_grad_norm"} <= set(got[-2]) and got == want
    critic = critic_checksums(reference, 2)
    assert len(critic) > 3 and critic_checksums(resumed, 2) == critic


def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(launch, uninterrupted, tmp_path):
    process = launch(tmp_path, {"total_steps": 40, "checkpoint_every": 100, "eval.every": 0})
    wait_for(lambda: (tmp_path / "metrics.jsonl").exists()
             and any("loss" in r for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")),
             process)
    process.send_signal(signal.SIGTERM)
    summary = finish(process, timeout=120)
    assert summary["preempted"] and 1 <= summary["step"] < 40
    last_logged = max(r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl"))
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    assert ckpt.all_steps() == [summary["step"]] == [last_logged]
    meta = json.loads((tmp_path / "checkpoints" / str(summary["step"]) / "meta" /
                       "metadata").read_text())
    assert meta["step"] == summary["step"]
    assert meta["data"] == {"step": summary["step"]}  # one prompt batch per step


def run_to_end(process, timeout=600):
    """(exit status, output) of a run expected to stop by itself."""
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def restore_all_checkpoints(workdir):
    """{step: state} of every checkpoint of a run, each verified (checksums and finiteness)."""
    config = runs.run_config(workdir)
    model = base.load_config(config.base_dir)
    step_config = step.StepConfig(model, config.grpo, config.optim, config.sampling.temperature,
                                  config.sampling.max_new_tokens)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    abstract = jax.eval_shape(lambda p: step.init_state(p, step_config, 0),
                              transformer.abstract_params(model))
    abstract = checkpoint.abstract_tree(abstract, step.state_shardings(step_config, mesh))
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    return {s: ckpt.restore(s, abstract)[0] for s in ckpt.all_steps()}


def test_sigkill_before_the_first_checkpoint_restarts_the_logs_cleanly(launch, uninterrupted,
                                                                       tmp_path):
    reference, _ = uninterrupted
    process = launch(tmp_path)
    wait_for(lambda: (tmp_path / "samples.jsonl").exists() and any(
        "loss" in r for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "checkpoints" / "2").exists()  # killed during step 2
    assert finish(launch(tmp_path))["step"] == 4
    assert non_timing(tmp_path / "metrics.jsonl") == non_timing(reference / "metrics.jsonl")
    assert metrics.read_jsonl(tmp_path / "samples.jsonl") == \
        metrics.read_jsonl(reference / "samples.jsonl")


def test_a_corrupted_latest_checkpoint_falls_back_and_reproduces_the_run(launch, uninterrupted,
                                                                         tmp_path):
    reference, _ = uninterrupted
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    data_files = [p for p in (workdir / "checkpoints" / "4" / "state").rglob("*")
                  if p.is_file() and p.parent.name == "d" and "ocdbt" in p.parent.parent.name]
    biggest = max(data_files, key=lambda p: p.stat().st_size)  # mostly Adam moments
    data = bytearray(biggest.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    biggest.write_bytes(bytes(data))
    code, out = run_to_end(launch(workdir))
    assert code == 0, out[-3000:]
    assert "skipped checkpoint step 4" in out and "resuming from step 2" in out, out[-3000:]
    summary = json.loads(out.split("SUMMARY ", 1)[1])
    assert summary["step"] == 4 and summary["nonfinite_total"] == 0
    assert non_timing(workdir / "metrics.jsonl") == non_timing(reference / "metrics.jsonl")
    assert metrics.read_jsonl(workdir / "samples.jsonl") == \
        metrics.read_jsonl(reference / "samples.jsonl")
    # The bad step is kept aside (never deleted) and step 4 was written again, verified.
    assert (workdir / "checkpoints" / "4.rejected-0").is_dir()
    assert sorted(restore_all_checkpoints(workdir)) == [2, 4]


# Poisons the new parameters (finite loss and gradients) from the 5th update on: the case that
# a loss/grad-norm check misses (as an infinite learning rate did).
_POISON_PARAMS = """
import jax, jax.numpy as jnp
from r1jax.train import state as state_lib
apply_gradients = state_lib.apply_gradients
def poisoned(state, grads, optimizer):
    new, info = apply_gradients(state, grads, optimizer)
    bad = state["step"] >= 4
    new["params"] = jax.tree.map(lambda p: jnp.where(bad, p * jnp.inf, p), new["params"])
    return new, info
state_lib.apply_gradients = poisoned
"""

# Poisons every other update attempt (attempts = applied + skipped): never two in a row.
_POISON_HALF = _POISON_PARAMS.replace('state["step"] >= 4',
                                      '(state["step"] + state["skipped"]) % 2 == 1')


def test_non_finite_parameters_are_rejected_and_never_checkpointed(launch, tmp_path):
    overrides = {"grpo.max_consecutive_nonfinite": 2, "eval.every": 0}  # no eval: stops early
    code, out = run_to_end(launch(tmp_path, overrides, _POISON_PARAMS))
    assert code != 0 and "NonFiniteError: GRPO stopped at step 3: 2 consecutive updates" in out, \
        out[-3000:]
    assert f"the last checkpoint, step 2 in {tmp_path / 'checkpoints'}, is finite" in out
    records = [r for r in metrics.read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [(r["step"], r["nonfinite"]) for r in records] == [(1, 0), (2, 0), (3, 2)]
    assert np.isfinite(records[-1]["loss"])  # the loss was fine; the parameters were not
    states = restore_all_checkpoints(tmp_path)
    assert sorted(states) == [2] and int(states[2]["step"]) == 4


def test_a_persistent_partial_failure_trips_the_rate_rule(launch, tmp_path):
    overrides = {"grpo.nonfinite_window": 4, "grpo.max_nonfinite_fraction": 0.25,
                 "eval.every": 0}  # no eval: it stops before its last step
    code, out = run_to_end(launch(tmp_path, overrides, _POISON_HALF))
    assert code != 0 and "GRPO stopped at step 2: 2 of the last 4 updates were non-finite " \
        "(max_nonfinite_fraction=0.25)" in out, out[-3000:]
    records = [r for r in metrics.read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["nonfinite"] for r in records] == [1, 1]
    assert restore_all_checkpoints(tmp_path) == {}  # stopped before the step-2 checkpoint
