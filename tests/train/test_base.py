"""train.base: a base directory never replaces a directory r1jax did not create; a directory
that is no model is named in seconds; a tokenizer larger than the model is refused at load."""

import json
import pathlib

import jax.numpy as jnp
import pytest
from conftest import small_model
from flax import traverse_util

from r1jax import ownership
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.models import moe, transformer
from r1jax.train import base


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    tokenizer_lib.train_sentencepiece([f"{i} + {i} = {2 * i}" for i in range(300)], 300, path)
    return path


def _save(directory, vocab, tok_file):
    model = small_model(vocab)
    return base.save_base(directory, model, transformer.random_params(model, 0), tok_file)


def test_save_base_refuses_an_unmarked_directory(tmp_path, tok_file):
    target = tmp_path / "user"
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    with pytest.raises(ownership.NotOwnedError, match="notes.txt"):
        _save(target, 320, tok_file)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user"]  # no temporary left behind


def test_save_base_marks_and_replaces_only_its_own_incomplete_save(tmp_path, tok_file):
    target = tmp_path / "base"
    target.mkdir()  # empty: nothing to lose
    _save(target, 320, tok_file)
    assert ownership.is_marked(target) and base.exists(target)
    (target / "DONE").unlink()  # an interrupted save of r1jax's own
    _save(target, 320, tok_file)
    assert base.exists(target)
    assert base.load_model(target)[0].vocab_size == 320


def test_check_model_dir_says_what_was_expected_and_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        base.check_model_dir(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="an empty directory"):
        base.check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="incomplete HF checkpoint: no model.safetensors"):
        base.check_model_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="Hugging Face checkpoint directory"):
        base.load_model(tmp_path)


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, tok_file):
    tok = tokenizer_lib.load(tok_file)
    directory = _save(tmp_path / "small", tok.vocab_size - 1, tok_file)
    with pytest.raises(ValueError, match=f"{tok.vocab_size} tokens but the model's vocabulary"):
        base.load_model(directory)
    config = json.loads((directory / "model_config.json").read_text())
    assert config["vocab_size"] == tok.vocab_size - 1


def test_cast_params_keeps_the_moe_bias_float32():
    model = small_model(64)
    params = base.cast_params(transformer.random_params(model, 0), "bfloat16")
    dtypes = {"/".join(k): v.dtype for k, v in traverse_util.flatten_dict(params).items()}
    biases = {k for k in dtypes if k.endswith(moe.BIAS)}
    assert biases and all(dtypes[k] == jnp.float32 for k in biases)
    assert all(dtypes[k] == jnp.bfloat16 for k in set(dtypes) - biases)
