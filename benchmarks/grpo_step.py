"""GRPO speed: train-step tokens/s and MFU per model preset, and where an iteration's time goes.

  python benchmarks/grpo_step.py                          # tiny and small_50m, then a tiny run
  python benchmarks/grpo_step.py --presets=tiny --rows=16 --prompt_len=64 --new_tokens=64
  python benchmarks/grpo_step.py --presets=tiny --rows=8 --new_tokens=512 --run_steps=0 \
      --repeats=2 --logps_vocab=32768          # log-prob chunks and packing only, ~minutes

Part 1 times the jitted, sharded GRPO update (`r1jax.rl.step`) on random inputs for each model
preset and reports tokens/s and MFU: model FLOPs (`summary.forward_flops`: 2 x activated params
per token plus attention, x3 for forward + backward) against the peak matmul FLOP/s of the
model's compute dtype measured in this process (`r1jax.peak_flops.measure`: best of several
sizes, repeats and rounds; float32 and bfloat16 both printed).

Then, on the first preset (`--logps_vocab`): the update's compiled temporaries and step time
with chunked log-probs vs the whole completion's [B, T, V] logits in one chunk, and a long-tail
batch (one row in eight at full width, the rest an eighth of it) packed vs unpacked.

Part 2 runs the real trainer (`configs/r1_zero.py:tiny` shrunk to a few steps, a random base
model and a tokenizer trained here) and splits each step's wall-clock into sampling, rewards
and training (the `perf/*_s` metrics), skipping the first step (compilation).
"""

import importlib.util
import os
import pathlib
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from r1jax import peak_flops, sharding
from r1jax.data import tasks, templates
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.models import config as model_config_lib
from r1jax.models import presets, summary, transformer
from r1jax.rl import config as rl_config
from r1jax.rl import packing, step, trainer
from r1jax.train import base, metrics
from r1jax.train import state as state_lib

_PRESETS = flags.DEFINE_list("presets", ["tiny", "small_50m"], "Model presets to time.")
_ROWS = flags.DEFINE_integer("rows", 32, "Completions per update (prompts x G).")
_PROMPT = flags.DEFINE_integer("prompt_len", 64, "Prompt width P.")
_NEW = flags.DEFINE_integer("new_tokens", 128, "Completion width T.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps per preset.")
_RUN_STEPS = flags.DEFINE_integer("run_steps", 4, "Steps of the full tiny run (0 skips it).")
_LOGPS_VOCAB = flags.DEFINE_integer(
    "logps_vocab", 32768, "Vocabulary of the chunked-vs-whole log-probs comparison and the "
    "packed-vs-unpacked long-tail update, on the first preset (0 skips both).")

REPO = pathlib.Path(__file__).resolve().parents[1]


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


def _model(preset: str, vocab: int | None = None) -> model_config_lib.ModelConfig:
    model = model_config_lib.ModelConfig(**presets.get(preset).to_dict())
    return model if vocab is None else model.replace(vocab_size=vocab)


def _step_config(model, new_tokens, **grpo) -> step.StepConfig:
    grpo_cfg = rl_config.GRPOConfig(group_size=4, prompts_per_step=_ROWS.value // 4, **grpo)
    return step.StepConfig(model, grpo_cfg, state_lib.OptimConfig(learning_rate=1e-5), 1.0,
                           new_tokens)


def timed_step(config: step.StepConfig, batch) -> tuple[float, float]:
    """(median seconds of one update, temporary MiB of the compiled step) on an fsdp mesh."""
    mesh = sharding.make_mesh({"fsdp": -1})
    params = jax.device_get(transformer.random_params(config.model, 0))
    state = jax.device_put(step.init_state(params, config, 0), step.state_shardings(config, mesh))
    train_step = step.jit_train_step(config, mesh)
    with jax.set_mesh(mesh):
        batch = jax.device_put(batch, step.batch_shardings(mesh, tuple(batch)))
        compiled = train_step.lower(state, batch).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        state, out = compiled(state, batch)  # warm-up
        jax.block_until_ready(out)
        times = []
        for _ in range(_REPEATS.value):
            start = time.perf_counter()
            state, out = compiled(state, batch)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - start)
    return float(np.median(times)), temp / 2**20


def time_train_step(preset: str, peaks: dict[str, float]) -> dict[str, float]:
    """Median seconds, tokens/s and MFU of one GRPO update for a model preset."""
    model = _model(preset)
    config = _step_config(model, _NEW.value)
    batch = random_batch(_ROWS.value, _PROMPT.value, _NEW.value, model.vocab_size)
    seconds, _ = timed_step(config, batch)
    tokens = _ROWS.value * (_PROMPT.value + _NEW.value)
    flops = 3 * summary.forward_flops(model, _ROWS.value, _PROMPT.value + _NEW.value)
    return {"step_s": seconds, "tokens_per_s": tokens / seconds, "mfu": flops / seconds / peaks[model.dtype]}


