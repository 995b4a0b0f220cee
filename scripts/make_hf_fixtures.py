"""Builds the tiny HF golden checkpoints in tests/fixtures/hf/ with torch + transformers.

    HF_HUB_OFFLINE=1 python scripts/make_hf_fixtures.py [--out tests/fixtures/hf]

Needs the `hf` extra (torch, transformers 5.x); nothing is downloaded. For each family it
builds a random model with a fixed seed, saves it with `save_pretrained` (config.json +
model.safetensors; the generation config is dropped), and writes `golden.npz` with a fixed
token batch `tokens` [2, 16] and the float32 eager-attention logits `logits` [2, 16, V].

Weights are drawn so that nothing is degenerate: linear weights N(0, 1/fan_in) (attention is
far from uniform, routing far from ties), embeddings N(0, 1), norm scales 1 + N(0, 0.1^2),
biases N(0, 0.1^2), and a DeepSeek balancing bias N(-0.6, 0.3^2) that changes which experts
are chosen and makes some biased scores of kept groups negative (so filling dropped groups with
0.0 instead of -inf, as transformers 4.x did, would change the selection).

  deepseek_v3: MLA with q_lora_rank, YaRN (mscale != mscale_all_dim), interleaved RoPE,
    1 dense + 2 MoE layers, 8 experts in 4 groups (topk_group 2), top-2, 1 shared expert.
  qwen2: GQA 4/2 heads with q/k/v bias, tied embeddings.
  llama: GQA 4/2 heads, head_dim != hidden / heads, llama3 RoPE scaling, untied.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

SEQ_LEN, BATCH = 16, 2

COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_attention_heads=4,
              max_position_embeddings=256, bos_token_id=0, eos_token_id=1)

CONFIGS = {
    "deepseek_v3": lambda: transformers.DeepseekV3Config(
        **COMMON, num_hidden_layers=3, num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=8,
        n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=16, n_group=4,
        topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True, first_k_dense_replace=1,
        rms_norm_eps=1e-6, rope_interleave=True, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="yarn", rope_theta=500.0, factor=4.0,
                             original_max_position_embeddings=64, beta_fast=32.0,
                             beta_slow=1.0, mscale=0.9, mscale_all_dim=0.8)),
    "qwen2": lambda: transformers.Qwen2Config(
        **COMMON, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True,
        rms_norm_eps=1e-6, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    "llama": lambda: transformers.LlamaConfig(
        **COMMON, num_hidden_layers=2, num_key_value_heads=2, head_dim=16,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=16)),
}
MODELS = {"deepseek_v3": transformers.DeepseekV3ForCausalLM,
          "qwen2": transformers.Qwen2ForCausalLM, "llama": transformers.LlamaForCausalLM}


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Redraws every parameter (see the module docstring for the distributions)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return mean + std * torch.randn(shape, generator=gen, dtype=torch.float32)

    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(normal(p.shape, 0.1, 1.0))
        elif name.endswith("embed_tokens.weight"):
            p.copy_(normal(p.shape, 1.0))
        elif name.endswith(".bias"):
            p.copy_(normal(p.shape, 0.1))
        else:  # [out, in] linears and [E, out, in] stacked experts.
            p.copy_(normal(p.shape, p.shape[-1] ** -0.5))
    for name, buf in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buf.copy_(normal(buf.shape, 0.3, -0.6))


def build(name: str, seed: int) -> tuple[torch.nn.Module, np.ndarray]:
    torch.manual_seed(seed)
    config = CONFIGS[name]()
    config._attn_implementation = "eager"
    model = MODELS[name](config).eval()
    randomize(model, seed)
    if config.tie_word_embeddings:
        model.tie_weights()
    tokens = np.random.default_rng(seed).integers(0, config.vocab_size, (BATCH, SEQ_LEN))
    return model, tokens.astype(np.int32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("tests", "fixtures", "hf"))
    args = parser.parse_args()
    for seed, name in enumerate(CONFIGS):
        model, tokens = build(name, seed)
        with torch.no_grad():
            logits = model(torch.from_numpy(tokens).long()).logits.float().numpy()
        out = os.path.join(args.out, name)
        model.save_pretrained(out)
        gen_config = os.path.join(out, "generation_config.json")
        if os.path.exists(gen_config):
            os.remove(gen_config)
        np.savez_compressed(os.path.join(out, "golden.npz"), tokens=tokens, logits=logits)
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        print(f"{name}: {size / 1024:.0f} KiB, logits std {logits.std():.3f}")


if __name__ == "__main__":
    main()
