"""The Octopus v4 router protocol: the prompt the router reads, the one line it writes, and its grammar.

The router is a small model fine-tuned so that its whole answer is a *functional token* naming a
node, optionally followed by the query restated for that node (Octopus v2's "function call with
parameters", Octopus v4's "reformat")::

    <nexa_4>('Solve x^2 = 9 for x.')<nexa_end>      # mode "select+reformat"
    <nexa_4>                                        # mode "select": one step, no argument

This module is the single definition of that text format. The same ``RouterGrammar`` produces the
constraint handed to the decoder (a regex for SGLang or outlines, GBNF for llama.cpp) and the
strict parser that reads the answer back, and ``format_router_output`` writes training targets, so
the three cannot drift apart.

Token choices come only from the graph: the grammar is an alternation of the graph's own
``<nexa_K>`` literals, so a constrained decoder cannot name a node that does not exist.

The argument is a single-quoted string that cannot break out of the call, whatever the query
held. Inside it:

- ``'`` is written ``\\'`` and ``\\`` is written ``\\\\``: the first unescaped quote ends the argument.
- Line breaks are escaped, never replaced, so the argument round-trips exactly and the whole call
  stays on one line: ``\\n``, ``\\r``, ``\\t``; U+2028 and U+2029 as ``\\u2028`` and ``\\u2029``.
- ``<`` is written ``\\x3c``, so the argument can never spell ``<nexa_end>``, another functional
  token, or a chat-template marker such as ``<|im_end|>``.
- Every other control character (C0, DEL, C1; the rest of what ``str.splitlines`` splits on) is
  written ``\\xHH``, two lowercase hex digits.

Each string has exactly one encoding (escapes are only used where required, hex is lowercase), and
the grammar admits exactly the encodings the formatter produces; the parser rejects anything else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from octogate.core.graph import GraphConfig

Mode = Literal["select", "select+reformat"]
MODES: tuple[Mode, ...] = ("select", "select+reformat")

END_TOKEN = "<nexa_end>"
_TOKEN_PREFIX = "<nexa_"
_OPEN = "('"
_CLOSE = "')" + END_TOKEN

# Kept short on purpose: it is the shared prefix of every routing request, so the serving engine
# keeps its KV cache, and it is what the router is fine-tuned on. Changing it means retraining.
ROUTER_SYSTEM_PROMPT = (
    "You are a router. Call the correct function for the user's query: write its functional token, "
    "then its parameter, the query restated for that function."
)


def router_messages(query: str) -> list[dict[str, str]]:
    """The router's chat: the fixed system prompt, then the query verbatim as the user turn."""
    return [{"role": "system", "content": ROUTER_SYSTEM_PROMPT}, {"role": "user", "content": query}]


def chatml_prompt(messages: list[dict[str, str]]) -> str:
    """``messages`` in ChatML (SmolLM2, Qwen2.5, ...), ending with the open assistant turn.

    The template the routers and toolsets trained here read (SmolLM2-Instruct's own).
    """
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def chatml_split(system_prompt: str) -> tuple[str, str]:
    """The ChatML prompt of ``system_prompt`` and one user turn, cut where the user's text goes."""
    cut = "\x00"  # never in a system prompt, so the one place it stands is the user's text
    prefix, suffix = chatml_prompt([{"role": "system", "content": system_prompt},
                                    {"role": "user", "content": cut}]).split(cut)
    return prefix, suffix


def functional_token(index: int) -> str:
    """``<nexa_{index}>``, the literal a node's token index stands for."""
    return f"{_TOKEN_PREFIX}{index}>"


