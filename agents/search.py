"""Search backends for ``[search]`` steps: a local full-text index, or a SearXNG instance.

``local``: every ``.txt`` file (the first line is its title) and every ``.jsonl`` line
(``{"title", "text"}``) of a folder, indexed in an in-memory SQLite FTS5 table (Python ships
SQLite) at start-up. A query's words are OR-ed (stop words dropped) and ranked with BM25, the
title weighted twice.

``searxng``: ``GET {url}/search?q=...&format=json`` (SearXNG's JSON API; the instance must have
``json`` in ``search.formats``); each result's ``title`` and ``content``.

Either way the step's output is the top ``results`` hits as ``title: text`` lines, cut to
``max_chars`` characters. A failure is returned as the step's text (``Error: ...``).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import orjson

from octogate.core.agent_config import SearchConfig

DEFAULT_DOCS = Path(__file__).resolve().parent / "docs"

_STOP = frozenset("""a an and are as at be by did do does for from how in is it its of on or that the this to
was were what when where which who whom whose why will with find search look up many much""".split())
_WORD = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class Hit:
    title: str
    text: str


def render(hits: list[Hit], max_chars: int) -> str:
    if not hits:
        return "No results."
    text = "\n".join(f"{h.title}: {h.text}" for h in hits)
    return text if len(text) <= max_chars else text[:max_chars].rstrip() + " ..."


def fts_query(query: str) -> str | None:
    words = [w for w in _WORD.findall(query.lower()) if w not in _STOP]
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words)) or None


class LocalSearch:
    def __init__(self, cfg: SearchConfig):
        self.cfg = cfg
        self.folder = Path(cfg.path) if cfg.path else DEFAULT_DOCS
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.execute("CREATE VIRTUAL TABLE docs USING fts5(title, body, tokenize='porter unicode61')")
        self.count = self._index()
        self.label = f"local ({self.count} documents in {self.folder})"

    def _index(self) -> int:
        if not self.folder.is_dir():
            raise ValueError(f"search folder {self.folder} does not exist")
        rows = []
        for path in sorted(self.folder.rglob("*")):
            if path.suffix == ".txt":
                title, _, body = path.read_text(encoding="utf-8").partition("\n")
                rows.append((title.strip(), body.strip()))
            elif path.suffix == ".jsonl":
                for line in path.read_bytes().splitlines():
                    if line.strip():
                        doc = orjson.loads(line)
                        rows.append((str(doc.get("title", "")), str(doc.get("text", ""))))
        self.db.executemany("INSERT INTO docs (title, body) VALUES (?, ?)", rows)
        self.db.commit()
        return len(rows)

    def search_sync(self, query: str) -> list[Hit]:
        match = fts_query(query)
        if match is None:
            return []
        cur = self.db.execute("SELECT title, body FROM docs WHERE docs MATCH ? ORDER BY bm25(docs, 2.0, 1.0) LIMIT ?",
                              (match, self.cfg.results))
        return [Hit(t, b) for t, b in cur.fetchall()]

    async def search(self, query: str) -> str:
        try:
            return render(self.search_sync(query), self.cfg.max_chars)
        except sqlite3.Error as exc:
            return f"Error: the search failed: {exc}"

    async def aclose(self) -> None:
        self.db.close()


class SearxngSearch:
    def __init__(self, cfg: SearchConfig):
        from octogate.core.config_base import resolve_secret

        self.cfg = cfg
        self.url = (resolve_secret(cfg.url) or cfg.url or "").rstrip("/")
        self.label = f"searxng ({self.url})"

    async def search(self, query: str) -> str:
        import aiohttp

        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout)) as s:
                async with s.get(f"{self.url}/search", params={"q": query, "format": "json"}) as r:
                    if r.status != 200:
                        return f"Error: the search service answered HTTP {r.status}."
                    data = await r.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return f"Error: the search service failed: {type(exc).__name__}: {exc}"
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            return "Error: the search service's answer has no results list."
        hits = [Hit(str(r.get("title", "")), " ".join(str(r.get("content", "")).split()))
                for r in results[: self.cfg.results] if isinstance(r, dict)]
        return render(hits, self.cfg.max_chars)

    async def aclose(self) -> None:
        pass


def build_search(cfg: SearchConfig) -> LocalSearch | SearxngSearch:
    return SearxngSearch(cfg) if cfg.kind == "searxng" else LocalSearch(cfg)
