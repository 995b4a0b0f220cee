"""The R1 paper's cost argument for GRPO, measured: per-device state bytes and update time of a
GRPO step vs a PPO step with a critic, same model, batch and lengths.

  python benchmarks/grpo_vs_ppo.py                  # tiny preset, 16 rows x (32 + 64) tokens
  python benchmarks/grpo_vs_ppo.py --small          # a 2-layer d=64 model, quick
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/grpo_vs_ppo.py

GRPO step (after sampling and rewards): the reference scorer, group advantages (host), the
policy update (`step.jit_train_step`). PPO step: the same scorer and policy update (with [N, T]
GAE advantages), plus the critic's value forward (`critic.jit_values`), GAE
(`ppo.gae_batch`) and the critic update (`critic.jit_step`, its own AdamW state). Sampling is
left out: it is the same for both.

Memory is read from the compiled programs (`memory_analysis`, per device): the resident state
is the policy update's arguments (policy, reference, Adam moments, batch) and, for PPO, also
the critic update's arguments (value model, its moments, batch); the peak adds the largest
temporary buffer of the step's programs. Times are medians of --repeats calls.
"""

import time

import jax
import numpy as np
from absl import app, flags

from r1jax import sharding
from r1jax.models import config as model_config_lib
from r1jax.models import presets, transformer
from r1jax.rl import config as rl_config
from r1jax.rl import critic, grpo, ppo, step
from r1jax.train import state as state_lib


def small_model() -> model_config_lib.ModelConfig:
    """--small: a 2-layer d=64 dense GQA model."""
    return model_config_lib.ModelConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
        attention_type="gqa", num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        n_routed_experts=0, n_shared_experts=0, max_position_embeddings=256,
        original_max_position_embeddings=256)


