"""Preference reward model: the Bradley-Terry loss and its gradient vs float64 NumPy, the pooled
last-token head vs a per-example reference with padding, training, sharded == one device,
save/load, the registry interface, and hostile text."""

import json
import warnings

import jax
import numpy as np
import pytest
from conftest import small_model

from r1jax import sharding
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.data.tasks import preference
from r1jax.models import transformer
from r1jax.rewards import registry
from r1jax.rl import config as rl_config
from r1jax.train import reward
from r1jax.train import reward_model as rm
from r1jax.train import state as state_lib

MAX_LEN = 48


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory):
    task = preference.Preference()
    texts = [rm.format_input(ex["question"], ex[side])
             for ex in (task.example("train", 0, i) for i in range(200))
             for side in ("chosen", "rejected")]
    path = tmp_path_factory.mktemp("rm_tok") / "tokenizer.model"
    tokenizer_lib.train_sentencepiece(texts, 400, path)
    return path


@pytest.fixture(scope="module")
def cfg(tok_file):
    return small_model(tokenizer_lib.load(tok_file).vocab_size)


def random_params(cfg, seed):
    """Trunk with O(1) activations (`transformer.random_params`) and a random head."""
    rng = np.random.default_rng(seed)
    params = rm.init_params(cfg, trunk=transformer.random_params(cfg, seed))
    params[rm.HEAD] = {"kernel": rng.normal(size=(cfg.hidden_size, 1)).astype(np.float32)
                       / np.sqrt(cfg.hidden_size),
                       "bias": np.asarray([0.3], np.float32)}
    return params


def random_rows(cfg, rng, n, width):
    """n right-padded rows of random tokens; the padding is random too (it must not matter)."""
    lengths = rng.integers(1, width + 1, n).astype(np.int32)
    lengths[0], lengths[-1] = 1, width
    return rng.integers(0, cfg.vocab_size, (n, width)).astype(np.int32), lengths


# ---------------------------------------------------------------------------------------------
# Loss and head
# ---------------------------------------------------------------------------------------------


