"""Reading chat messages as every layer needs them: a message's content as text, and where the
leading system messages (the persona's, the client's) end."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

SYSTEM_ROLES = ("system", "developer")


def content_text(content: Any, sep: str = "", on_other: Callable[[int, dict[str, Any]], None] | None = None) -> str:
    """A message's ``content`` as text: a string as it is, the ``text`` parts of a list joined by ``sep``,
    ``""`` for none. ``on_other(i, part)`` is called for each part that is not text (it may raise:
    a model that reads text only refuses images); without it such parts are skipped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for i, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") == "text":
            texts.append(part.get("text", ""))
        elif on_other is not None:
            on_other(i, part)
    return sep.join(texts)


def leading_system(messages: Sequence[dict[str, Any]]) -> int:
    """How many messages at the start are system (or developer) messages."""
    lead = 0
    while lead < len(messages) and messages[lead].get("role") in SYSTEM_ROLES:
        lead += 1
    return lead
