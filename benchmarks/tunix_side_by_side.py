"""r1jax beside Tunix in one process: the sampler and a whole GRPO iteration, as ratios.

  python benchmarks/tunix_side_by_side.py                  # skips with a message without Tunix
  python -m venv /work/tunix_venv && /work/tunix_venv/bin/pip install google-tunix==0.1.7
  PYTHONPATH=. /work/tunix_venv/bin/python benchmarks/tunix_side_by_side.py --rounds=5

The model is one tiny dense Qwen2 shape in both frameworks (4 layers, d=128, 4 query / 2 KV
heads of 32, SwiGLU 384, QKV biases, tied 1,024-token embedding: 919,680 parameters, float32),
Tunix's with r1jax's random weights copied in, so the two are the same function: greedy
tokens are compared and their agreement printed. Workloads, each with the same shapes:

  sampler   B prompts of `--prompt_len` tokens, `--new_tokens` new tokens, greedy (tau = 0)
            and temperature 1 (no truncation), log-probs returned, no EOS (every row runs to
            the end; Tunix's EOS is an id outside the vocabulary). KV caches of equal size:
            prompt + new tokens slots (Tunix's `CacheConfig.cache_size`; r1jax's cache holds
            P + N). Timed: each framework's public entry point, prompts in, host results out
            (`r1jax.sampling.generate` -> device_get; Tunix `Sampler.__call__`, which returns
            decoded strings too).
  iteration one GRPO iteration on `--iter_prompts` prompts x G=`--group` at temperature 1,
            `--prompt_len` + `--new_tokens` tokens: sample, score (one rule reward on the
            completion text: the fraction of even token ids), group advantages, reference
            log-probs (beta 0.04, k3 KL), one AdamW update (lr 1e-5, clip 0.2, sequence-mean
            aggregation, mu = 1). r1jax: the trainer's pieces (`sampling.generate`,
            `grpo.group_advantages`, `step.jit_score`, `step.jit_train_step`); Tunix: its
            `GRPOLearner.train` on a one-batch dataset (one global step per call).

Every workload is warmed up (compiled) first; then `--rounds` rounds in which the two
frameworks run alternately (`--calls` calls each per round), so that a change in machine load
hits both. Printed: median seconds per call of each, and the Tunix / r1jax ratio (> 1: r1jax
faster) as the median of the rounds' ratios with their min and max, and `uptime`'s load; the
same ratio of process CPU time too (all threads; less disturbed by other processes' load
than wall-clock on a shared machine, but it is not the speed a user sees).
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import numpy as np
import optax
from absl import app, flags, logging

from r1jax import sampling, sharding
from r1jax.models import config as config_lib
from r1jax.models import transformer
from r1jax.rl import config as rl_config
from r1jax.rl import grpo, step
from r1jax.train import state as state_lib

_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved timing rounds (>= 3 for the README).")
_CALLS = flags.DEFINE_integer("calls", 3, "Calls of each framework per round.")
_BATCHES = flags.DEFINE_list("batches", ["8", "64"], "Sampler batch sizes.")
_PROMPT = flags.DEFINE_integer("prompt_len", 32, "Prompt tokens P.")
_NEW = flags.DEFINE_integer("new_tokens", 32, "New tokens N.")
_ITER_PROMPTS = flags.DEFINE_integer("iter_prompts", 4, "Prompts per GRPO iteration.")
_GROUP = flags.DEFINE_integer("group", 4, "Completions per prompt G.")
_SKIP_ITER = flags.DEFINE_bool("skip_iteration", False, "Time the sampler only.")

VOCAB, HIDDEN, LAYERS, FFN, HEADS, KV_HEADS, HEAD_DIM = 1024, 128, 4, 384, 4, 2, 32
BETA, CLIP, LR = 0.04, 0.2, 1e-5


def import_tunix():
    """Tunix's modules as a dict, or None when Tunix is not importable."""
    try:
        from flax import nnx
        from tunix.generate import sampler as t_sampler
        from tunix.models.qwen2 import model as t_qwen2
        from tunix.rl import rl_cluster as t_cluster
        from tunix.rl.grpo import grpo_learner as t_grpo
        from tunix.rl.rollout import base_rollout as t_rollout
    except ImportError as e:
        print(f"Tunix is not importable ({e}); skipping. Install google-tunix (e.g. into its own "
              "venv) and run this script with that interpreter and r1jax on PYTHONPATH.")
        return None
    return {"nnx": nnx, "sampler": t_sampler, "qwen2": t_qwen2, "cluster": t_cluster,
            "grpo": t_grpo, "rollout": t_rollout}