def random_batch(rows, p, t, vocab, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "prompt_tokens": rng.integers(0, vocab, (rows, p)).astype(np.int32),
        "prompt_lengths": rng.integers(p // 2, p + 1, rows).astype(np.int32),
        "completion_tokens": rng.integers(0, vocab, (rows, t)).astype(np.int32),
        "completion_mask": np.arange(t)[None] < rng.integers(t // 2, t + 1, rows)[:, None],
        "old_logps": (-3 * rng.random((rows, t))).astype(np.float32),
        "rewards": rng.integers(0, 2, rows).astype(np.float32),
    }


SEQ_KEYS = ("prompt_tokens", "prompt_lengths", "completion_tokens", "completion_mask")


def median_s(fn, *args, repeats: int) -> tuple[float, object]:
    """Median wall seconds of fn(*args) (one untimed call first: compilation)."""
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def update_s(update, state, batch, repeats: int) -> float:
    """Median wall seconds of a donating update (the state is threaded through the calls)."""
    state, out = jax.block_until_ready(update(state, batch))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, out = jax.block_until_ready(update(state, batch))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def memory(jitted, *args) -> dict[str, int]:
    """Per-device argument / temporary bytes of the compiled program."""
    analysis = jitted.lower(*args).compile().memory_analysis()
    return {"args": analysis.argument_size_in_bytes, "temp": analysis.temp_size_in_bytes}


def measure(model: model_config_lib.ModelConfig, rows: int, p: int, t: int,
            repeats: int) -> dict[str, float]:
    """Seconds and per-device bytes of each program of a GRPO and a PPO update (module
    docstring) on a plain FSDP mesh over every device; `report` prints them as ratios."""
    g = rl_config.GRPOConfig(group_size=4, prompts_per_step=rows // 4, beta=0.04,
                             update_width_multiple=0)
    optim = state_lib.OptimConfig(learning_rate=1e-5)
    config = step.StepConfig(model, g, optim, 1.0, t)
    ppo_config = step.StepConfig(model, rl_config.GRPOConfig(
        group_size=4, prompts_per_step=rows // 4, beta=0.04, kl_in="reward",
        update_width_multiple=0), optim, 1.0, t)
    critic_config = critic.CriticConfig(model, optim)
    mesh = sharding.make_mesh({"fsdp": -1})

    params = jax.device_put(transformer.random_params(model, 0),
                            step.param_shardings(model, mesh))
    host = random_batch(rows, p, t, model.vocab_size)
    with jax.set_mesh(mesh):
        seq = jax.device_put({k: host[k] for k in SEQ_KEYS},
                             step.batch_shardings(mesh, SEQ_KEYS))
        batch = dict(seq)
        batch["old_logps"] = jax.device_put(host["old_logps"], sharding.batch_sharding(mesh, 2))
        rewards = jax.device_put(host["rewards"], sharding.batch_sharding(mesh, 1))

        score = step.jit_score(config, mesh)
        score_s, ref_logps = median_s(score, params, seq, repeats=repeats)
        batch["ref_logps"] = ref_logps

        # GRPO: group advantages [N], the policy update.
        adv_n = grpo.group_advantages(rewards, g.group_size)
        grpo_batch = dict(batch, advantages=adv_n)
        grpo_batch = jax.device_put(grpo_batch, step.batch_shardings(mesh, tuple(grpo_batch)))
        grpo_state = step.jit_init_state(config, mesh, 0)(params)
        grpo_update = step.jit_train_step(config, mesh)
        grpo_mem = memory(grpo_update, grpo_state, grpo_batch)
        grpo_s = update_s(grpo_update, grpo_state, grpo_batch, repeats)

        # PPO: values, GAE, the policy update with [N, T] advantages, the critic update.
        ppo_state = step.jit_init_state(ppo_config, mesh, 0)(params)
        critic_state = jax.jit(lambda prm: critic.init_state(prm, critic_config),
                               out_shardings=critic.state_shardings(critic_config, mesh))(params)
        values_fn = critic.jit_values(critic_config, mesh)
        values_s, values_bt = median_s(values_fn, critic_state["params"], seq, repeats=repeats)
        gae_fn = jax.jit(lambda r, m, v, o, ref: ppo.gae_batch(
            r, m, v, o, ref, beta=0.04, kl_estimator="k1", gamma=1.0, lam=0.95))
        gae_s, (adv_nt, returns) = median_s(gae_fn, rewards, batch["completion_mask"],
                                            values_bt, batch["old_logps"], ref_logps,
                                            repeats=repeats)
        ppo_batch = dict(batch, advantages=adv_nt)
        ppo_batch = jax.device_put(ppo_batch, step.batch_shardings(mesh, tuple(ppo_batch)))
        ppo_update = step.jit_train_step(ppo_config, mesh)
        policy_mem = memory(ppo_update, ppo_state, ppo_batch)
        policy_s = update_s(ppo_update, ppo_state, ppo_batch, repeats)
        critic_batch = jax.device_put(
            dict(seq, old_values=values_bt, returns=returns),
            {k: sharding.batch_sharding(mesh, 1 if k == "prompt_lengths" else 2)
             for k in critic.BATCH_KEYS})
        critic_update = critic.jit_step(critic_config, mesh)
        critic_mem = memory(critic_update, critic_state, critic_batch)
        values_mem = memory(values_fn, critic_state["params"], seq)
        critic_s = update_s(critic_update, critic_state, critic_batch, repeats)

    return {"score_s": score_s, "grpo_s": grpo_s, "values_s": values_s, "gae_s": gae_s,
            "policy_s": policy_s, "critic_s": critic_s,
            "grpo_args": grpo_mem["args"], "grpo_temp": grpo_mem["temp"],
            "policy_args": policy_mem["args"], "policy_temp": policy_mem["temp"],
            "critic_args": critic_mem["args"], "critic_temp": critic_mem["temp"],
            "values_temp": values_mem["temp"]}


def report(r: dict[str, float]) -> None:
    """Prints `measure`'s figures: state, peak and time, GRPO vs PPO, as ratios."""
    grpo_total_s = r["score_s"] + r["grpo_s"]
    ppo_total_s = r["score_s"] + r["values_s"] + r["gae_s"] + r["policy_s"] + r["critic_s"]
    grpo_state_b = r["grpo_args"]
    ppo_state_b = r["policy_args"] + r["critic_args"]
    grpo_peak = grpo_state_b + r["grpo_temp"]
    ppo_peak = ppo_state_b + max(r["policy_temp"], r["critic_temp"], r["values_temp"])
    mib = 2.0 ** 20
    ms = {k: r[k] * 1e3 for k in ("score_s", "grpo_s", "values_s", "gae_s", "policy_s",
                                  "critic_s")}
    print(f"per-device state (compiled arguments): GRPO {grpo_state_b / mib:.1f} MiB, "
          f"PPO {ppo_state_b / mib:.1f} MiB ({r['policy_args'] / mib:.1f} policy + "
          f"{r['critic_args'] / mib:.1f} critic): {ppo_state_b / grpo_state_b:.2f}x")
    print(f"per-device peak (state + largest temporaries): GRPO {grpo_peak / mib:.1f} MiB, "
          f"PPO {ppo_peak / mib:.1f} MiB: {ppo_peak / grpo_peak:.2f}x")
    print(f"update time (medians): GRPO {grpo_total_s * 1e3:.1f} ms (score {ms['score_s']:.1f} "
          f"+ policy {ms['grpo_s']:.1f}); PPO {ppo_total_s * 1e3:.1f} ms (score "
          f"{ms['score_s']:.1f} + values {ms['values_s']:.1f} + GAE {ms['gae_s']:.1f} + policy "
          f"{ms['policy_s']:.1f} + critic {ms['critic_s']:.1f}): "
          f"{ppo_total_s / grpo_total_s:.2f}x")


def main(argv):
    del argv
    f = flags.FLAGS
    model = small_model() if f.small else model_config_lib.ModelConfig(
        **presets.get(f.preset).to_dict())
    rows, p, t = (8, 8, 16) if f.small else (f.rows, f.prompt_len, f.new_tokens)
    print(f"{len(jax.devices())} {jax.devices()[0].platform} device(s); "
          f"{'small' if f.small else f.preset} model; {rows} rows x ({p} + {t}) tokens")
    report(measure(model, rows, p, t, f.repeats))


if __name__ == "__main__":
    flags.DEFINE_string("preset", "tiny", "Model preset.")
    flags.DEFINE_bool("small", False, "A 2-layer d=64 dense model and a small batch.")
    flags.DEFINE_integer("rows", 16, "Completions per update (prompts x G).")
    flags.DEFINE_integer("prompt_len", 32, "Prompt width P.")
    flags.DEFINE_integer("new_tokens", 64, "Completion width T.")
    flags.DEFINE_integer("repeats", 5, "Timed calls per program.")
    app.run(main)
