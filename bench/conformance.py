"""The larger conformance run (tests/conformance/, docs/conformance.md): seeded spec-valid
CreateChatCompletionRequest bodies sent to a gateway whose node passes through to a loopback upstream,
and to the embedded default; prints the figures (bodies sent, accepted, refused by documented reason,
response schema violations, changed pass-through fields, failures) as JSON.

    .venv/bin/python bench/conformance.py --loopback 640 --embedded 100 --seed 25

``--spec FILE`` draws and judges with another chat extract instead of the kept one, e.g. one built
from a newer copy of OpenAI's document (``python -m tests.conformance.build_spec openapi.yaml --out DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if "--spec" in sys.argv[:-1]:  # read by tests/conformance/spec.py when it is imported, just below
    os.environ["OCTOGATE_CONFORMANCE_SPEC"] = str(Path(sys.argv[sys.argv.index("--spec") + 1]).resolve())

from tests.conformance.corpus import Tally, corpus, judge  # noqa: E402
from tests.conformance.upstream import SpecUpstream  # noqa: E402
from tests.conformance.corpus import embedded_default  # noqa: E402
from tests.conftest import start_gateway  # noqa: E402

PERSONA = "You are the conformance persona."


def run_loopback(count: int, seed: int, work: Path) -> Tally:
    upstream = SpecUpstream().start()
    graph = {"nodes": [{"name": "loop", "persona": PERSONA, "backend": {
        "model": "openai/loop", "api_base": upstream.base_url, "api_key": "k", "timeout": 10}}]}
    (work / "loop.yaml").write_text(yaml.safe_dump(graph))
    gw = start_gateway(work / "loop.yaml", work / "loop.log")
    tally = Tally()
    try:
        with httpx.Client(timeout=60) as client:
            for body in corpus("loop", count, seed):
                judge(client, f"{gw.url}/v1/chat/completions", body, "passthrough", tally,
                      received=upstream.last, persona=True)
    finally:
        gw.stop()
        upstream.stop()
    return tally


def run_embedded(count: int, seed: int, work: Path) -> Tally:
    (work / "embedded").mkdir()
    gw = embedded_default(work / "embedded")
    tally = Tally()
    try:
        with httpx.Client(timeout=600) as client:
            for body in corpus("general", count, seed, embedded=True):
                judge(client, f"{gw.url}/v1/chat/completions", body, "embedded", tally)
    finally:
        gw.stop()
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loopback", type=int, default=640, help="bodies for the pass-through node")
    parser.add_argument("--embedded", type=int, default=100, help="bodies for the embedded default")
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--spec", help="a chat extract to draw and judge with (default: tests/conformance/'s)")
    args = parser.parse_args()
    out: dict = {"spec": json.loads(Path(os.environ.get("OCTOGATE_CONFORMANCE_SPEC") or
                                        REPO / "tests/conformance/openai-chat.schemas.json").read_text())["source"]}
    with tempfile.TemporaryDirectory() as tmp:
        for name, count, run in (("passthrough", args.loopback, run_loopback), ("embedded", args.embedded, run_embedded)):
            if count:
                t0 = time.perf_counter()
                tally = run(count, args.seed, Path(tmp))
                out[name] = {**tally.figures(), "seconds": round(time.perf_counter() - t0),
                             "examples": (tally.failures + tally.violations + tally.changed)[:5]}
                print(name, json.dumps(out[name], ensure_ascii=False), flush=True)
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