class IdsTokenizer:
    """Text is token ids separated by spaces: Tunix's API takes strings, r1jax's take ids.
    pad 0 (no prompt uses it); bos 0 (falsy: Tunix adds none); EOS = VOCAB, never sampled."""

    def encode(self, text, **_):
        return [int(t) for t in str(text).split()]

    def decode(self, ids, **_):
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self):
        return 0

    def eos_id(self):
        return VOCAB

    def pad_id(self):
        return 0


def even_fraction(completions: list[str]) -> np.ndarray:
    """The rule reward of both iterations: the fraction of even ids in each completion."""
    return np.array([np.mean([int(t) % 2 == 0 for t in c.split()] or [0.0])
                     for c in completions], np.float32)


# ---------------------------------------------------------------------------------------------
# The model in both frameworks
# ---------------------------------------------------------------------------------------------


def r1jax_model() -> tuple[config_lib.ModelConfig, dict]:
    config = config_lib.ModelConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, intermediate_size=FFN,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
        attention_bias=True, tie_word_embeddings=True, attention_type="gqa", n_routed_experts=0,
        n_shared_experts=0, rope_interleave=False, q_lora_rank=None, rope_theta=10000.0,
        rms_norm_eps=1e-6, max_position_embeddings=512, original_max_position_embeddings=512)
    return config, jax.device_get(transformer.random_params(config, 0))


def tunix_model(t, params):
    """Tunix's Qwen2 of the same shape holding r1jax's `params` (so both compute the same)."""
    q = t["qwen2"]
    cfg = q.ModelConfig(num_layers=LAYERS, vocab_size=VOCAB, embed_dim=HIDDEN, hidden_dim=FFN,
                        num_heads=HEADS, head_dim=HEAD_DIM, num_kv_heads=KV_HEADS,
                        rope_theta=10000, norm_eps=1e-6, use_tied_embedding=True)
    model = q.Qwen2(cfg, rngs=t["nnx"].Rngs(0))

    def put(var, value, shape=None):
        var.value = jax.numpy.asarray(value if shape is None else value.reshape(shape))

    put(model.embedder.input_embedding, params["embed_tokens"]["embedding"])
    put(model.final_norm.w, params["norm"]["weight"])
    for i, layer in enumerate(model.layers):
        p = params[f"layers_{i}"]
        a = p["self_attn"]
        put(layer.attn.q_proj.w, a["q_proj"]["kernel"], (HIDDEN, HEADS, HEAD_DIM))
        put(layer.attn.k_proj.w, a["k_proj"]["kernel"], (HIDDEN, KV_HEADS, HEAD_DIM))
        put(layer.attn.v_proj.w, a["v_proj"]["kernel"], (HIDDEN, KV_HEADS, HEAD_DIM))
        put(layer.attn.o_proj.w, a["o_proj"]["kernel"], (HEADS, HEAD_DIM, HIDDEN))
        for name in ("q", "k", "v"):
            put(getattr(layer.attn, f"{name}_bias"), a[f"{name}_proj"]["bias"])
        for name in ("gate_proj", "up_proj", "down_proj"):
            put(getattr(layer.mlp, name).kernel, p["mlp"][name]["kernel"])
        put(layer.input_layernorm.w, p["input_layernorm"]["weight"])
        put(layer.post_attention_layernorm.w, p["post_attention_layernorm"]["weight"])
    return model


def prompts(batch: int, seed: int = 0) -> np.ndarray:
    """[B, P] prompt ids in [1, VOCAB) (0 is Tunix's pad)."""
    return np.random.default_rng(seed).integers(1, VOCAB, (batch, _PROMPT.value)).astype(np.int32)


def as_text(ids_bp: np.ndarray) -> list[str]:
    return [IdsTokenizer().decode(row) for row in ids_bp]


# ---------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------


def r1jax_sampler(config, params, ids_bp, temperature: float):
    """() -> [B, N] host tokens via `r1jax.sampling.generate` (log-probs computed too)."""
    params = jax.device_put(params)
    lengths = np.full(len(ids_bp), ids_bp.shape[1], np.int32)
    calls = iter(range(10**9))

    def run():
        out = sampling.generate(config, params, ids_bp, lengths, jax.random.key(next(calls)),
                                max_new_tokens=_NEW.value, temperature=temperature)
        tokens, _ = jax.device_get((out.tokens, out.logps))
        return tokens

    return run


