"""Prompt pipeline: determinism, exact resume, per-host partition, padding and overlong prompts."""

import itertools

import numpy as np
import pytest

from r1jax.data import pipeline, tasks
from r1jax.data import tokenizer as tokenizer_lib

N = 60


def template(question: str) -> str:
    return f"User: {question}\nAssistant: <think>"


@pytest.fixture(scope="module")
def source():
    return list(itertools.islice(tasks.get("countdown").examples("train", 0), N))


@pytest.fixture(scope="module")
def tok(source, tmp_path_factory):
    texts = [template(e["question"]) + e["worked_solution"] for e in source]
    return tokenizer_lib.train_sentencepiece(texts, 400, tmp_path_factory.mktemp("t") / "t.model")


def loader(source, tok, **overrides):
    kwargs = {
        k: overrides.pop(k)
        for k in ("start_step", "process_index", "process_count")
        if k in overrides
    }
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    format_prompt = overrides.pop("format_prompt", template)
    config = pipeline.PromptConfig(**{"batch_size": 8, "max_prompt_len": 128, **overrides})
    return pipeline.prompt_loader(source, tok, format_prompt, config, **kwargs)


def same(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a
    )


def test_batch_contents(source, tok):
    batch = next(loader(source, tok))
    assert batch["prompt_tokens"].dtype == np.int32 and batch["prompt_tokens"].shape[0] == 8
    assert batch["prompt_lengths"].shape == (8,) and not batch["prompt_truncated"].any()
    for i, idx in enumerate(batch["source_index"]):
        ex = source[idx]
        assert batch["prompt"][i] == template(ex["question"])
        assert batch["answer"][i] == ex["answer"] and batch["numbers"][i] == ex["numbers"]
        assert batch["target"][i] == ex["target"]
        assert tok.decode(batch["prompt_tokens"][i]) == batch["prompt"][i]


def test_deterministic_per_seed_and_epochs_are_permutations(source, tok):
    a = list(itertools.islice(loader(source, tok, seed=3), 14))
    b = list(itertools.islice(loader(source, tok, seed=3), 14))
    c = list(itertools.islice(loader(source, tok, seed=4), 14))
    assert all(same(x, y) for x, y in zip(a, b))
    assert not all(same(x, y) for x, y in zip(a, c))
    order = np.concatenate([x["source_index"] for x in a])  # 112 = one epoch of 60 + 52
    assert sorted(order[:N]) == list(range(N))
    assert list(order[N : 2 * N]) != list(order[: len(order) - N])  # reshuffled next epoch
    unshuffled = next(loader(source, tok, shuffle=False))
    assert unshuffled["source_index"].tolist() == list(range(8))


def test_resume_from_state_gives_the_exact_next_batch(source, tok):
    first = loader(source, tok, seed=1)
    for _ in range(9):
        next(first)
    state = first.get_state()
    expected = [next(first) for _ in range(3)]
    resumed = loader(source, tok, seed=1)
    resumed.set_state(state)
    assert state == {"step": 9}
    assert all(same(x, next(resumed)) for x in expected)
    started = loader(source, tok, seed=1, start_step=9)
    assert same(next(started), expected[0]) and same(started.batch(10), expected[1])


@pytest.mark.parametrize("num_epochs", [None, 2])
def test_hosts_partition_the_global_batch(source, tok, num_epochs):
    single = loader(source, tok, batch_size=12, num_epochs=num_epochs, seed=5)
    hosts = [
        loader(
            source,
            tok,
            batch_size=4,
            num_epochs=num_epochs,
            seed=5,
            process_index=h,
            process_count=3,
        )
        for h in range(3)
    ]
    if num_epochs:
        assert len(single) == len(hosts[0]) == len(hosts[2]) == 2 * N // 12
    for step in range(8):
        parts = [h.batch(step)["source_index"].tolist() for h in hosts]
        glob = single.batch(step)["source_index"].tolist()
        assert sorted(sum(parts, [])) == sorted(glob)
        assert parts[0] == glob[0::3] and parts[1] == glob[1::3]


def test_finite_epochs_stop(source, tok):
    batches = list(loader(source, tok, num_epochs=1, batch_size=16))
    assert len(batches) == N // 16
    seen = np.concatenate([b["source_index"] for b in batches])
    assert len(set(seen.tolist())) == len(seen)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_sides_and_bucket(source, tok, side):
    batch = next(loader(source, tok, pad_side=side, bucket=32, add_bos=True))
    tokens, lengths = batch["prompt_tokens"], batch["prompt_lengths"]
    width = tokens.shape[1]
    assert width % 32 == 0 and width - 32 < lengths.max() <= width
    for row, n in zip(tokens, lengths):
        real = row[:n] if side == "right" else row[width - n :]
        pad = row[n:] if side == "right" else row[: width - n]
        assert real[0] == tok.bos_id and (pad == tok.pad_id).all() and (real != tok.pad_id).all()


def test_overlong_prompts(source, tok):
    longest = max(len(tok.encode(template(e["question"]))) for e in source)
    with pytest.raises(ValueError, match="max_prompt_len"):
        list(loader(source, tok, max_prompt_len=longest - 1, num_epochs=1))
    limit = longest - 5
    batches = list(
        loader(
            source,
            tok,
            max_prompt_len=limit,
            overlong="truncate",
            num_epochs=1,
            shuffle=False,
            batch_size=N,
        )
    )
    batch = batches[0]
    assert batch["prompt_tokens"].shape[1] == limit
    for i, ex in enumerate(source):
        ids = tok.encode(template(ex["question"]))
        assert batch["prompt_truncated"][i] == (len(ids) > limit)
        assert batch["prompt_tokens"][i, : batch["prompt_lengths"][i]].tolist() == ids[-limit:]


def test_config_validation():
    with pytest.raises(ValueError, match="pad_side"):
        pipeline.PromptConfig(batch_size=2, pad_side="up")
    with pytest.raises(ValueError, match="overlong"):
        pipeline.PromptConfig(batch_size=2, overlong="drop")
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.PromptConfig(batch_size=0)


def test_generated_source_is_unlimited_deterministic_and_shardable(tok):
    task = tasks.get("arithmetic", max_digits=3)
    source = pipeline.generated_source(task, "test", seed=2)
    a = loader(source, tok, start_step=1000)
    b = loader(source, tok, start_step=1000)
    batch = next(a)
    assert same(batch, next(b))
    assert batch["source_index"].tolist() == list(range(8000, 8008))
    assert batch["question"][3] == task.example("test", 2, 8003)["question"]
    assert set(batch["split"]) == {"test"}
    hosts = [loader(source, tok, batch_size=4, process_index=h, process_count=2) for h in range(2)]
    single = loader(source, tok, batch_size=8)
    merged = sorted(
        hosts[0].batch(5)["source_index"].tolist() + hosts[1].batch(5)["source_index"].tolist()
    )
    assert merged == sorted(single.batch(5)["source_index"].tolist())


def test_r1_templates_tokenize_with_single_special_pieces(source, tok):
    from r1jax.data import templates

    chat = loader(
        source, tok, format_prompt=templates.get("r1_chat").format_prompt, max_prompt_len=512
    )
    batch = next(chat)
    assert (batch["prompt_tokens"][:, 0] == tok.bos_id).all()
    row = batch["prompt_tokens"][0, : batch["prompt_lengths"][0]].tolist()
    assert tok.id_of("<|User|>") in row and tok.id_of("<|Assistant|>") in row
    assert tok.decode(row) == batch["prompt"][0]
