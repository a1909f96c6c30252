"""A schemathesis campaign against a real ``octogate serve``: the graph it fuzzes, the CLI run, and
what the run's HAR report says (requests sent, statuses, 5xx, errors outside OpenAI's envelope).

Used by tests/test_fuzz_api.py (a short run) and bench/fuzz.py (the long one). The schema is the
gateway's own ``/openapi.json``; every route in it is fuzzed, with schemathesis' generated
(positive) and mutated (negative) requests, every built-in check (``--checks all``: no 5xx,
documented statuses, content types and schemas, auth enforced, negative data rejected, valid
data accepted, undeclared methods refused with ``Allow``...) plus ``openai_error_envelope``
(tests/fuzz_hooks.py), a per-request timeout (a hang fails the run) and a time budget.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fuzz_hooks import envelope_problem

REPO = Path(__file__).resolve().parent.parent
API_KEY = "sk-fuzz-api"
ADMIN_KEY = "sk-fuzz-admin"
HISTORY_PREFIX = "octogate:fuzz:conv:"
# The nodes the fuzzed chat bodies are sent to (half of them; the other half name made-up models).
MODELS = ["echo", "plain", "via-litellm", "octo-tools"]


def fuzz_graph(upstream_base_url: str, redis_url: str = "redis://127.0.0.1:6379/0") -> dict[str, Any]:
    """Nodes that all answer (the scripted upstream's ``echo``): the pass-through with a persona and
    params, a bare one, LiteLLM's translation, and octogate's own tool calls; keys; history in Redis."""

    def backend(**extra: Any) -> dict[str, Any]:
        return {"model": "openai/echo", "api_base": upstream_base_url, "api_key": "upstream-secret", "timeout": 5, **extra}

    return {
        "server": {"api_keys": [API_KEY], "admin_keys": [ADMIN_KEY], "max_body_bytes": 256 * 1024},
        "history": {"redis_url": redis_url, "key_prefix": HISTORY_PREFIX, "max_turns": 4},
        "nodes": [
            {"name": "echo", "description": "echoes", "persona": "You are the echo persona.",
             "params": {"temperature": 0.3, "max_tokens": 77}, "backend": backend()},
            {"name": "plain", "backend": backend()},
            {"name": "via-litellm", "backend": backend(adapter="litellm")},
            {"name": "octo-tools", "backend": backend(tool_calls="octogate")},
        ],
    }


@dataclass
class Campaign:
    """What one run did: the CLI's exit code and output, and every request of its HAR report."""

    exit_code: int
    output: str
    requests: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    server_errors: list[str] = field(default_factory=list)  # "METHOD url -> status: body"
    bad_envelopes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        by_class = collections.Counter(f"{s // 100}xx" for s in self.statuses.elements())
        return (f"{self.requests} requests, statuses {dict(sorted(by_class.items()))}, "
                f"{len(self.server_errors)} 5xx, {len(self.bad_envelopes)} errors outside the envelope, "
                f"schemathesis exit code {self.exit_code}")


def run_campaign(base_url: str, report_dir: Path, *, max_examples: int, max_time: int | None = None,
                 timeout: float = 600, request_timeout: float = 10.0, workers: int = 1) -> Campaign:
    """Run ``schemathesis run <base_url>/openapi.json`` (deterministic generation: the same requests
    every run, for a given schema) and read its HAR report. Without ``max_time`` every phase runs
    once (``max_examples`` bounds each); with it, fuzzing and stateful testing repeat until it is
    spent. ``timeout``: the whole run is killed (and the test fails) past this many seconds."""
    report_dir.mkdir(parents=True, exist_ok=True)
    har = report_dir / "fuzz.har.json"
    har.unlink(missing_ok=True)
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"), "run", f"{base_url}/openapi.json",
        "--checks", "all", "--max-examples", str(max_examples), "--generation-deterministic",
        "--request-timeout", str(request_timeout), "--workers", str(workers),
        "--report", "har,junit", "--report-dir", str(report_dir),
        "--report-har-path", str(har), "--no-color",
        *(["--max-time", str(max_time)] if max_time else []),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": str(REPO),
           "FUZZ_API_KEY": API_KEY, "FUZZ_ADMIN_KEY": ADMIN_KEY, "FUZZ_MODELS": ",".join(MODELS)}
    proc = subprocess.run(cmd, cwd=report_dir, env=env, capture_output=True, text=True,
                          timeout=timeout + (max_time or 0))
    campaign = Campaign(proc.returncode, proc.stdout + proc.stderr)
    if har.exists():
        read_har(campaign, json.loads(har.read_text()))
    return campaign


def read_har(campaign: Campaign, har: dict[str, Any]) -> None:
    for entry in har["log"]["entries"]:
        request, response = entry["request"], entry["response"]
        status = response["status"]
        campaign.requests += 1
        campaign.statuses[status] += 1
        body = (response.get("content") or {}).get("text") or ""
        what = f"{request['method']} {request['url']} -> {status}: {body[:300]}"
        if status >= 500:
            campaign.server_errors.append(what)
        content_type = next((h["value"] for h in response["headers"] if h["name"].lower() == "content-type"), "")
        problem = envelope_problem(status, content_type, body.encode())
        if problem:
            campaign.bad_envelopes.append(f"{what} ({problem})")
