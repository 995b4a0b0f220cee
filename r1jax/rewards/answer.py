"""Which part of a completion the accuracy rewards read its final answer from.

Decision (issue 19): an answer that appears only inside the reasoning does not earn accuracy.
DeepSeek-R1's outputs are `<think> reasoning </think> <answer> answer </answer>` (Sec. 2.2.1)
and the rule-based accuracy reward checks "the final answer in a specified format" (Sec.
2.2.2); a `\\boxed{}` or `<answer>` written mid-reasoning is a step of the search, not the
answer. Crediting it would reward a completion that never commits to an answer (and so scores 0
for format) as if it had. By default the think blocks are cut out before the answer is read:

- every `<think> ... </think>` span is removed;
- text before a `</think>` with no `<think>` before it is reasoning too (templates such as
  r1_chat pre-fill `<think>`, so the completion starts inside it);
- an unclosed `<think>` runs to the end of the completion.

Text without think tags is read whole. The reward option `answer_in_think=True` (math, numeric,
countdown, accuracy) restores the old behaviour of reading the whole completion, e.g. to grade a
base model that answers in its reasoning.
"""

from __future__ import annotations

from r1jax.data import templates


def outside_think(completion: str) -> str:
    """The completion with its reasoning (think blocks, see the module docstring) removed.

    One forward pass over the tags, so adversarial input (thousands of tags) stays linear.
    """
    open_tag, close_tag = templates.THINK_OPEN, templates.THINK_CLOSE
    pieces, pos = [], 0
    next_open = completion.find(open_tag)
    while True:
        close = completion.find(close_tag, pos)
        if close < 0:  # no more reasoning ends: keep the rest, up to an unclosed <think>
            pieces.append(completion[pos:next_open] if next_open >= 0 else completion[pos:])
            return "".join(pieces)
        if 0 <= next_open < close:  # text, then a think block: keep the text
            pieces.append(completion[pos:next_open])
        # else a </think> with no <think> since pos: everything since pos was reasoning
        pos = close + len(close_tag)
        if 0 <= next_open < pos:
            next_open = completion.find(open_tag, pos)


def final_answer(completion: str, *, answer_in_think: bool = False) -> str | None:
    """The completion's final answer (`templates.extract_answer`), read outside the reasoning
    unless `answer_in_think`; None if there is none."""
    if not isinstance(completion, str):
        return None
    return templates.extract_answer(completion if answer_in_think else outside_think(completion))
