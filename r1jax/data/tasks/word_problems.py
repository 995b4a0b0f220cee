"""Templated word problems with integer answers, in English, Chinese or both.

Kinds: shopping (change from a bill), ages (sum of ages in k years), travel (distance over two
legs), reading (days left to finish a book), sharing (equal shares with a remainder). The
numbers come from one generator per kind; the text comes from `phrasebook`. A `scale` knob
widens the number ranges (harder arithmetic).

Language knob: "en", "zh", or "mixed". "mixed" draws the question's language and the worked
solution's language independently, so some examples switch language between question and
solution: a base model pretrained on them can mix languages, which the R1 language-consistency
reward then has something to correct. Fields: `kind`, `language` (of the question),
`solution_language`.
"""

from __future__ import annotations

import numpy as np

from r1jax.data.tasks import base, phrasebook

_BILLS = (5, 10, 20, 50, 100, 200, 500, 1000)


def _int(rng: np.random.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(rng.integers(low, high + 1))


def _shopping(rng, scale):
    n, p = _int(rng, 2, 6 * scale), _int(rng, 1, 20 * scale)
    cost = n * p
    bill = next((b for b in _BILLS if b >= cost), -(-cost // 1000) * 1000)
    if bill == cost:
        bill = next((b for b in _BILLS if b > cost), bill + 1000)
    return dict(n=n, p=p, cost=cost, bill=bill, answer=bill - cost)


def _ages(rng, scale):
    x, d, k = _int(rng, 3, 20 * scale), _int(rng, 1, 10 * scale), _int(rng, 1, 10 * scale)
    s = 2 * x + d + 2 * k
    return dict(d=d, k=k, k2=2 * k, s=s, two_x=2 * x, answer=x)


def _travel(rng, scale):
    v, t = 10 * _int(rng, 2, 12 * scale), _int(rng, 1, 3 * scale)
    w, u = 10 * _int(rng, 2, 12 * scale), _int(rng, 1, 3 * scale)
    return dict(v=v, t=t, w=w, u=u, d1=v * t, d2=w * u, answer=v * t + w * u)


def _reading(rng, scale):
    r, d, m = _int(rng, 5, 30 * scale), _int(rng, 1, 10 * scale), _int(rng, 1, 10 * scale)
    pages = r * (d + m)
    return dict(r=r, d=d, pages=pages, read=r * d, left=r * m, answer=m)


def _sharing(rng, scale):
    k, q = _int(rng, 2, 9 * scale), _int(rng, 1, 12 * scale)
    r = _int(rng, 0, k - 1)
    return dict(n=k * q + r, k=k, r=r, answer=q)


KINDS = {"shopping": _shopping, "ages": _ages, "travel": _travel, "reading": _reading,
         "sharing": _sharing}


def _pick_language(rng, language: str) -> str:
    if language == "mixed":
        return phrasebook.LANGUAGES[rng.integers(len(phrasebook.LANGUAGES))]
    return language


class WordProblems(base.Task):
    """Word problems with numeric answers.

    Args:
      kinds: which templates to draw from (default: all of `KINDS`).
      language: "en", "zh" or "mixed" (question and solution languages drawn independently).
      scale: >= 1, multiplies the number ranges.
    """

    name = "word_problems"

    def __init__(self, *, kinds=tuple(KINDS), language="en", scale=1, test_percent=10):
        super().__init__(test_percent=test_percent)
        kinds = tuple(kinds)
        if not kinds or set(kinds) - set(KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {sorted(KINDS)}, got {kinds}")
        if language not in phrasebook.LANGUAGES + ("mixed",):
            raise ValueError(f"language must be 'en', 'zh' or 'mixed', got {language!r}")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.kinds, self.language, self.scale = kinds, language, scale

    def knobs(self):
        return dict(super().knobs(), kinds=list(self.kinds), language=self.language,
                    scale=self.scale)

    def _generate(self, rng):
        kind = self.kinds[rng.integers(len(self.kinds))]
        values = KINDS[kind](rng, self.scale)
        q_lang, s_lang = _pick_language(rng, self.language), _pick_language(rng, self.language)
        i, j = rng.choice(len(phrasebook.NAMES["en"]), size=2, replace=False)
        item = int(rng.integers(len(phrasebook.ITEMS["en"])))

        def fill(template: str, lang: str) -> str:
            return template.format(**values, name=phrasebook.NAMES[lang][i],
                                   name2=phrasebook.NAMES[lang][j],
                                   item=phrasebook.ITEMS[lang][item])

        question, _ = phrasebook.TEXT[q_lang][kind]
        _, steps = phrasebook.TEXT[s_lang][kind]
        lines = [fill(s, s_lang) for s in steps] + [fill(phrasebook.ANSWER_LINE[s_lang], s_lang)]
        return {
            "key": f"{kind}:" + ",".join(f"{k}={v}" for k, v in sorted(values.items())),
            "question": fill(question, q_lang),
            "answer": str(values["answer"]),
            "kind": kind,
            "language": q_lang,
            "solution_language": s_lang,
            "worked_solution": "\n".join(lines),
        }
