"""Language-consistency reward (DeepSeek-R1 Sec. 2.3.3).

"Calculated as the proportion of target language words in the CoT." Definition used here, on the
reasoning (`templates.extract_reasoning`; 0.0 when there is none):

- a word is one CJK ideograph, kana or Hangul syllable (Chinese is not space-delimited, so each
  character counts as a word), or a maximal run of letters of any other script;
- LaTeX commands (`\\frac`), digits, punctuation and symbols are not words;
- the reward is (words in the target language) / (all words), 0.0 when there are no words.
  "en" counts Latin-script runs; "zh" counts Han ideographs.

Bounded like the other rewards: only the reasoning's first `MAX_CHARS` characters are read (the
regex costs ~0.7 s per MB, and 10 MB took 7-8 s inline). The cap is far above what a configured
generation length produces (32,768 tokens is ~130k characters of English), so a real chain of
thought is read whole; a longer one is judged on its opening.
"""

from __future__ import annotations

import re

from r1jax.data import templates

LANGUAGES = ("en", "zh")
MAX_CHARS = 1 << 18  # 262,144 characters: ~0.2 s at most per completion
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATEX = re.compile(r"\\[A-Za-z]+")
# One CJK character, or a run of letters that are not CJK ([^\W\d_] = any Unicode letter).
_WORD = re.compile(f"[{_CJK}]|(?:(?![{_CJK}])[^\\W\\d_])+")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]+")


def words(text: str) -> list[str]:
    """Splits text into words as defined in the module docstring."""
    return _WORD.findall(_LATEX.sub(" ", text))


def consistency(completion: str, language: str = "en") -> float:
    """Returns the fraction of chain-of-thought words in `language` ("en" or "zh")."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    reasoning = templates.extract_reasoning(completion)
    found = words(reasoning[:MAX_CHARS]) if reasoning else []
    if not found:
        return 0.0
    pattern = _LATIN if language == "en" else _HAN
    return sum(bool(pattern.fullmatch(w)) for w in found) / len(found)