def tunix_sampler(t, model, ids_bp, temperature: float):
    """() -> [B, N] host tokens via Tunix's `Sampler` (cache of P + N slots, log-probs on)."""
    cache = t["sampler"].CacheConfig(cache_size=_PROMPT.value + _NEW.value, num_layers=LAYERS,
                                     num_kv_heads=KV_HEADS, head_dim=HEAD_DIM)
    sampler = t["sampler"].Sampler(model, IdsTokenizer(), cache)
    texts = as_text(ids_bp)
    top_p = None if temperature == 0 else 1.0  # Tunix: top_p set = sampling, else greedy
    calls = iter(range(10**9))

    def run():
        out = sampler(texts, max_generation_steps=_NEW.value, max_prompt_length=_PROMPT.value,
                      temperature=temperature, top_p=top_p, eos_tokens=[VOCAB],
                      return_logprobs=True, seed=next(calls))
        return np.stack([np.asarray(x) for x in out.tokens])

    return run


# ---------------------------------------------------------------------------------------------
# A whole GRPO iteration
# ---------------------------------------------------------------------------------------------


def r1jax_iteration(config, params, ids_bp):
    """() -> metrics of one GRPO iteration with r1jax's trainer pieces (see the docstring)."""
    g = _GROUP.value
    grpo_cfg = rl_config.GRPOConfig(group_size=g, prompts_per_step=len(ids_bp), beta=BETA,
                                    clip_eps_low=CLIP, clip_eps_high=CLIP)
    step_cfg = step.StepConfig(config, grpo_cfg, state_lib.OptimConfig(learning_rate=LR), 1.0,
                               _NEW.value)
    mesh = sharding.make_mesh({"fsdp": -1})
    state = jax.device_put(step.init_state(params, step_cfg, 0), step.state_shardings(step_cfg, mesh))
    train_step, score = step.jit_train_step(step_cfg, mesh), step.jit_score(step_cfg, mesh)
    lengths = np.full(len(ids_bp), ids_bp.shape[1], np.int32)
    tok = IdsTokenizer()
    calls = iter(range(10**9))

    def run():
        nonlocal state
        out = sampling.generate(config, state["params"], ids_bp, lengths,
                                jax.random.key(next(calls)), max_new_tokens=_NEW.value,
                                temperature=1.0, num_samples=g, mesh=mesh)
        tokens, mask, logps = jax.device_get((out.tokens, out.mask, out.logps))
        rewards = even_fraction([tok.decode(r[m]) for r, m in zip(tokens, mask)])
        host = {"prompt_tokens": np.repeat(ids_bp, g, 0), "prompt_lengths": np.repeat(lengths, g),
                "completion_tokens": tokens, "completion_mask": mask, "old_logps": logps,
                "advantages": np.asarray(grpo.group_advantages(rewards, g))}
        with jax.set_mesh(mesh):
            batch = jax.device_put(host, step.batch_shardings(mesh, tuple(host)))
            batch["ref_logps"] = score(state["ref_params"], {
                k: batch[k] for k in ("prompt_tokens", "prompt_lengths", "completion_tokens",
                                      "completion_mask")})
            batch = jax.device_put(batch, step.batch_shardings(mesh, tuple(batch)))
            state, metrics = train_step(state, batch)
        return jax.device_get(metrics)

    return run


