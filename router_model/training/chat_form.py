"""A short chat-style form of an exam question: training text closer to what users type.

MMLU questions are written for an exam: long fact patterns, "Which of the following ...",
"Statement 1 | ... Statement 2 | ...", blanks to fill, and a fixed preamble on whole subjects
(every ``moral_scenarios`` and most history questions open with the same sentence). A router
trained only on that phrasing learns the phrasing. ``chat_form`` rewrites a question the way a
person would ask it in a chat box: the exam scaffolding removed, at most ``MAX_WORDS`` words,
lower-case start, often without the final punctuation. It is a fixed rule, not a model, so the
same question always gives the same form and training data stays reproducible.
"""

from __future__ import annotations

import hashlib
import re

MAX_WORDS = 20
MIN_SENTENCE_WORDS = 5

_PREAMBLES = (
    re.compile(r"^\s*this question refers to the following information\.?\s*", re.I),
    re.compile(r"^\s*(read|consider) the following[^.:]*[.:]\s*", re.I),
)
_MORAL = re.compile(r"^\s*for which of these two scenarios.*?scenario 1 \|\s*(.*?)\s*scenario 2 \|", re.I | re.S)
_STATEMENT = re.compile(r"^\s*statement 1\s*\|\s*(.*?)\s*statement 2\s*\|", re.I | re.S)
_WHICH = re.compile(r"\b(which|what) (one )?of the (following|given|these|options)( (choices|statements|options))?\b", re.I)
_BLANK = re.compile(r"_{2,}")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"“(])")
_SPACE = re.compile(r"\s+")


def _casual(text: str, key: str) -> str:
    """Lower-case start; about half the time without the closing punctuation (decided by a hash)."""
    text = text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text
    if hashlib.sha1(key.encode()).digest()[0] % 2:
        text = text.rstrip(" .?:;")
    return text


def chat_form(question: str) -> str:
    """The question as a short chat query (see the module docstring); never empty."""
    text = _SPACE.sub(" ", question).strip()
    for preamble in _PREAMBLES:
        text = preamble.sub("", text)
    if moral := _MORAL.match(text):
        text = f"is it wrong that {moral.group(1).rstrip(' .')}?"
    elif statement := _STATEMENT.match(text):
        text = f"is it true that {statement.group(1).rstrip(' .')}?"
    text = _BLANK.sub("what", _WHICH.sub("what", text))
    words = text.split()
    if len(words) > MAX_WORDS:
        first = _SENTENCE_END.split(text, maxsplit=1)[0].split()
        words = (first if len(first) >= MIN_SENTENCE_WORDS else words)[:MAX_WORDS]  # "Dr. Evil" is no sentence
        text = " ".join(words).rstrip(",;:")
    return _casual(text, question) or question.strip()
