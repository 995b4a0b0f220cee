"""Rollout sampling speed: the cached sampler vs naive generation and HF transformers.

For each preset (random weights) and batch size, generates `--new_tokens` greedy tokens after a
`--prompt_len`-token prompt with no EOS (so every engine produces exactly B * N tokens) and
reports generated tokens/s end to end (prefill included) for
  r1jax    `r1jax.sampling.make_sampler` (KV / latent cache, one jitted while_loop);
  naive    a jitted full forward over the whole [B, P + N] buffer at every step, no cache;
  hf       transformers `generate` (use_cache, greedy) on the same weights exported with
           `r1jax.models.hf.save_hf`, in the same process (skipped with a message when torch /
           transformers / hf.py are unavailable);
and the ratios r1jax / naive, r1jax / hf (hf: the median ratio of `--repeats` rounds that call
each engine once, alternately), plus how many greedy tokens HF and r1jax agree on.
Timings are medians over `--repeats` runs after one warm-up (compilation reported apart).
Then the long-tail workload (issue 24): B prompts x G samples at temperature 1 where 10% of the
rows run to `--tail_new_tokens` and the others stop at 1/8 of that (stop sequences taken from a
free run, `continuous.stops_for_lengths`), sampled by the static sampler and by continuous
batching with `--tail_slots` slots: real tokens/s of each, rows x decode steps, and the ratio
as the median of `--tail_rounds` rounds in which the two engines run alternately (so a change in
machine load hits both; one median per engine taken at different times was x0.7-x1.8 at load ~9
on 2 cores).
Finally: cache bytes per token of MLA vs GQA / MHA models of the same width, heads and depth.

  python benchmarks/sampling.py                      # tiny and small_50m, batch 8 and 64
  python benchmarks/sampling.py --presets=tiny --batches=8 --repeats=3
  python benchmarks/sampling.py --presets=tiny --batches= --skip_naive   # long tail only
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import sampling
from r1jax.models import config as config_lib
from r1jax.models import presets, transformer
from r1jax.sampling import continuous


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median seconds of `repeats` further calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def make_naive(config: config_lib.ModelConfig, prompt_len: int, new_tokens: int):
    """Greedy generation without a cache: a full causal forward of the buffer at each step."""
    model = transformer.Transformer(config)

    @jax.jit
    def generate(params, prompt_bp):
        b = prompt_bp.shape[0]
        buffer_bt = jnp.zeros((b, prompt_len + new_tokens), jnp.int32).at[:, :prompt_len].set(
            prompt_bp)

        def step(t, buffer_bt):
            logits_btv = model.apply({"params": params}, buffer_bt)
            last = prompt_len - 1 + t
            next_b = jnp.argmax(jax.lax.dynamic_index_in_dim(logits_btv, last, 1, False), -1)
            return jax.lax.dynamic_update_slice(buffer_bt, next_b[:, None].astype(jnp.int32),
                                                (0, last + 1))

        return jax.lax.fori_loop(0, new_tokens, step, buffer_bt)[:, prompt_len:]

    return generate


def make_hf(config, params, workdir: str):
    """An HF greedy `generate` on the same weights, or (None, reason)."""
    try:
        import torch
        import transformers

        from r1jax.models import hf
    except ImportError as err:
        return None, f"skipped: {err}"
    hf.save_hf(config, params, workdir, overwrite=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(workdir, dtype=torch.float32)
    model.eval()

    def generate(prompt_bp: np.ndarray, new_tokens: int) -> np.ndarray:
        ids = torch.from_numpy(np.asarray(prompt_bp, np.int64))
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, use_cache=True, eos_token_id=None,
                                 pad_token_id=0)
        return out[:, ids.shape[1]:].numpy()

    return generate, f"transformers {transformers.__version__}, torch {torch.__version__}"


def bench_preset(name: str, batches, args) -> None:
    config = config_lib.ModelConfig.from_dict(presets.get(name))
    params = transformer.random_params(config)
    print(f"\n== {name}: {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f}M params, "
          f"P={args.prompt_len}, N={args.new_tokens}, greedy, no EOS")
    settings = sampling.SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.0)
    sampler = sampling.make_sampler(config, settings)
    naive = make_naive(config, args.prompt_len, args.new_tokens)
    with tempfile.TemporaryDirectory() as workdir:
        hf_generate, hf_note = make_hf(config, params, workdir + "/hf")
        print(f"   hf: {hf_note}")
        for b in batches:
            bench_batch(config, params, sampler, naive, hf_generate, b, args)


def bench_batch(config, params, sampler, naive, hf_generate, b: int, args) -> None:
    rng = np.random.default_rng(b)
    prompt_bp = rng.integers(1, config.vocab_size, (b, args.prompt_len)).astype(np.int32)
    lengths_b = np.full((b,), args.prompt_len, np.int32)
    key = jax.random.key(0)
    tokens = b * args.new_tokens
    compile_s, ours_s = timed(lambda: sampler(params, prompt_bp, lengths_b, key).tokens,
                              args.repeats)
    ours = np.asarray(sampler(params, prompt_bp, lengths_b, key).tokens)
    line = (f"   B={b:3d}  r1jax {tokens / ours_s:9.0f} tok/s (first call {compile_s:5.1f} s)")
    if not args.skip_naive:
        _, naive_s = timed(lambda: naive(params, prompt_bp), args.repeats)
        line += f" | naive {tokens / naive_s:8.0f} tok/s, x{naive_s / ours_s:5.1f}"
    if hf_generate is not None:
        theirs = hf_generate(prompt_bp, args.new_tokens)
        # Alternate the two engines (one call each per round), so that load from other
        # processes hits both; the ratio is the median of the rounds' ratios.
        ratios, hf_times = [], []
        for _ in range(args.repeats):
            ours_round, _ = _seconds(lambda: sampler(params, prompt_bp, lengths_b, key).tokens)
            hf_round, _ = _seconds(lambda: hf_generate(prompt_bp, args.new_tokens))
            ratios.append(hf_round / ours_round)
            hf_times.append(hf_round)
        hf_s = statistics.median(hf_times)
        agree = np.mean(np.cumprod(theirs == ours, axis=1)[:, -1]) if theirs.shape == ours.shape \
            else float("nan")
        first = np.mean(theirs[:, 0] == ours[:, 0])
        line += (f" | hf {tokens / hf_s:8.0f} tok/s, x{statistics.median(ratios):5.1f} "
                 f"({min(ratios):.1f}-{max(ratios):.1f} over {args.repeats} alternating rounds; "
                 f"greedy agreement: first token {first:.0%}, whole completion {agree:.0%})")
    print(line, flush=True)


def long_tail(name: str, args) -> None:
    """Static vs continuous batching on a long-tailed workload (see the module docstring)."""
    config = config_lib.ModelConfig.from_dict(presets.get(name))
    params = transformer.random_params(config)
    n, g = args.tail_new_tokens, args.tail_samples
    rng = np.random.default_rng(0)
    prompt_bp = rng.integers(1, config.vocab_size, (args.tail_prompts, args.prompt_len))
    prompt_bp, lengths_b = prompt_bp.astype(np.int32), np.full(len(prompt_bp), args.prompt_len)
    key = jax.random.key(0)
    free = sampling.make_sampler(config, sampling.SamplingConfig(
        max_new_tokens=n, num_samples=g))(params, prompt_bp, lengths_b, key)
    rows = len(prompt_bp) * g
    targets = np.where(rng.random(rows) < 0.1, n, max(n // 8, 3))
    settings = sampling.SamplingConfig(
        max_new_tokens=n, num_samples=g,
        stop_token_sequences=continuous.stops_for_lengths(np.asarray(free.tokens), targets))
    engines = {"static": sampling.make_sampler(config, settings),
               "continuous": continuous.make_continuous_sampler(config, settings,
                                                                args.tail_slots)}
    print(f"\n== long tail, {name}: {len(prompt_bp)} prompts x G={g}, N={n}, "
          f"{args.tail_slots} slots, {args.tail_rounds} interleaved rounds")
    results, compile_s = {}, {}
    for label, engine in engines.items():
        start = time.perf_counter()
        results[label] = jax.block_until_ready(engine(params, prompt_bp, lengths_b, key))
        compile_s[label] = time.perf_counter() - start
    # Static and continuous alternate within each round, so a change of machine load hits both;
    # the ratio is the median of the rounds' ratios.
    times = {label: [] for label in engines}
    for _ in range(args.tail_rounds):
        for label, engine in engines.items():
            start = time.perf_counter()
            jax.block_until_ready(engine(params, prompt_bp, lengths_b, key).tokens)
            times[label].append(time.perf_counter() - start)
    for label in engines:
        lengths = np.asarray(results[label].lengths)
        width = rows if label == "static" else engines[label].num_slots
        print(f"   {label:10s} {lengths.sum() / statistics.median(times[label]):9.0f} real tok/s "
              f"(first call {compile_s[label]:5.1f} s), rows x steps "
              f"{width * int(results[label].num_steps):6d}, lengths median "
              f"{np.median(lengths):.0f} max {lengths.max()}")
    ratios = [s / c for s, c in zip(times["static"], times["continuous"])]
    same = np.array_equal(results["static"].tokens, results["continuous"].tokens)
    print(f"   continuous / static tokens/s: x{statistics.median(ratios):.2f} median of rounds "
          f"(min x{min(ratios):.2f}, max x{max(ratios):.2f}; same tokens: {same})")


def cache_report(name: str) -> None:
    mla = config_lib.ModelConfig.from_dict(presets.get(name))
    heads = mla.num_attention_heads
    rows = [("MLA", mla)]
    for label, kv in (("MHA", heads), ("GQA", max(1, heads // 4))):
        rows.append((f"{label} n_kv={kv}", mla.replace(
            attention_type="gqa", num_key_value_heads=kv, head_dim=mla.v_head_dim,
            q_lora_rank=None, rope_interleave=False)))
    print(f"\n== cache bytes per token, {name} ({mla.num_hidden_layers} layers, {heads} heads)")
    for label, cfg in rows:
        for dtype in (jnp.float32, jnp.bfloat16):
            per_token = sampling.cache_bytes_per_token(cfg, dtype)
            ratio = per_token / sampling.cache_bytes_per_token(mla, dtype)
            print(f"   {label:12s} {jnp.dtype(dtype).name:8s} {per_token:7d} B/token "
                  f"({cfg.kv_cache_values_per_token} values/layer, x{ratio:.2f} of MLA)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small_50m")
    parser.add_argument("--batches", default="8,64")
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_naive", action="store_true")
    parser.add_argument("--tail_prompts", type=int, default=64)
    parser.add_argument("--tail_samples", type=int, default=4)
    parser.add_argument("--tail_new_tokens", type=int, default=256)
    parser.add_argument("--tail_slots", type=int, default=64)
    parser.add_argument("--tail_rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{len(jax.devices())}")
    batches = [int(b) for b in args.batches.split(",") if b]
    for name in args.presets.split(","):
        if batches:
            bench_preset(name, batches, args)
        if args.tail_rounds:  # 0 skips the long-tail comparison
            long_tail(name, args)
    for name in args.presets.split(","):
        cache_report(name)


if __name__ == "__main__":
    main()
