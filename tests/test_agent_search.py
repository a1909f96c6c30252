"""agents/search.py: the local SQLite FTS5 index over the shipped documents, and SearXNG's JSON API
against a scripted server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from octogate.agents.search import LocalSearch, SearxngSearch, fts_query
from octogate.core.agent_config import SearchConfig


def test_the_shipped_folder_answers_the_papers_lookups():
    search = LocalSearch(SearchConfig())
    assert search.count >= 200
    out = asyncio.run(search.search("area of Texas in square miles"))
    assert out.startswith("Texas: ") and "268,596 square miles" in out
    assert "71,298" in asyncio.run(search.search("Washington area square miles"))
    assert "1643" in asyncio.run(search.search("When was Isaac Newton born?"))


def test_results_are_trimmed_and_misses_say_so(tmp_path):
    (tmp_path / "a.txt").write_text("Zebra facts\n" + "Zebras have stripes. " * 100)
    (tmp_path / "b.jsonl").write_text(json.dumps({"title": "Okapi", "text": "An okapi is related to the giraffe."}) + "\n")
    search = LocalSearch(SearchConfig(path=str(tmp_path), max_chars=150, results=2))
    assert search.count == 2
    out = asyncio.run(search.search("zebra stripes"))
    assert out.startswith("Zebra facts: Zebras have stripes.") and out.endswith(" ...") and len(out) <= 160
    assert asyncio.run(search.search("giraffe")).startswith("Okapi:")
    assert asyncio.run(search.search("quantum chromodynamics")) == "No results."
    assert asyncio.run(search.search("the of and")) == "No results."  # stop words only


def test_query_syntax_cannot_break_the_match_expression():
    assert fts_query('Texas" OR x NEAR(') == '"texas" OR "x" OR "near"'
    out = asyncio.run(LocalSearch(SearchConfig()).search('area "of Texas*) NOT ('))
    assert "Texas" in out


class _Searx(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_GET(self):  # noqa: N802
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        _Searx.seen.append({"path": parts.path, **{k: v[0] for k, v in query.items()}})
        results = [{"title": f"Result {i}", "content": f"text {i} about {query['q'][0]}", "url": f"http://x/{i}"}
                   for i in range(5)]
        data = json.dumps({"query": query["q"][0], "results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_searxng_json_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Searx)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        search = SearxngSearch(SearchConfig(kind="searxng", url=f"http://127.0.0.1:{server.server_port}/", results=2))
        out = asyncio.run(search.search("area of Texas"))
        assert out == "Result 0: text 0 about area of Texas\nResult 1: text 1 about area of Texas"
        assert _Searx.seen[-1] == {"path": "/search", "q": "area of Texas", "format": "json"}
    finally:
        server.shutdown()
    down = SearxngSearch(SearchConfig(kind="searxng", url="http://127.0.0.1:9", timeout=1))
    assert asyncio.run(down.search("x")).startswith("Error: the search service failed")
