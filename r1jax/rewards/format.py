"""Format rewards: is the output laid out as <think>reasoning</think> then the answer? (R1 Sec. 2.2.2).

"We employ a format reward model that enforces the model to put its thinking process between
'<think>' and '</think>' tags." Both functions score the whole assistant turn: for a template
that pre-fills `<think>` (r1_chat) pass `template.full_response(completion)`. With the R1-Zero
template the prompt ends at "Assistant:" and the model must write `<think>` itself; a completion
that starts inside the reasoning (no `<think>`) fails `strict`; `lenient` accepts it.

- `strict`: 1.0 iff the text is `\\s*<think>R</think>\\s*<answer>A</answer>\\s*` with exactly one
  of each tag, A non-empty, nothing after `</answer>`; else 0.0.
- `lenient`: in [0, 1]: 0.5 for one closed think block (the opening tag may be missing), 0.5 for
  an answer (an `<answer>` block or `\\boxed{}`) after it, minus 0.25 for every repeated tag and
  0.25 for text after the final `</answer>`.
"""

from __future__ import annotations

from r1jax.data import templates

_TAGS = (templates.THINK_OPEN, templates.THINK_CLOSE, templates.ANSWER_OPEN, templates.ANSWER_CLOSE)
PENALTY = 0.25


def strict(completion: str) -> float:
    """Returns 1.0 for exactly `<think>…</think> <answer>…</answer>`, else 0.0."""
    if not isinstance(completion, str) or any(completion.count(t) != 1 for t in _TAGS):
        return 0.0
    text = completion.strip()
    think_open, think_close, answer_open, answer_close = (text.find(t) for t in _TAGS)
    ordered = think_open == 0 and think_close < answer_open and text.endswith(_TAGS[3])
    between = text[think_close + len(_TAGS[1]) : answer_open]
    answer = text[answer_open + len(_TAGS[2]) : answer_close]
    return float(ordered and not between.strip() and bool(answer.strip()))


def lenient(completion: str) -> float:
    """Returns partial format credit in [0, 1] (see the module docstring)."""
    if not isinstance(completion, str):
        return 0.0
    counts = [completion.count(t) for t in _TAGS]
    close = completion.find(templates.THINK_CLOSE)
    opened = counts[0] == 0 or completion.find(templates.THINK_OPEN) < close
    score = 0.5 if close >= 0 and opened else 0.0
    if close >= 0 and templates.extract_answer(completion[close:]) is not None:
        score += 0.5
    score -= PENALTY * sum(max(0, c - 1) for c in counts)
    last = completion.rfind(templates.ANSWER_CLOSE)
    if last >= 0 and completion[last + len(templates.ANSWER_CLOSE) :].strip():
        score -= PENALTY
    return min(1.0, max(0.0, score))