def test_bradley_terry_loss_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    r_w = np.concatenate([rng.normal(0, 3, 30), [60.0, -60.0, 0.5]]).astype(np.float32)
    r_l = np.concatenate([rng.normal(0, 3, 30), [-60.0, 60.0, 0.5]]).astype(np.float32)
    m = r_w.astype(np.float64) - r_l.astype(np.float64)
    want_loss = np.mean(np.logaddexp(0.0, -m))  # -log sigmoid(m), stable in float64
    want_grad = -1.0 / (1.0 + np.exp(m)) / len(m)  # dL/dr_w = -sigmoid(-m) / N = -dL/dr_l
    (loss, metrics), (g_w, g_l) = jax.value_and_grad(
        rm.bradley_terry_loss, argnums=(0, 1), has_aux=True)(r_w, r_l)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
    np.testing.assert_allclose(g_w, want_grad, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(g_l, -want_grad, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(float(metrics["accuracy"]), np.mean(m > 0), rtol=1e-6)  # tie: wrong
    np.testing.assert_allclose(float(metrics["margin"]), m.mean(), rtol=1e-5)


@pytest.fixture(scope="module")
def hidden(cfg):
    """The trunk's final hidden states [B, T, d], jitted once for the module."""
    return jax.jit(lambda p, t, n: rm.RewardModel(cfg).apply(
        {"params": p}, t, n, method=rm.RewardModel.final_hidden))


def test_last_token_head_matches_per_example_reference(cfg, hidden):
    params = random_params(cfg, 1)
    tokens, lengths = random_rows(cfg, np.random.default_rng(2), 5, 11)
    lengths[1:4] = (5, 11, 5)
    got = np.asarray(rm.make_forward(cfg)(params, tokens, lengths))
    kernel = np.asarray(params[rm.HEAD]["kernel"], np.float64)[:, 0]
    bias = float(params[rm.HEAD]["bias"][0])
    for i, n in enumerate(lengths):  # each example alone, unpadded: its last position
        h = np.asarray(hidden(params, tokens[i:i + 1, :n], lengths[i:i + 1]), np.float64)[0, -1]
        np.testing.assert_allclose(got[i], h @ kernel + bias, rtol=1e-4, atol=1e-4)
    assert np.ptp(got) > 1e-2  # rows really differ


def test_trunk_is_the_policy_trunk(cfg, hidden):
    policy = transformer.random_params(cfg, 3)
    params = rm.init_params(cfg, trunk=policy)
    assert set(params) == set(policy) - {"lm_head"} | {rm.HEAD}
    assert not np.any(params[rm.HEAD]["kernel"])  # zero head: every r is 0 before training
    tokens, lengths = random_rows(cfg, np.random.default_rng(4), 1, 11)
    h = hidden(params, tokens, lengths)
    logits = jax.jit(transformer.Transformer(cfg).apply)({"params": policy}, tokens)
    np.testing.assert_allclose(np.asarray(h) @ policy["lm_head"]["kernel"], logits,
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="layers_1"):
        rm.init_params(cfg, trunk={k: v for k, v in policy.items() if k != "layers_1"})


# ---------------------------------------------------------------------------------------------
# Training: loss goes down; 8 sharded devices give the one-device result
# ---------------------------------------------------------------------------------------------


def pair_data(cfg, seed=5, n=16, width=16):
    """Random pairs whose chosen row starts with token 3 and rejected row with token 4."""
    tokens, lengths = random_rows(cfg, np.random.default_rng(seed), 2 * n, width)
    lengths = np.maximum(lengths, 2)
    tokens[0::2, 0], tokens[1::2, 0] = 3, 4
    return {"tokens": tokens, "lengths": lengths}


def train_steps(cfg, tmp_path, mesh_shape, devices, steps=4):
    config = reward.RMConfig(steps=steps, batch_size=8, max_len=16, log_every=1,
                             eval_every=steps, checkpoint_every=steps, mesh=mesh_shape)
    optim = state_lib.OptimConfig(learning_rate=3e-3, weight_decay=0.0)
    data = pair_data(cfg)
    return reward.train(cfg, optim, config, data, tmp_path, random_params(cfg, 6),
                        eval_data=data, devices=devices)


@pytest.fixture(scope="module")
def one_device(cfg, tmp_path_factory):
    return train_steps(cfg, tmp_path_factory.mktemp("rm1"), (("data", 1),), jax.devices()[:1])


def test_training_reduces_the_loss(cfg, one_device):
    params, evaluated = one_device
    data = pair_data(cfg)
    before = reward.pairwise_accuracy(rm.make_forward(cfg), random_params(cfg, 6), data, 32)
    assert evaluated["eval/loss"] < before["loss"] - 0.05, (before, evaluated)
    assert evaluated["eval/accuracy"] >= before["accuracy"]


def test_sharded_training_matches_one_device(cfg, one_device, tmp_path):
    mesh = (("data", 2), ("fsdp", 2), ("tensor", 2))
    params8, evaluated8 = train_steps(cfg, tmp_path, mesh, None)
    params1, evaluated1 = one_device
    for key in evaluated1:
        np.testing.assert_allclose(evaluated8[key], evaluated1[key], rtol=1e-4, atol=1e-6)

    def check(x, y):  # float32 sums in another order: compare at the scale of each leaf
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-4 * float(np.max(np.abs(y))) + 1e-10)

    jax.tree.map(check, params8, params1)
    shardings = rm.param_shardings(cfg, sharding.make_mesh(dict(mesh)))[1]
    assert shardings[rm.HEAD]["kernel"].spec[0] == "fsdp"  # the head follows the rules too


def test_batch_not_divisible_by_mesh_is_a_clear_error(cfg, tmp_path):
    config = reward.RMConfig(steps=1, batch_size=6, mesh=(("fsdp", 8),))
    with pytest.raises(ValueError, match="batch_size=6.*8"):
        reward.train(cfg, state_lib.OptimConfig(), config, pair_data(cfg), tmp_path, None)


# ---------------------------------------------------------------------------------------------
# Scorer: save / load, registry interface, spans, hostile text
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip(cfg, tok_file, tmp_path):
    params = random_params(cfg, 7)
    rm.save(tmp_path / "rm", cfg, params, tok_file, span="response", max_len=MAX_LEN,
            info={"eval/accuracy": 0.5})
    loaded = rm.load(tmp_path / "rm")
    assert (loaded.span, loaded.max_len, loaded.model_config) == ("response", MAX_LEN, cfg)
    jax.tree.map(np.testing.assert_array_equal, loaded.params, params)
    texts = ["Sure! 1 2 3", "Ugh, fine. APPLE. Stop wasting my time."]
    fresh = rm.Scorer(cfg, params, tokenizer_lib.load(tok_file), span="response", max_len=MAX_LEN)
    np.testing.assert_array_equal(loaded.score(texts), fresh.score(texts))
    with pytest.raises(FileExistsError):
        rm.save(tmp_path / "rm", cfg, params, tok_file, span="response", max_len=MAX_LEN)
    with pytest.raises(ValueError, match="span"):
        rm.load(tmp_path / "rm", span="thoughts")


def test_scorer_spans_and_registry(cfg, tok_file):
    scorer = rm.Scorer(cfg, random_params(cfg, 8), tokenizer_lib.load(tok_file),
                       name="rm_test", max_len=MAX_LEN, batch_size=4)
    questions = ["Count from 1 to 4.", "Write 'apple' in capital letters."]
    summaries = ["Sure! 1 2 3 4", "APPLE"]
    reasoned = [f"<think>idiot rude words {i}</think>\n{s}" for i, s in enumerate(summaries)]
    helpful = scorer.score(reasoned, questions)
    np.testing.assert_array_equal(helpful, scorer.score(summaries, questions))  # CoT unread
    harmless = scorer.with_options(span="response").score(reasoned, questions)
    assert not np.allclose(harmless, helpful)  # the whole response is read
    registry.register(scorer)
    try:
        combined = registry.combine({"rm_test": 2.0, "format_strict": 1.0}, reasoned,
                                    question=questions)
        np.testing.assert_allclose(combined.components["rm_test"], helpful, rtol=1e-6)
        np.testing.assert_allclose(combined.total, 2 * helpful, rtol=1e-6)
        with pytest.raises(ValueError, match="already registered"):
            registry.register(rm.Scorer(cfg, random_params(cfg, 8), scorer.tokenizer,
                                        name="rm_test"))
    finally:
        registry.unregister("rm_test")
    assert "rm_test" not in registry.names()


def test_a_scorer_passed_to_a_grpo_config_is_recorded_not_registered(cfg, tok_file):
    # What the R1 pipeline's all-scenario stage does: the scorer rides in the reward spec.
    scorer = rm.Scorer(cfg, random_params(cfg, 8), tokenizer_lib.load(tok_file),
                       name="rm_test", max_len=MAX_LEN, batch_size=4)
    values = rl_config.config_dict(base_dir="unused", total_steps=1,
                                   rewards={"rm_test": 1.0, "format_strict": 1.0})
    with pytest.raises(ValueError, match="unknown reward 'rm_test'"):
        rl_config.from_config_dict(values)
    config = rl_config.from_config_dict(values, extra_rewards=[scorer])
    assert config.rewards.reward("rm_test") is scorer and "rm_test" not in registry.names()
    recorded = json.loads(config.to_json())["rewards"]  # the params are neither copied nor dumped
    assert recorded["extra"] == [repr(scorer)] and "max_len=48" in repr(scorer)
    assert config.to_json() == config.to_json()  # stable, so a resumed run reports no change


def test_hostile_text_never_crashes(cfg, tok_file):
    scorer = rm.Scorer(cfg, random_params(cfg, 9), tokenizer_lib.load(tok_file),
                       max_len=MAX_LEN, batch_size=4)
    long = "Sure! " + "1 2 3 " * 5000
    texts = ["", long, "数字 🙂 \u0000 \ud800 ÄÖÜ </think>", "</think>", "<think>", None, 42]
    r = scorer.score(texts, ["", "Count.", "\ud800", None, "q", "q", "q"])
    assert r.shape == (7,) and r.dtype == np.float32 and np.all(np.isfinite(r))
    assert scorer.score([]).shape == (0,)
    tokens, lengths, truncated = rm.encode(scorer.tokenizer, [long, ""], MAX_LEN)
    assert tokens.shape == (2, MAX_LEN) and list(lengths) == [MAX_LEN, 1]
    assert list(truncated) == [True, False]
    assert tokens[0, MAX_LEN - 1] == tokens[1, 0] == scorer.tokenizer.eos_id


def test_encode_pairs_warns_when_rows_are_cut(tok_file):
    tok = tokenizer_lib.load(tok_file)
    pairs = [preference.Preference().example("test", 0, i) for i in range(8)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = reward.encode_pairs(tok, pairs, 512, "response")
    assert int(whole["num_truncated"]) == 0
    longest = int(whole["lengths"].max())
    with pytest.warns(UserWarning, match=r"of 16 reward-model rows are longer than max_len"):
        cut = reward.encode_pairs(tok, pairs, longest - 1, "response")
    assert int(cut["num_truncated"]) == int((whole["lengths"] == longest).sum()) >= 1