def tunix_iteration(t, model, ref_model, ids_bp):
    """() -> None after one global step of Tunix's `GRPOLearner.train` (same settings)."""
    c = t["cluster"]
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    config = c.ClusterConfig(
        role_to_mesh={c.Role.ACTOR: mesh, c.Role.REFERENCE: mesh, c.Role.ROLLOUT: mesh},
        rollout_engine="vanilla", offload_to_cpu=False,
        training_config=c.RLTrainingConfig(actor_optimizer=optax.adamw(LR),
                                           eval_every_n_steps=10**9, max_steps=10**9),
        rollout_config=t["rollout"].RolloutConfig(
            max_tokens_to_generate=_NEW.value, max_prompt_length=_PROMPT.value,
            kv_cache_size=_PROMPT.value + _NEW.value, temperature=1.0, top_p=1.0,
            eos_tokens=[VOCAB]))
    cluster = c.RLCluster(actor=model, reference=ref_model, tokenizer=IdsTokenizer(),
                          cluster_config=config)

    def reward(prompts, completions, **_):
        del prompts
        return list(even_fraction(completions))

    learner = t["grpo"].GRPOLearner(
        rl_cluster=cluster, reward_fns=[reward],
        algo_config=t["grpo"].GRPOConfig(num_generations=_GROUP.value, num_iterations=1,
                                         beta=BETA, epsilon=CLIP))
    # One array leaf: Tunix repeats every leaf G times (a list would be G leaves).
    batch = {"prompts": np.array(as_text(ids_bp))}

    def run():
        learner.train([batch])  # a one-batch dataset: exactly one global step

    return run


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def interleaved(r1jax_fn, tunix_fn) -> dict[str, dict[str, float]]:
    """Per clock ("wall": perf_counter; "cpu": this process's CPU time, all threads, which
    other processes' load disturbs less): median seconds per call of each framework and the
    median/min/max of the rounds' Tunix / r1jax ratios. One warm-up (compiling) call each
    first."""
    r1jax_fn(), tunix_fn()
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    times = {(c, n): [] for c in clocks for n in ("r1jax", "tunix")}
    for _ in range(_ROUNDS.value):
        for name, fn in (("r1jax", r1jax_fn), ("tunix", tunix_fn)):
            start = {c: clock() for c, clock in clocks.items()}
            for _ in range(_CALLS.value):
                fn()
            for c, clock in clocks.items():
                times[c, name].append((clock() - start[c]) / _CALLS.value)
    out = {}
    for c in clocks:
        ratios = [t / r for r, t in zip(times[c, "r1jax"], times[c, "tunix"])]
        out[c] = {"r1jax": statistics.median(times[c, "r1jax"]),
                  "tunix": statistics.median(times[c, "tunix"]),
                  "ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return out


def report(name: str, r: dict[str, dict[str, float]], tokens: int | None = None) -> None:
    w, c = r["wall"], r["cpu"]
    rate = (f" ({tokens / w['r1jax']:,.0f} vs {tokens / w['tunix']:,.0f} tok/s)"
            if tokens else "")
    print(f"  {name:<22} r1jax {w['r1jax'] * 1e3:7.1f} ms  Tunix {w['tunix'] * 1e3:7.1f} ms"
          f"{rate}  Tunix/r1jax x{w['ratio']:.2f} (rounds {w['min']:.2f}-{w['max']:.2f}); "
          f"CPU time x{c['ratio']:.2f} ({c['min']:.2f}-{c['max']:.2f})")


def main(argv):
    del argv
    t = import_tunix()
    if t is None:
        return
    logging.set_verbosity(logging.WARNING)  # Tunix logs every step's prompts and completions
    config, params = r1jax_model()
    model = tunix_model(t, params)
    print(f"devices: {jax.devices()}; {load()} at start")
    print(f"model: dense Qwen2, {LAYERS} layers, d={HIDDEN}, "
          f"{sum(x.size for x in jax.tree.leaves(params)):,} parameters; P={_PROMPT.value}, "
          f"N={_NEW.value}; KV cache {_PROMPT.value + _NEW.value} slots in both; "
          f"{_ROUNDS.value} interleaved rounds x {_CALLS.value} calls")
    check = prompts(8, seed=1)
    same = np.mean(r1jax_sampler(config, params, check, 0.0)()
                   == tunix_sampler(t, model, check, 0.0)())
    print(f"greedy tokens equal between the two (same weights): {same:.1%}")
    for b in map(int, _BATCHES.value):
        ids = prompts(b)
        for temperature in (0.0, 1.0):
            r = interleaved(r1jax_sampler(config, params, ids, temperature),
                            tunix_sampler(t, model, ids, temperature))
            report(f"sampler B={b}, {'greedy' if temperature == 0 else 'T=1'}", r,
                   b * _NEW.value)
    if not _SKIP_ITER.value:
        ids = prompts(_ITER_PROMPTS.value, seed=2)
        r = interleaved(r1jax_iteration(config, params, ids),
                        tunix_iteration(t, model, tunix_model(t, params), ids))
        report(f"GRPO iteration {_ITER_PROMPTS.value}x{_GROUP.value}", r)
    print(f"{load()} at end")


if __name__ == "__main__":
    app.run(main)
