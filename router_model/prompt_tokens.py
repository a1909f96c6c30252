"""The router's prompt as token ids: one fixed prefix, then the query, then the open answer turn.

Training and the in-process engine both build their inputs here, with llama.cpp's own tokenizer
(the GGUF's vocabulary), so the router sees in service exactly the tokens it was trained on. The
split is what makes prefix caching work: the prefix (the Octopus system prompt and the opening of
the user turn) is identical for every query, so its keys and values are computed once; each
decision only evaluates the query and a short suffix.

The query is tokenized as plain text (``special=False``): a query that spells ``<|im_end|>`` gets
the characters, never the control token. It is cut to ``max_query_tokens`` (the start of a query
says what it is about; the cap bounds a decision's cost).
"""

from __future__ import annotations

from octogate.router_model.protocol import ROUTER_SYSTEM_PROMPT, chatml_split

# ChatML, SmolLM2-Instruct's own template, split where the query goes.
PREFIX, SUFFIX = chatml_split(ROUTER_SYSTEM_PROMPT)
DEFAULT_MAX_QUERY_TOKENS = 128


class RouterPromptTokens:
    """``tokenize(bytes, add_bos, special)`` is llama-cpp-python's ``Llama.tokenize``.

    ``prefix_text`` and ``suffix_text`` default to the graph router's; a toolset's tokens are
    trained and served under a prompt of their own (``toolsets.py``)."""

    def __init__(self, tokenize, max_query_tokens: int = DEFAULT_MAX_QUERY_TOKENS, *,
                 prefix_text: str = PREFIX, suffix_text: str = SUFFIX):
        if max_query_tokens < 1:
            raise ValueError("max_query_tokens must be at least 1")
        self._tokenize = tokenize
        self.max_query_tokens = max_query_tokens
        self.prefix_text, self.suffix_text = prefix_text, suffix_text
        self.prefix: list[int] = tokenize(prefix_text.encode(), False, True)
        self.suffix: list[int] = tokenize(suffix_text.encode(), False, True)

    def query(self, text: str) -> list[int]:
        """The ids that follow the prefix for ``text``: the (capped) query, then the suffix."""
        ids = self._tokenize(text.encode("utf-8", "replace"), False, False)[: self.max_query_tokens]
        return ids + self.suffix
