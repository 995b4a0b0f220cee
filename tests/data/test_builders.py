"""tfds builders: array_record written and read back without TensorFlow; nothing clobbered."""

import itertools
import json
import sys

import pytest
import tensorflow_datasets as tfds

from r1jax.data import pipeline, tasks, tfds_builders


def files_of(builder):
    return {p.name: p.read_bytes() for p in builder.data_path.iterdir()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def countdown(data_dir):
    return tfds_builders.prepare_generated("countdown", data_dir, train_size=40, test_size=10,
                                           seed=1, max_numbers=3)


def test_generated_round_trip_with_data_source(countdown, data_dir):
    assert "tensorflow" not in sys.modules
    assert any(p.name.endswith(".array_record-00000-of-00001")
               for p in countdown.data_path.iterdir())
    name = f"{countdown.name}/{countdown.builder_config.name}"
    source = tfds.data_source(name, data_dir=str(data_dir))
    assert len(source["train"]) == 40 and len(source["test"]) == 10
    train = [tfds_builders.decode(r) for r in source["train"]]
    test = tfds_builders.examples(countdown, "test")[:]
    expected = list(itertools.islice(
        tasks.get("countdown", max_numbers=3).examples("train", 1), 200))
    expected_keys = list(dict.fromkeys(e["key"] for e in expected))[:40]
    assert sorted(e["key"] for e in train) == sorted(expected_keys)
    by_key = {e["key"]: e for e in expected}
    for ex in train:
        assert ex == by_key[ex["key"]]  # every field, `numbers` list and `target` int included
        assert isinstance(ex["target"], int) and all(isinstance(n, int) for n in ex["numbers"])
    assert {e["split"] for e in test} == {"test"}
    assert not {e["key"] for e in train} & {e["key"] for e in test}
    assert "tensorflow" not in sys.modules


def test_prepare_again_reuses_and_new_request_gets_new_directory(countdown, data_dir):
    before = files_of(countdown)
    again = tfds_builders.prepare_generated("countdown", data_dir, train_size=40, test_size=10,
                                            seed=1, max_numbers=3)
    assert again.data_path == countdown.data_path and files_of(again) == before
    other = tfds_builders.prepare_generated("countdown", data_dir, train_size=40, test_size=10,
                                            seed=2, max_numbers=3)
    assert other.data_path != countdown.data_path
    assert files_of(countdown) == before
    assert tfds_builders.examples(other, "train")[0] != tfds_builders.examples(countdown,
                                                                               "train")[0]


def test_too_small_problem_space_is_an_error(data_dir):
    with pytest.raises(ValueError, match="distinct"):
        tfds_builders.prepare_generated("arithmetic", data_dir, train_size=100, test_size=5,
                                        min_digits=1, max_digits=1, ops="+")


def test_jsonl_builder(tmp_path, data_dir):
    def write(path, n, offset=0):
        rows = [{"question": f"q{i}", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
                for i in range(offset, offset + n)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(tmp_path / "train.jsonl", 5)
    write(tmp_path / "test.jsonl", 2, offset=100)
    files = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    builder = tfds_builders.prepare_jsonl(files, "gsm8k", data_dir)
    train = sorted(tfds_builders.examples(builder, "train"), key=lambda e: e["key"])
    assert [e["answer"] for e in train] == ["1", "2", "3", "4", "5"]
    assert train[0]["worked_solution"] == "0 + 1 = 1\nThe answer is 1"
    assert {e["split"] for e in tfds_builders.examples(builder, "test")} == {"test"}
    before = files_of(builder)
    write(tmp_path / "train.jsonl", 6)  # an edited file makes a new dataset beside the old one
    edited = tfds_builders.prepare_jsonl(files, "gsm8k", data_dir)
    assert edited.data_path != builder.data_path and files_of(builder) == before
    assert len(tfds_builders.examples(edited, "train")) == 6


def test_pipeline_reads_a_tfds_split(countdown, tmp_path):
    from r1jax.data import tokenizer as tokenizer_lib

    source = tfds_builders.examples(countdown, "train")
    tok = tokenizer_lib.train_sentencepiece([e["question"] for e in source], 400,
                                            tmp_path / "t.model")
    config = pipeline.PromptConfig(batch_size=8, max_prompt_len=256, num_epochs=1)
    batches = list(pipeline.prompt_loader(source, tok, str, config, process_index=0,
                                          process_count=1))
    assert len(batches) == 5
    assert sorted(sum((b["key"] for b in batches), [])) == sorted(e["key"] for e in source)
