#!/usr/bin/env python3
"""The long fuzz campaign: schemathesis over every route of ``/openapi.json``, against one
``octogate serve`` whose nodes point at the scripted upstream on loopback (tests/upstream.py), with
API and admin keys, and history in the Redis on 127.0.0.1:6379.

    .venv/bin/python bench/fuzz.py [--max-examples 60] [--max-time 900] [--workers 1]

Passes (exit 0) when schemathesis reports no failure (no 5xx, no hang past the per-request timeout,
every check of ``--checks all`` and OpenAI's error envelope) and the run sent at least
``--min-requests`` requests. tests/test_fuzz_api.py is the short version; tests/fuzz_campaign.py
holds the graph, the command and the report reading; bench/README.md has the figures of a run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.conftest import start_gateway  # noqa: E402
from tests.fuzz_campaign import fuzz_graph, run_campaign  # noqa: E402
from tests.upstream import ScriptedUpstream  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=60, help="schemathesis' examples per operation and phase")
    parser.add_argument("--max-time", type=int, default=600, help="time budget of the run, seconds: fuzzing and "
                        "stateful testing repeat until it is spent (0: every phase once)")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="a request unanswered after this is a hang")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--min-requests", type=int, default=1000)
    parser.add_argument("--report-dir", type=Path, default=None, help="keep the HAR and JUnit reports here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="octogate-fuzz-"))
    report_dir = args.report_dir or tmp / "report"
    upstream = ScriptedUpstream().start()
    (tmp / "graph.yaml").write_text(yaml.safe_dump(fuzz_graph(upstream.base_url)))
    gateway = start_gateway(tmp / "graph.yaml", tmp / "octogate.log")
    started = time.monotonic()
    try:
        campaign = run_campaign(gateway.url, report_dir, max_examples=args.max_examples, max_time=args.max_time or None,
                                request_timeout=args.request_timeout, workers=args.workers)
    finally:
        gateway.stop()
        upstream.stop()
    elapsed = time.monotonic() - started
    failures = campaign.output.find("=== FAILURES")
    print(campaign.output[failures:][:20000] if failures >= 0 else campaign.output[-3000:])
    print(f"fuzz: {campaign.summary()} in {elapsed:.0f} s; statuses {dict(sorted(campaign.statuses.items()))}")
    for line in (campaign.server_errors + campaign.bad_envelopes)[:20]:
        print("  ", line)
    print(f"reports: {report_dir}; gateway log: {tmp / 'octogate.log'}")
    ok = (campaign.exit_code == 0 and not campaign.server_errors and not campaign.bad_envelopes
          and campaign.requests >= args.min_requests)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
