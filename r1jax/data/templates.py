"""Prompt templates and answer extraction for R1-style reasoning (DeepSeek-R1, Sec. 2.2.1, Table 1).

Templates are data: a frozen `Template` picked by name with `get(name)`.

- ``r1_zero``: the R1-Zero template (Table 1). A plain-text conversation between User and
    Assistant; the Assistant is told to think first inside ``<think> </think>`` and answer inside
    ``<answer> </answer>``; the prompt ends with ``Assistant:``. The wording here is our own; the
    structure (conversation framing, think-then-answer instruction, tag example, question, the
    ``Assistant:`` cue) follows the paper. The model writes the opening ``<think>`` itself, so
    `response_prefix` is empty.
- ``r1_chat``: the released DeepSeek-R1 chat format, ``<|User|>question<|Assistant|>``, with the
    output ``<think>reasoning</think>`` followed by a summary whose final answer is in ``\\boxed{}``
    or an ``<answer>`` block. Departure from the paper: ASCII ``<|User|>`` markers instead of the
    full-width ``<｜User｜>`` pieces of the DeepSeek tokenizer, so a locally trained SentencePiece
    model can keep them as single user-defined symbols. Like the released template, the prompt
    pre-fills ``<think>\\n`` (DeepSeek's usage notes force the model to start with a thought), so
    `response_prefix` is ``"<think>\\n"``.

Rewards score the whole assistant turn: callers pass `template.full_response(completion)`
(`response_prefix + completion`) to format rewards, so both templates are judged alike.
"""

from __future__ import annotations

import dataclasses
import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_BOXED = "\\boxed{"
_BRACES = re.compile(r"\\boxed\{|[{}]")


@dataclasses.dataclass(frozen=True)
class Template:
    """A prompt format.

    Attributes:
        name: registry name.
        prompt: text with one ``{question}`` placeholder (filled by ``str.replace``, so LaTeX
            braces elsewhere are safe).
        stop_strings: generation stops after any of these (inclusive).
        response_prefix: text the prompt already pre-fills for the assistant; prepend it to a
            completion before scoring its format.
    """

    name: str
    prompt: str
    stop_strings: tuple[str, ...]
    response_prefix: str = ""

    def format_prompt(self, question: str) -> str:
        """Returns the prompt for one question (inserted with surrounding whitespace stripped)."""
        return self.prompt.replace("{question}", question.strip())

    def full_response(self, completion: str) -> str:
        """Returns the assistant turn as the reward functions see it."""
        return self.response_prefix + completion


_R1_ZERO = (
    "A conversation between User and Assistant. The User poses a question and the Assistant "
    "solves it. The Assistant first reasons about the problem in its mind, then gives the User "
    "the answer. The reasoning is enclosed in <think> </think> tags and the answer in "
    "<answer> </answer> tags, i.e. <think> reasoning here </think> <answer> answer here "
    "</answer>.\nUser: {question}\nAssistant:"
)

_R1_CHAT = (
    "<|begin_of_sentence|><|User|>{question}\nPlease reason step by step, and put your final "
    "answer within \\boxed{}.<|Assistant|><think>\n"
)

_TEMPLATES: dict[str, Template] = {
    "r1_zero": Template(name="r1_zero", prompt=_R1_ZERO, stop_strings=(ANSWER_CLOSE,)),
    "r1_chat": Template(
        name="r1_chat",
        prompt=_R1_CHAT,
        stop_strings=("<|end_of_sentence|>", "<|User|>"),
        response_prefix="<think>\n",
    ),
}


def names() -> tuple[str, ...]:
    """Returns the registered template names."""
    return tuple(sorted(_TEMPLATES))


def get(name: str) -> Template:
    """Returns the template called `name`; raises ValueError naming the choices otherwise."""
    try:
        return _TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}; choose one of {names()}") from None


def extract_answer(completion: str) -> str | None:
    """Returns the final answer in a completion, or None.

    The content (stripped) of the last complete ``<answer>...</answer>`` block; failing that,
    the content of the last ``\\boxed{...}`` with balanced braces. Linear time; never raises.
    """
    if not isinstance(completion, str):
        return None
    block = _last_block(completion, ANSWER_OPEN, ANSWER_CLOSE)
    if block is not None:
        return block.strip()
    return last_boxed(completion)


def extract_reasoning(completion: str) -> str | None:
    """Returns the chain of thought (stripped), or None if there is no closed think block.

    The text between the first ``<think>`` and the first ``</think>`` after it. If ``</think>``
    comes with no ``<think>`` before it (the prompt pre-filled the tag), the text before it.
    """
    if not isinstance(completion, str):
        return None
    end = completion.find(THINK_CLOSE)
    if end < 0:
        return None
    start = completion.find(THINK_OPEN, 0, end)
    start = 0 if start < 0 else start + len(THINK_OPEN)
    return completion[start:end].strip()


def last_boxed(text: str) -> str | None:
    """Returns the content (stripped) of the last closed ``\\boxed{...}``, or None.

    "Last" means the latest opening; braces nest. One pass over the braces, so adversarial input
    (thousands of unclosed ``\\boxed{``) stays linear.
    """
    best = None
    stack: list[int] = []  # content start for a \boxed{ opening, -1 for a plain brace
    for m in _BRACES.finditer(text):
        token = m.group()
        if token == "}":
            if stack:
                start = stack.pop()
                if start >= 0 and (best is None or start > best[0]):
                    best = (start, m.start())
        else:
            stack.append(m.end() if token == _BOXED else -1)
    return None if best is None else text[best[0] : best[1]].strip()


def _last_block(text: str, open_tag: str, close_tag: str) -> str | None:
    """Returns the content of the last open_tag whose close_tag follows it (non-greedy)."""
    start = text.rfind(open_tag, 0, max(text.rfind(close_tag), 0))
    if start < 0:
        return None
    start += len(open_tag)
    return text[start : text.find(close_tag, start)]
