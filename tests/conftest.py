"""Test-wide settings (8 simulated CPU devices; single-device tests use the first one) and the
small random GRPO base model that the trainer and multi-host tests share."""

import importlib.util
import os
import pathlib

import cpu_env
import pytest

# Cheap compiles, as in every JAX process the suite starts (see cpu_env.py).
os.environ.setdefault("XLA_FLAGS", cpu_env.xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def config_preset(name: str, preset: str):
    """`get_config(preset)` of configs/<name>.py (the config files are not a package)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def small_model(vocab_size):
    """A 2-layer MLA + MoE config small enough for a GRPO step in seconds."""
    from r1jax.models import config as model_config_lib

    return model_config_lib.ModelConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, first_k_dense_replace=1, max_position_embeddings=256,
        original_max_position_embeddings=256)


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    """A base model: random 2-layer MoE params and a SentencePiece trained on smoke prompts."""
    from r1jax.data import tasks, templates
    from r1jax.data import tokenizer as tokenizer_lib
    from r1jax.models import transformer
    from r1jax.train import base

    root = tmp_path_factory.mktemp("grpo_base")
    task = tasks.get("arithmetic", min_digits=1, max_digits=2)
    template = templates.get("r1_zero")
    texts = [f"{template.format_prompt(e['question'])} <think> {e['worked_solution']} </think> "
             f"<answer> {e['answer']} </answer>"
             for e in (task.example("train", 0, i) for i in range(200))]
    tok = tokenizer_lib.train_sentencepiece(texts, 400, root / "tok" / "tokenizer.model")
    model = small_model(tok.vocab_size)
    base.save_base(root / "base", model, transformer.random_params(model, 0),
                   root / "tok" / "tokenizer.model")
    return root / "base"


@pytest.hookimpl(optionalhook=True)  # xdist's hook: absent with -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """With `-n`, idle workers take pending tests from busy ones (xdist's work stealing): the
    suite's durations range from milliseconds to two minutes, and the default split in
    collection order left one worker idle while the other ran the long entry-point tests."""
    if config.getvalue("dist") != "load":
        return None  # an explicit --dist keeps its own scheduler
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)