# ------------------------------------------------------------------------------ argument escaping
# Characters that must not appear raw in an argument, with their one escape. Built once: the
# formatter is str.translate over this table, and the grammars below enumerate the same set.
_SHORT_ESCAPES = {"'": "\\'", "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HEX_ESCAPED = [c for c in range(0x00, 0x20) if chr(c) not in _SHORT_ESCAPES] + [0x3C] + list(range(0x7F, 0xA0))
_UNICODE_ESCAPED = [0x2028, 0x2029]
_ESCAPE_TABLE: dict[int, str] = {
    **{ord(c): e for c, e in _SHORT_ESCAPES.items()},
    **{c: f"\\x{c:02x}" for c in _HEX_ESCAPED},
    **{c: f"\\u{c:04x}" for c in _UNICODE_ESCAPED},
}
_UNESCAPE: dict[str, str] = {e[1:]: chr(c) for c, e in _ESCAPE_TABLE.items()}  # "x3c" -> "<", "n" -> "\n"


def escape_argument(argument: str) -> str:
    """The argument as it is written between the quotes."""
    return argument.translate(_ESCAPE_TABLE)


def format_router_output(token: int, argument: str | None = None) -> str:
    """The exact text a router answers with: ``<nexa_K>`` alone (argument None) or the full call."""
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise ValueError(f"a functional token index is a non-negative integer, not {token!r}")
    if argument is None:
        return functional_token(token)
    return f"{functional_token(token)}{_OPEN}{escape_argument(argument)}{_CLOSE}"


# ------------------------------------------------------------------------------ parsing
class RouterOutputError(ValueError):
    """The router's text is not exactly one call this graph accepts; the message says where and why."""


@dataclass(frozen=True)
class RouterDecision:
    token: int
    node: str
    argument: str | None  # None in "select" mode


def _excerpt(text: str, limit: int = 120) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _fail(text: str, pos: int, problem: str) -> RouterOutputError:
    return RouterOutputError(f"{problem} at character {pos} of router output {_excerpt(text)}")


_TOKEN_RE = re.compile(re.escape(_TOKEN_PREFIX) + r"[0-9]+>")


def parse_router_output(text: str, grammar: RouterGrammar, mode: Mode | None = None) -> RouterDecision:
    """Read one router answer, accepting exactly what ``grammar`` admits in ``mode``.

    With ``mode=None`` either form is accepted (the bare token gives ``argument=None``). Nothing is
    stripped or repaired: stray whitespace, a missing ``<nexa_end>`` or an unknown token is an
    error, because a decoder that was really constrained by this grammar never produces them.
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    m = _TOKEN_RE.match(text)
    if m is None:
        raise _fail(text, 0, "expected a functional token <nexa_K>")
    literal = m.group(0)
    index = grammar.literal_to_token.get(literal)  # by spelling: <nexa_04> is not <nexa_4>
    if index is None:
        known = ", ".join(grammar.literal_to_token)
        shown = literal if len(literal) <= 24 else literal[:20] + "...>"
        raise _fail(text, 0, f"unknown functional token {shown} (this graph has {known})")
    node = grammar.token_to_node[index]
    pos = m.end()
    if pos == len(text):
        if mode == "select+reformat":
            raise _fail(text, pos, f"expected ('argument'){END_TOKEN} after {literal}")
        return RouterDecision(index, node, None)
    if mode == "select":
        raise _fail(text, pos, f"unexpected text after {literal} (mode 'select' is the token alone)")
    if not text.startswith(_OPEN, pos):
        raise _fail(text, pos, f"expected ('argument'){END_TOKEN} after {literal}")
    argument, pos = _read_argument(text, pos + len(_OPEN))
    if not text.startswith(")", pos):
        raise _fail(text, pos, "expected ) after the closing quote")
    pos += 1
    if not text.startswith(END_TOKEN, pos):
        raise _fail(text, pos, f"missing {END_TOKEN}")
    pos += len(END_TOKEN)
    if pos != len(text):
        raise _fail(text, pos, f"unexpected text after {END_TOKEN}")
    return RouterDecision(index, node, argument)


def _read_argument(text: str, pos: int) -> tuple[str, int]:
    """Decode the argument starting just after its opening quote; return it and the index past its closing quote."""
    out: list[str] = []
    n = len(text)
    while pos < n:
        c = text[pos]
        if c == "'":
            return "".join(out), pos + 1
        if c == "\\":
            for width in (1, 3, 5):  # n / x3c / u2028
                char = _UNESCAPE.get(text[pos + 1:pos + 1 + width])
                if char is not None:
                    out.append(char)
                    pos += 1 + width
                    break
            else:
                raise _fail(text, pos, f"invalid escape {text[pos:pos + 6]!r} in the argument")
            continue
        if ord(c) in _ESCAPE_TABLE:
            raise _fail(text, pos, f"{c!r} must be escaped inside the argument")
        out.append(c)
        pos += 1
    raise _fail(text, pos, "the argument's closing quote is missing")


# ------------------------------------------------------------------------------ grammars
# Raw argument characters: anything but the escaped set, written with escapes only so that Python
# re, outlines, xgrammar and llguidance read it alike.
_RAW_CLASS = r"[^'\\<\x00-\x1f\x7f-\x9f\u2028\u2029]"
# The same set as positive ranges, for GBNF. llama.cpp checks a token that ends inside a UTF-8
# sequence against every character it could complete to, and under a negated class refuses it if
# any of them is excluded: with the class above, a lone 0xC2 byte token (which could become a C1
# control) or 0xE2 0x80 (which could become U+2028) would be refused, and with them characters
# like '¤' or '‰' that a tokenizer splits there. Positive ranges have no such false refusals.
_RAW_RANGES = r"[\x20-\x26\x28-\x3b\x3d-\x5b\x5d-\x7e\u00a0-\u2027\u202a-\U0010ffff]"
# The two hex digits after \x, for exactly the characters in _HEX_ESCAPED (the tests check every
# code point against the escape table, so this hand-written form cannot drift from it).
_HEX_REGEX = "0[0-8bcef]|1[0-9a-f]|3c|7f|[89][0-9a-f]"
_HEX_GBNF = '"0" [0-8bcef] | "1" [0-9a-f] | "3c" | "7f" | [89] [0-9a-f]'


class RouterGrammar:
    """The router's output language for one graph: its tokens, the regex and GBNF that constrain
    decoding to them, and the token -> node map the parser resolves against."""

    def __init__(self, nodes: Iterable[tuple[int, str]]):
        pairs = list(nodes)
        if not pairs:
            raise ValueError("a router grammar needs at least one (token, node) pair")
        for token, name in pairs:
            if isinstance(token, bool) or not isinstance(token, int) or token < 0:
                raise ValueError(f"token index must be a non-negative integer, not {token!r} (node {name!r})")
            if not isinstance(name, str) or not name:
                raise ValueError(f"node name must be a non-empty string, not {name!r} (token {token})")
        token_to_node: dict[int, str] = {}
        seen_names: set[str] = set()
        for token, name in sorted(pairs):
            if token in token_to_node:
                raise ValueError(f"token {token} is given to both {token_to_node[token]!r} and {name!r}")
            if name in seen_names:
                raise ValueError(f"node {name!r} has more than one token")
            token_to_node[token] = name
            seen_names.add(name)
        self.token_to_node: Mapping[int, str] = MappingProxyType(token_to_node)
        self.node_to_token: Mapping[str, int] = MappingProxyType({n: t for t, n in token_to_node.items()})
        self.literal_to_token: Mapping[str, int] = MappingProxyType({functional_token(t): t for t in token_to_node})
        self._literals = list(self.literal_to_token)

    @classmethod
    def from_graph(cls, graph: GraphConfig) -> RouterGrammar:
        """The grammar of a graph's routable nodes: those with a ``token``."""
        pairs = [(node.token, node.name) for node in graph.nodes if node.token is not None]
        if not pairs:
            raise ValueError("no node in this graph has a functional token (`token:`), so there is nothing to route to")
        return cls(pairs)

    def __repr__(self) -> str:
        return f"RouterGrammar({dict(self.token_to_node)!r})"

    @staticmethod
    def _check(mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")

    def frame_length(self, mode: Mode) -> int:
        """Characters of the longest answer *without* its argument: an upper bound on its tokens."""
        self._check(mode)
        longest = max(len(lit) for lit in self._literals)
        return longest if mode == "select" else longest + len(_OPEN) + len(_CLOSE)

    def regex(self, mode: Mode = "select+reformat") -> str:
        """The answer as a regular expression, for SGLang's ``regex`` sampling parameter or outlines.

        Only plain groups, literal alternation, character classes, ``*`` and ``\\``-escapes are used:
        the subset that Python ``re``, outlines, xgrammar and llguidance read alike.
        """
        self._check(mode)
        tokens = "(" + "|".join(self._literals) + ")"
        if mode == "select":
            return tokens
        escape = rf"\\['\\nrt]|\\x({_HEX_REGEX})|\\u202[89]"
        return rf"{tokens}\('({_RAW_CLASS}|{escape})*'\){END_TOKEN}"

    def gbnf(self, mode: Mode = "select+reformat") -> str:
        """The answer as a llama.cpp GBNF grammar (root rule ``root``)."""
        self._check(mode)
        token_rule = "token ::= " + " | ".join(f'"{lit}"' for lit in self._literals)
        if mode == "select":
            return f"root ::= token\n{token_rule}\n"
        return f'root ::= token "{_OPEN}" arg "{_CLOSE}"\n{token_rule}\n{_ARGUMENT_GBNF}'

    def argument_gbnf(self) -> str:
        """GBNF for what follows ``<nexa_K>('`` once the token is chosen: the argument, then ``')<nexa_end>``.

        For engines that pick the token by scoring the graph's tokens directly (one step) and only
        then generate the argument."""
        return f'root ::= arg "{_CLOSE}"\n{_ARGUMENT_GBNF}'


_ARGUMENT_GBNF = (
    "arg ::= char*\n"
    f"char ::= {_RAW_RANGES} | \"\\\\\" ['\\\\nrt] | \"\\\\x\" hex | \"\\\\u202\" [89]\n"
    f"hex ::= {_HEX_GBNF}\n"
)
