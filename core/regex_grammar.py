"""A regular expression as a llama.cpp GBNF rule for a JSON string whose text matches it in full.

A custom tool whose ``format`` is a grammar of syntax ``regex`` has its ``input`` decoded under
that regex. The model writes the input inside a JSON string (``{"name": ..., "input": "..."}``),
so each character the regex allows is written as JSON writes it: plain, or escaped (``\\"``,
``\\\\``, ``\\n``, ``\\u0001``...). llama.cpp's own JSON-schema converter takes ``pattern`` too, but
its regex subset is small (no ``\\d``, and ``(-\\d{4})`` repeats the wrong thing), so the regex is
parsed here with Python's own parser (``re._parser``) and written out node by node.

Supported: literals, ``.``, classes (ranges, negation, ``\\d \\w \\s`` and their negations),
groups (capturing, non-capturing, atomic), alternation, every repeat (greedy, lazy, possessive;
counts past ``LOOSE_COUNT`` are loosened to "at least", the full match being checked after
decoding anyway), ``^`` at the start and ``$`` at the end. Not supported (``RegexNotEnforceable``):
lookarounds, backreferences, conditionals, word boundaries, anchors elsewhere, flags
(``(?i)``...). Python's ``\\d``, ``\\w`` and ``\\s`` match non-ASCII digits, letters and spaces too;
the grammar offers their ASCII members (a subset: whatever is decoded still matches).
"""

from __future__ import annotations

import re
from re import _constants as c  # type: ignore[attr-defined]
from re import _parser as sre  # type: ignore[attr-defined]
from typing import Any

LOOSE_COUNT = 256
_MAX_CHAR = 0x10FFFF
_DIGIT = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE = [(0x09, 0x0D), (0x20, 0x20)]
_SHORT_ESCAPES = {0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t", 0x22: '"', 0x5C: "\\"}


class RegexNotEnforceable(ValueError):
    """The regex uses something a grammar cannot express (the message says what)."""


def json_string_rule(pattern: str) -> str:
    """A GBNF rule body: a JSON string (quotes included, then optional space) whose text matches
    ``pattern`` in full."""
    try:
        parsed = sre.parse(pattern)
    except re.error as exc:
        raise RegexNotEnforceable(f"not a regular expression ({exc})") from None
    if parsed.state.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE):
        raise RegexNotEnforceable("inline flags such as (?i) are not supported")
    items = list(parsed)
    if items and items[0][0] is c.AT and items[0][1] in (c.AT_BEGINNING, c.AT_BEGINNING_STRING):
        items = items[1:]
    if items and items[-1][0] is c.AT and items[-1][1] in (c.AT_END, c.AT_END_STRING):
        items = items[:-1]
    body = _sequence(items)
    return f'"\\"" {body} "\\"" space' if body else '"\\"" "\\"" space'


def _sequence(items: list[tuple[Any, Any]]) -> str:
    return " ".join(part for part in (_node(op, av) for op, av in items) if part)


def _node(op: Any, av: Any) -> str:
    if op is c.LITERAL:
        return _charset([(av, av)], negated=False)
    if op is c.NOT_LITERAL:
        return _charset([(av, av)], negated=True)
    if op is c.ANY:
        return _charset([(0x0A, 0x0A)], negated=True)
    if op is c.IN:
        return _in(av)
    if op is c.BRANCH:
        return "(" + " | ".join(_sequence(list(seq)) or '""' for seq in av[1]) + ")"
    if op is c.SUBPATTERN:
        _group, add_flags, del_flags, seq = av
        if add_flags or del_flags:
            raise RegexNotEnforceable("inline flags such as (?i:...) are not supported")
        return "(" + (_sequence(list(seq)) or '""') + ")"
    if op is c.ATOMIC_GROUP:
        return "(" + (_sequence(list(av)) or '""') + ")"
    if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
        low, high, seq = av
        inner = "(" + (_sequence(list(seq)) or '""') + ")"
        if high is c.MAXREPEAT or high > LOOSE_COUNT:
            low = min(low, LOOSE_COUNT)
            return f"{inner}*" if low == 0 else f"{inner}+" if low == 1 else f"{inner}{{{low},}}"
        if (low, high) == (0, 1):
            return f"{inner}?"
        return f"{inner}{{{low}}}" if low == high else f"{inner}{{{low},{high}}}"
    if op is c.AT:
        raise RegexNotEnforceable("anchors and word boundaries are only supported as ^ at the start and $ at the end")
    if op in (c.ASSERT, c.ASSERT_NOT):
        raise RegexNotEnforceable("lookarounds are not supported")
    if op in (c.GROUPREF, c.GROUPREF_EXISTS):
        raise RegexNotEnforceable("backreferences and conditionals are not supported")
    raise RegexNotEnforceable(f"{str(op).lower()} is not supported")


def _in(items: list[tuple[Any, Any]]) -> str:
    negated = False
    ranges: list[tuple[int, int]] = []
    for op, av in items:
        if op is c.NEGATE:
            negated = True
        elif op is c.LITERAL:
            ranges.append((av, av))
        elif op is c.RANGE:
            ranges.append(av)
        elif op is c.CATEGORY:
            ranges += _category(av)
        else:
            raise RegexNotEnforceable(f"{str(op).lower()} inside a character class is not supported")
    return _charset(ranges, negated)


def _category(cat: Any) -> list[tuple[int, int]]:
    table = {c.CATEGORY_DIGIT: _DIGIT, c.CATEGORY_WORD: _WORD, c.CATEGORY_SPACE: _SPACE}
    if cat in table:
        return table[cat]
    negations = {c.CATEGORY_NOT_DIGIT: _DIGIT, c.CATEGORY_NOT_WORD: _WORD, c.CATEGORY_NOT_SPACE: _SPACE}
    if cat in negations:
        return _complement(negations[cat])
    raise RegexNotEnforceable(f"{str(cat).lower()} is not supported")


def _normalised(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, start = [], 0
    for lo, hi in _normalised(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX_CHAR:
        out.append((start, _MAX_CHAR))
    return out


def _special(ch: int) -> bool:
    """Characters a JSON string cannot hold as they are."""
    return ch < 0x20 or ch in (0x22, 0x5C)


def _charset(ranges: list[tuple[int, int]], negated: bool) -> str:
    """One character of the set, as JSON writes it: a GBNF char class for the plain ones, a literal
    escape for each quote, backslash or control character in the set."""
    allowed = _complement(ranges) if negated else _normalised(ranges)
    plain: list[tuple[int, int]] = []
    specials: list[int] = []
    for lo, hi in allowed:
        ch = lo
        while ch <= hi:
            if _special(ch):
                specials.append(ch)
                ch += 1
                continue
            end = ch
            while end + 1 <= hi and not _special(end + 1):
                end += 1
            plain.append((ch, end))
            ch = end + 1
    alternatives = []
    if plain:
        alternatives.append("[" + "".join(_class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}"
                                          for lo, hi in plain) + "]")
    for ch in specials:
        escape = _SHORT_ESCAPES.get(ch)
        text = "\\" + escape if escape else f"\\u{ch:04x}"
        alternatives.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    if not alternatives:
        raise RegexNotEnforceable("a character class that matches nothing")
    return alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(alternatives) + ")"


def _class_char(ch: int) -> str:
    return f"\\x{ch:02X}" if ch < 0x100 else f"\\u{ch:04X}" if ch < 0x10000 else f"\\U{ch:08X}"
