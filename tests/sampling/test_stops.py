"""Stop sequences: table layout, device suffix matching, tokenizer-derived sequences, exact
host-side string truncation."""

import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.data import templates
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.sampling import stops


def test_table_is_right_aligned_with_wildcards():
    table = stops.stop_table([(5,), (1, 2, 3)])
    np.testing.assert_array_equal(table, [[-1, -1, 5], [1, 2, 3]])
    assert stops.stop_table([]).shape == (0, 1)
    with pytest.raises(ValueError, match=r"stop_token_sequences\[1\] is empty"):
        stops.stop_table([(1,), ()])
    with pytest.raises(ValueError, match="negative"):
        stops.stop_table([(1, -3)])


def test_matches_only_complete_suffixes_of_generated_tokens():
    table = stops.stop_table([(7,), (1, 2, 3)])
    recent = jnp.full((4, 3), stops.WILDCARD, jnp.int32)
    rows = [[9, 1, 2], [1, 2, 3], [4, 4, 7], [2, 3, 1]]
    for step in range(3):
        recent = stops.push(recent, jnp.asarray([r[step] for r in rows]))
    np.testing.assert_array_equal(recent, rows)
    np.testing.assert_array_equal(stops.matches(recent, table), [False, True, True, False])
    # Fewer generated tokens than the longest sequence: the window's unfilled slots never
    # match a real id, so (1, 2, 3) cannot complete with prompt tokens.
    short = stops.push(stops.push(jnp.full((1, 3), stops.WILDCARD, jnp.int32),
                                  jnp.asarray([2])), jnp.asarray([3]))
    assert not bool(stops.matches(short, table)[0])
    assert not stops.matches(recent, stops.stop_table([])).any()


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
    texts = ["<think> 2 + 3 = 5 </think> <answer> 5 </answer>", "answer the question"] * 20
    return tokenizer_lib.train_sentencepiece(texts, 320, tmp_path_factory.mktemp("sp") / "t.model")


def test_stop_token_sequences_from_tokenizer(sp_tokenizer):
    stop_strings = templates.get("r1_zero").stop_strings + ("answer>",)
    seqs = stops.stop_token_sequences(sp_tokenizer, stop_strings)
    assert (sp_tokenizer.id_of("</answer>"),) in seqs
    assert tuple(sp_tokenizer.encode("answer>")) in seqs
    assert len(seqs) == len(set(seqs))
    for seq in seqs:
        assert any(sp_tokenizer.decode(seq).endswith(s) for s in stop_strings)
    with pytest.raises(ValueError, match="non-empty"):
        stops.stop_token_sequences(sp_tokenizer, [""])


def test_truncate_at_stop_strings_is_inclusive_and_earliest():
    texts = ["<think>a</think><answer>4</answer> junk </answer>", "no stop here",
             "x<|User|>y<|end_of_sentence|>"]
    cut, found = stops.truncate_at_stop_strings(
        texts, ["</answer>", "<|end_of_sentence|>", "<|User|>"])
    assert cut == ["<think>a</think><answer>4</answer>", "no stop here", "x<|User|>"]
    assert found == [True, False, True]


def test_stop_sequences_cover_spellings_after_a_separator(tmp_path):
    """With the tags as plain text (the toy base model's tokenizer), " </answer>" is spelled
    with a merged " </" piece; the table must still stop a completion written that way."""
    texts = ["The answer is 5 </work> <res> 5 </res> x </y> answer the question"] * 40
    tok = tokenizer_lib.train_sentencepiece(
        texts, 300, tmp_path / "t.model", special_pieces=(tokenizer_lib.BOS, tokenizer_lib.EOS))
    with pytest.raises(KeyError):
        tok.id_of("</answer>")
    spelled = tok.encode("42 </answer>")
    assert tuple(spelled[-len(tok.encode("</answer>")):]) != tuple(tok.encode("</answer>"))
    table = stops.stop_table(stops.stop_token_sequences(tok, ["</answer>"]))
    recent = jnp.full((1, table.shape[1]), stops.WILDCARD, jnp.int32)
    for token in spelled:
        recent = stops.push(recent, jnp.asarray([token]))
    assert bool(stops.matches(recent, table)[0])
    with pytest.raises(ValueError, match="must include"):
        tokenizer_lib.train_sentencepiece(texts, 300, tmp_path / "u.model", special_pieces=())
