"""Templates: prompt structure (R1 paper Table 1) and answer / reasoning extraction."""

import dataclasses
import time

import pytest

from r1jax.data import templates


def test_r1_zero_prompt_structure():
    t = templates.get("r1_zero")
    prompt = t.format_prompt("  What is 2 + {x}?  ")
    assert prompt.startswith("A conversation between User and Assistant.")
    assert "<think> </think>" in prompt and "<answer> </answer>" in prompt
    assert prompt.endswith("User: What is 2 + {x}?\nAssistant:")
    assert t.stop_strings == ("</answer>",)
    assert t.full_response("<think>a</think>") == "<think>a</think>"


def test_r1_chat_prompt_structure():
    t = templates.get("r1_chat")
    prompt = t.format_prompt("Compute \\frac{1}{2}.")
    assert prompt.index("<|User|>") < prompt.index("\\frac{1}{2}") < prompt.index("<|Assistant|>")
    assert prompt.endswith("<|Assistant|><think>\n")
    assert t.full_response("x</think>y") == "<think>\nx</think>y"
    assert "<|end_of_sentence|>" in t.stop_strings


def test_templates_are_frozen_data_and_names_are_checked():
    t = templates.get("r1_zero")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "other"
    assert templates.names() == ("r1_chat", "r1_zero")
    with pytest.raises(ValueError, match="r1_zero"):
        templates.get("r2")


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>x</think><answer> 42 </answer>", "42"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),
        ("<answer>1</answer> then <answer>2", "1"),  # the last block is incomplete
        ("<answer>a<answer>b</answer>", "b"),
        ("<answer>1</answer> x </answer>", "1"),
        ("so \\boxed{3} no, \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{2}} and \\boxed{unclosed", "\\sqrt{2}"),
        ("<answer>\\boxed{7}</answer>", "\\boxed{7}"),
        ("<answer></answer>", ""),
        ("no answer here", None),
        ("</answer><answer>", None),
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert templates.extract_answer(completion) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think> step 1 </think><answer>1</answer>", "step 1"),
        ("step 1</think> summary", "step 1"),  # the prompt pre-filled <think>
        ("<think>a</think><think>b</think>", "a"),
        ("<think> unfinished", None),
        ("", None),
    ],
)
def test_extract_reasoning(completion, expected):
    assert templates.extract_reasoning(completion) == expected


def test_extraction_never_raises_and_is_linear():
    assert templates.extract_answer(None) is None
    start = time.perf_counter()
    assert templates.extract_answer("\\boxed{" * 150_000 + "1}") == "1"
    assert templates.extract_answer("\\boxed{" * 150_000) is None
    assert templates.extract_answer("<answer>" * 100_000 + "</answer>" * 100_000) == ""
    assert time.perf_counter() - start < 2.0
