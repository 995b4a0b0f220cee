"""GRPO train-step time on 1, 2, 4 and 8 simulated CPU devices (one subprocess per count).

  python benchmarks/scaling.py
  python benchmarks/scaling.py --devices=1,8 --preset=tiny --rows=32 --mesh=fsdp --dispatch=expert_parallel

Each count runs in its own process with XLA_FLAGS=--xla_force_host_platform_device_count=N,
builds the jitted, sharded GRPO update (`r1jax.rl.step.jit_train_step`) of a model preset on
a mesh with N devices on one axis (--mesh: fsdp, expert or data), and times it on the same
random batch. Simulated devices share this machine's cores, so the figures measure the
partitioned program's overhead (collectives, resharding, smaller per-device matmuls), not
speed-up: on real chips each device brings its own compute.
"""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags

_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts to time.")
_PRESET = flags.DEFINE_string("preset", "tiny", "Model preset (r1jax.models.presets).")
_ROWS = flags.DEFINE_integer("rows", 16, "Completions per update (divisible by the counts).")
_PROMPT = flags.DEFINE_integer("prompt_len", 32, "Prompt width P.")
_NEW = flags.DEFINE_integer("new_tokens", 32, "Completion width T.")
_MESH = flags.DEFINE_enum("mesh", "fsdp", ["fsdp", "expert", "data"], "Axis of the N devices.")
_DISPATCH = flags.DEFINE_string("dispatch", "dropless", "moe_dispatch of the model.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps (after one compile step).")
_WORKER = flags.DEFINE_bool("worker", False, "Internal: time one device count here.")


def random_batch(rows, p, t, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "prompt_tokens": rng.integers(0, vocab, (rows, p)).astype(np.int32),
        "prompt_lengths": rng.integers(p // 2, p + 1, rows).astype(np.int32),
        "completion_tokens": rng.integers(0, vocab, (rows, t)).astype(np.int32),
        "completion_mask": np.arange(t)[None] < rng.integers(t // 2, t + 1, rows)[:, None],
        "old_logps": (-3 * rng.random((rows, t))).astype(np.float32),
        "ref_logps": (-3 * rng.random((rows, t))).astype(np.float32),
        "advantages": rng.standard_normal(rows).astype(np.float32),
    }


def time_here() -> dict[str, float]:
    """Compile and median step seconds on this process's devices."""
    from r1jax import sharding
    from r1jax.models import config as config_lib
    from r1jax.models import presets, transformer
    from r1jax.rl import config as rl_config
    from r1jax.rl import step
    from r1jax.train import state as state_lib

    model = config_lib.ModelConfig.from_dict(presets.get(_PRESET.value)).replace(
        moe_dispatch=_DISPATCH.value)
    grpo = rl_config.GRPOConfig(group_size=4, prompts_per_step=_ROWS.value // 4, beta=0.04)
    config = step.StepConfig(model, grpo, state_lib.OptimConfig(learning_rate=1e-5), 1.0,
                             _NEW.value)
    mesh = sharding.make_mesh({_MESH.value: jax.device_count()})
    state = jax.device_put(step.init_state(transformer.random_params(model), config, 0),
                           step.state_shardings(config, mesh))
    batch = jax.device_put(random_batch(_ROWS.value, _PROMPT.value, _NEW.value,
                                        model.vocab_size), step.batch_shardings(mesh))
    train_step = step.jit_train_step(config, mesh)
    with jax.set_mesh(mesh):
        start = time.perf_counter()
        state, out = train_step(state, batch)
        jax.block_until_ready(out)
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(_REPEATS.value):
            start = time.perf_counter()
            state, out = train_step(state, batch)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - start)
    return {"devices": jax.device_count(), "compile_s": compile_s,
            "step_s": float(np.median(times))}


def run_worker(n: int) -> dict[str, float]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    args = [sys.executable, __file__, "--worker"] + [a for a in sys.argv[1:]
                                                     if not a.startswith("--devices")]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(f"{n} devices failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if _WORKER.value:
        print(json.dumps(time_here()))
        return
    tokens = _ROWS.value * (_PROMPT.value + _NEW.value)
    print(f"GRPO train step, preset {_PRESET.value} ({_DISPATCH.value}), {_ROWS.value} rows x "
          f"{_PROMPT.value + _NEW.value} tokens, mesh axis {_MESH.value}, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'devices':>8} {'compile s':>10} {'step ms':>10} {'tokens/s':>10}")
    for n in map(int, _DEVICES.value):
        r = run_worker(n)
        print(f"{n:>8} {r['compile_s']:>10.1f} {1e3 * r['step_s']:>10.1f} "
              f"{tokens / r['step_s']:>10.0f}", flush=True)


if __name__ == "__main__":
    app.run(main)
