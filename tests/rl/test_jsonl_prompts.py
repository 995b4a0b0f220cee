"""GRPO prompts from user JSONL files (the paper-scale presets train on math JSONL)."""

import json

import pytest

from r1jax.rl import config as rl_config
from r1jax.rl import trainer


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_jsonl_sources_and_errors(tmp_path):
    good = {"problem": "What is $1+1$?", "answer": "2"}
    train = _write(tmp_path / "train.jsonl", [good, {"problem": "3*3?", "solution": "\\boxed{9}"}])
    test = _write(tmp_path / "test.jsonl", [{"problem": "2+2?", "answer": "4"}])
    d = rl_config.DataConfig(train_jsonl=train, test_jsonl=test, jsonl_format="math")
    assert [e["answer"] for e in trainer._source(d, None, "train")] == ["2", "9"]
    assert [e["answer"] for e in trainer._source(d, None, "test")] == ["4"]

    bad = _write(tmp_path / "bad.jsonl", [good, "{not json", good])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        trainer._source(rl_config.DataConfig(train_jsonl=bad), None, "train")
    skipping = rl_config.DataConfig(train_jsonl=bad, jsonl_on_error="skip")
    assert len(trainer._source(skipping, None, "train")) == 2


def test_jsonl_config_validation():
    with pytest.raises(ValueError, match="jsonl_format"):
        rl_config.DataConfig(train_jsonl="x.jsonl", jsonl_format="csv")
    with pytest.raises(ValueError, match="test_jsonl"):
        rl_config.DataConfig(test_jsonl="x.jsonl")
