"""SFT / pretraining trainer: packing, loss isolation between packed sequences, resume, sharding."""

import subprocess
import sys

import cpu_env
import jax
import numpy as np
import pytest

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import transformer
from r1jax.train import base, partition, sft
from r1jax.train import state as state_lib

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]

CFG = config_lib.ModelConfig(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
    num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
    qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=4, n_shared_experts=1,
    num_experts_per_tok=2, moe_intermediate_size=16, first_k_dense_replace=1,
    moe_block_size=8)


def _sequences(rng, n, lo=3, hi=12):
    out = []
    for _ in range(n):
        length = int(rng.integers(lo, hi))
        tokens = rng.integers(1, CFG.vocab_size, length).tolist()
        weights = (rng.random(length) < 0.7).astype(float).tolist()
        out.append((tokens, weights))
    return out


def test_pack_layout_and_truncation():
    seqs = [([1, 2, 3], [0, 1, 1]), ([4, 5], [1, 1]), ([6] * 9, [1] * 9)]
    packed = sft.pack(seqs, seq_len=6, pad_id=0)
    np.testing.assert_array_equal(packed["tokens"], [[1, 2, 3, 4, 5, 0], [6] * 6])
    np.testing.assert_array_equal(packed["segment_ids"], [[1, 1, 1, 2, 2, 0], [1] * 6])
    np.testing.assert_array_equal(packed["positions"], [[0, 1, 2, 0, 1, 0], list(range(6))])
    np.testing.assert_array_equal(packed["weights"], [[0, 1, 1, 1, 1, 0], [1] * 6])
    assert int(packed["num_truncated"]) == 1


def _unpack(packed):
    """The sequences of packed rows, read back by segment id (the obvious slow way)."""
    out = []
    for r in range(packed["tokens"].shape[0]):
        seg = packed["segment_ids"][r]
        for s in range(1, int(seg.max()) + 1):
            idx = np.flatnonzero(seg == s)
            np.testing.assert_array_equal(idx, np.arange(idx[0], idx[0] + len(idx)))
            np.testing.assert_array_equal(packed["positions"][r, idx], np.arange(len(idx)))
            out.append((packed["tokens"][r, idx].tolist(), packed["weights"][r, idx].tolist()))
        assert (packed["tokens"][r, seg == 0] == 0).all() and (packed["weights"][r, seg == 0] == 0).all()
    return out


@pytest.mark.parametrize("strategy", sft.PACKING)
def test_pack_keeps_every_sequence(strategy):
    """Both strategies store each sequence whole in one row; best_fit needs no more rows than
    next_fit and, with sequences much shorter than a row, fills nearly every slot."""
    rng = np.random.default_rng(3)
    seqs = _sequences(rng, 300, lo=1, hi=40)
    packed = sft.pack(seqs, seq_len=64, pad_id=0, strategy=strategy)
    back = _unpack(packed)
    key = lambda s: (s[0], s[1])  # noqa: E731
    assert sorted(back, key=key) == sorted(seqs, key=key)
    if strategy == "next_fit":  # the input order, row after row
        assert back == seqs
    rows = {k: sft.pack(seqs, 64, 0, strategy=k)["tokens"].shape[0] for k in sft.PACKING}
    assert rows["best_fit"] <= rows["next_fit"]
    tokens = sum(len(t) for t, _ in seqs)
    if strategy == "best_fit":
        assert tokens / (rows["best_fit"] * 64) > 0.97
    with pytest.raises(ValueError, match="strategy"):
        sft.pack(seqs, 64, 0, strategy="first_fit")
    with pytest.raises(ValueError, match="packing"):
        sft.SFTConfig(packing="first_fit")


_forward = jax.jit(transformer.Transformer(CFG).apply)
_NAIVE_WIDTH = 12


def _naive_loss(params, tokens, weights):
    """Cross-entropy of one unpacked sequence, by an independent float64 computation.

    The sequence alone is padded at the end to one width (the longest `_sequences` makes), so a
    single compile serves every length; causal attention and dropless MoE leave its positions
    unaffected by the trailing padding."""
    assert len(tokens) <= _NAIVE_WIDTH
    padded = np.zeros([1, _NAIVE_WIDTH], np.int64)
    padded[0, :len(tokens)] = tokens
    logits = _forward({"params": params}, padded)[0, :len(tokens)]
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    nll = -np.array([logp[i, tokens[i + 1]] for i in range(len(tokens) - 1)])
    return nll, np.asarray(weights[1:])