def compare_logps(preset: str, vocab: int) -> None:
    """Chunked log-probs vs the whole completion's [B, T, V] logits in one chunk (the memory
    of the step before issue 23, which formed them for prompt + completion): temporaries of
    the compiled update and step time, as ratios."""
    model = _model(preset, vocab)
    batch = random_batch(_ROWS.value, _PROMPT.value, _NEW.value, vocab)
    whole = timed_step(_step_config(model, _NEW.value, logps_chunk_size=_NEW.value), batch)
    chunk = max(_NEW.value // 8, 1)
    chunked = timed_step(_step_config(model, _NEW.value, logps_chunk_size=chunk), batch)
    print(f"log-probs, {preset} with V={vocab}: one chunk {whole[1]:.0f} MiB temp "
          f"{whole[0] * 1e3:.0f} ms/step; chunks of {chunk}: {chunked[1]:.0f} MiB "
          f"{chunked[0] * 1e3:.0f} ms/step; chunked/one chunk: memory "
          f"{chunked[1] / whole[1]:.2f}x, time {chunked[0] / whole[0]:.2f}x")


def long_tail_batch(vocab: int) -> dict[str, np.ndarray]:
    """Completions of new_tokens / 8 real tokens but one in eight rows at the full width."""
    batch = random_batch(_ROWS.value, _PROMPT.value, _NEW.value, vocab)
    lengths = np.full(_ROWS.value, max(_NEW.value // 8, 1))
    lengths[::8] = _NEW.value
    batch["completion_mask"] = np.arange(_NEW.value)[None] < lengths[:, None]
    return batch


def compare_real_length(preset: str) -> None:
    """A long-tail batch updated at max_new_tokens, then with every row padded only to the
    longest, then packed (rl.packing): ms per update and the ratios. (Here one row in eight
    is full width, so the longest is max_new_tokens and trimming alone gains nothing.)"""
    model = _model(preset)
    batch = long_tail_batch(model.vocab_size)
    full = timed_step(_step_config(model, _NEW.value), batch)
    packed_batch = packing.pack(batch, 1, 64, jax.device_count())
    packed = timed_step(_step_config(model, _NEW.value, packing=True), packed_batch)
    rows, width = packed_batch["packed_tokens"].shape
    print(f"long-tail update, {preset}: {_ROWS.value} rows x {_PROMPT.value + _NEW.value} "
          f"unpacked {full[0] * 1e3:.0f} ms; packed into {rows} x {width}: "
          f"{packed[0] * 1e3:.0f} ms; packed/unpacked {packed[0] / full[0]:.2f}x time, "
          f"{packed[1] / full[1]:.2f}x temp memory")


def make_tiny_base(root: pathlib.Path) -> pathlib.Path:
    """A random tiny-preset model with a tokenizer trained on countdown prompts."""
    task = tasks.get("countdown", min_numbers=3, max_numbers=3, max_number=50, max_target=100)
    template = templates.get("r1_zero")
    texts = [f"{template.format_prompt(e['question'])} <think> {e['worked_solution']} "
             f"</think> <answer> {e['answer']} </answer>"
             for e in (task.example("train", 0, i) for i in range(500))]
    tok = tokenizer_lib.train_sentencepiece(texts, 1024, root / "tokenizer.model")
    model = model_config_lib.ModelConfig(**presets.get("tiny").to_dict())
    assert tok.vocab_size <= model.vocab_size
    return base.save_base(root / "base", model, transformer.random_params(model, 0),
                          root / "tokenizer.model")


def iteration_shares(steps: int) -> dict[str, float]:
    """Fractions of step wall-clock in sampling, rewards and training (steps 2..N)."""
    spec = importlib.util.spec_from_file_location("r1_zero", REPO / "configs/r1_zero.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        config = module.get_config("tiny")
        config.base_dir = str(make_tiny_base(root))
        config.total_steps = steps
        config.eval.every = 0
        config.eval.num_prompts = 2
        config.eval.greedy = False
        config.progress_bar = False
        config.plots = False
        trainer.train(config, root / "run")
        records = [r for r in metrics.read_jsonl(root / "run" / "metrics.jsonl")
                   if "perf/step_s" in r][1:]
    total = sum(r["perf/step_s"] for r in records)
    shares = {k: sum(r[f"perf/{k}_s"] for r in records) / total
              for k in ("sample", "reward", "train")}
    shares["other"] = 1.0 - sum(shares.values())
    shares["step_s"] = total / len(records)
    return shares


def main(argv):
    del argv
    peaks = peak_flops.measure()
    print(f"devices: {jax.devices()}; measured matmul peak {peak_flops.describe(peaks)} "
          f"(load average {os.getloadavg()[0]:.1f})")
    print(f"train step: {_ROWS.value} rows x ({_PROMPT.value} prompt + {_NEW.value} new) tokens")
    for preset in _PRESETS.value:
        r = time_train_step(preset, peaks)
        print(f"  {preset:>10}: {r['step_s'] * 1e3:8.1f} ms/step  "
              f"{r['tokens_per_s']:10.0f} tokens/s  MFU {100 * r['mfu']:5.1f}%")
    if _LOGPS_VOCAB.value:
        compare_logps(_PRESETS.value[0], _LOGPS_VOCAB.value)
        compare_real_length(_PRESETS.value[0])
    if _RUN_STEPS.value > 1:
        shares = iteration_shares(_RUN_STEPS.value)
        print(f"full iteration (tiny preset, {shares['step_s']:.2f} s/step): "
              + "  ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items() if k != "step_s"))


if __name__ == "__main__":
    app.run(main)