@pytest.mark.parametrize("strategy", sft.PACKING)
def test_packed_loss_equals_separate_sequences(strategy):
    rng = np.random.default_rng(0)
    params = transformer.random_params(CFG, seed=1)
    seqs = _sequences(rng, 6)
    packed = sft.pack(seqs, seq_len=32, pad_id=0, strategy=strategy)
    batch = {k: packed[k] for k in ("tokens", "segment_ids", "positions", "weights")}
    loss, aux = sft.lm_loss(params, batch, transformer.Transformer(CFG))
    nll, w = zip(*(_naive_loss(params, t, wt) for t, wt in seqs))
    nll, w = np.concatenate(nll), np.concatenate(w)
    np.testing.assert_allclose(float(aux["ce"]), (nll * w).sum() / w.sum(), rtol=1e-5)
    assert float(aux["tokens"]) == w.sum()


def _batch_fn(seed=0):
    rng = np.random.default_rng(seed)
    packed = sft.pack(_sequences(rng, 64), seq_len=24, pad_id=0)
    return sft.epoch_batches(packed, batch_size=8, seed=seed)


def test_batch_not_divisible_by_mesh_is_a_clear_error(tmp_path):
    cfg = sft.SFTConfig(steps=1, batch_size=4, seq_len=24, mesh=(("fsdp", 8),))
    with pytest.raises(ValueError, match="batch_size=4.*8"):
        sft.train(CFG, state_lib.OptimConfig(), cfg, _batch_fn(), tmp_path,
                  transformer.random_params(CFG))


def test_state_shardings_follow_params():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    abstract, param_sh = partition.param_shardings(CFG, mesh)
    optim = state_lib.OptimConfig()
    abstract_state = jax.eval_shape(
        lambda p: state_lib.create_train_state(p, optim, jax.random.key(0)), abstract)
    state_sh = partition.state_shardings(abstract_state, abstract, mesh)
    flat_params = dict(jax.tree_util.tree_flatten_with_path(param_sh)[0])
    kernel = [p for p in flat_params if "down_proj" in str(p)][0]
    assert flat_params[kernel].spec != jax.sharding.PartitionSpec()
    name = jax.tree_util.keystr(kernel)
    moments = [s for p, s in jax.tree_util.tree_flatten_with_path(state_sh["opt_state"])[0]
               if jax.tree_util.keystr(p).endswith(name)]
    assert len(moments) == 2  # Adam's mu and nu
    assert all(s.spec == flat_params[kernel].spec for s in moments)
    assert state_sh["step"].spec == jax.sharding.PartitionSpec()


def test_pretrain_schedule_length_follows_the_steps():
    """optim.total_steps None (the presets) -> the cosine decays over sft.steps, also after a
    --config.sft.steps override; an explicit total_steps is kept."""
    from conftest import config_preset

    from r1jax.train import pretrain

    c = config_preset("pretrain_base", "tiny")
    assert c.optim.total_steps is None
    assert pretrain.PretrainConfig.from_config_dict(c).optim.total_steps == c.sft.steps == 3300
    c.sft.steps = 700
    assert pretrain.PretrainConfig.from_config_dict(c).optim.total_steps == 700
    c.optim.total_steps = 900
    assert pretrain.PretrainConfig.from_config_dict(c).optim.total_steps == 900


@pytest.mark.slow
def test_pretrain_base_smoke(tmp_path):
    env = cpu_env.env(1)
    out = subprocess.run(
        [sys.executable, "experiments/pretrain_base.py", "--config=configs/pretrain_base.py:smoke",
         f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    model_cfg, params, tok = base.load_base(tmp_path / "base")
    assert model_cfg.vocab_size >= tok.vocab_size
    # The R1 tags are plain text to the base tokenizer (several pieces), as to a web-text base.
    assert len(tok.encode("<think>")) > 1 and len(tok.encode("</answer>")) > 1
    assert tok.decode(tok.encode(" <think> 5 </think>")) == " <think> 5 </think>"
    logits = transformer.Transformer(model_cfg).apply({"params": params},
                                                      np.asarray([tok.encode("Problem: 1")]))
    assert np.isfinite(np.asarray(logits)).all()
