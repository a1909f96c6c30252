"""What each part of an embedded octogate costs in memory: RSS measured in a fresh process per part.

    .venv/bin/python bench/memory.py [--config config/default.yaml] [--cold] [--json]

Parts, each in its own ``python`` process (so nothing loaded by one part counts in another):

- ``python + imports``: the interpreter with ``octogate.gateway.app`` and what it imports (the
  baseline every other row is measured against);
- ``chat model``: the graph's embedded chat model loaded (llama.cpp, SmolLM2 Q4_1, its ``n_ctx``);
- ``router``: the graph's embedded router loaded (the base model with its LoRA merged, float16);
- ``toolset NAME``: each registered toolset's selector loaded (the same, with its own LoRA);
- ``octogate serve``: the whole gateway on the graph, measured once ``/readyz`` answers; then
  again after one chat request through the graph's router (llama.cpp allocates some buffers on
  first use); and, with ``--cold``, a first start on an empty cache, which builds the derived
  float16 copies first (what that work leaves behind would show here).

RSS is split into anonymous memory (private to the process) and file-backed pages (the mapped
GGUF files: shared between processes that map the same file, and reclaimable by the kernel).
``peak`` is the process's high-water mark (VmHWM). Derived model files (the router's float16 copy)
are built into the cache before the other rows are measured, so a first build counts only in the
``--cold`` row.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")

# Printed by every part's process once its part is loaded: its /proc/self/status memory lines, in kB.
_REPORT = """
import json
def _status(pid="self"):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0])
    return out
"""

_SETUP = """
import octogate.gateway.app  # what a serving process imports
from octogate.core.graph import load_graph
graph = load_graph({config!r})
"""

PART_CODE = {
    "baseline": "",
    "chat": """
from octogate.adapters.embedded import shared_model
cfgs = {{graph.backend_key(n): graph.backend_of(n) for n in graph.nodes}}
embedded = [c for c in cfgs.values() if c.kind == "embedded"]
for cfg in embedded:
    shared_model(cfg).load()
assert embedded, "the graph has no embedded backend"
""",
    "router": """
from octogate.router_model.protocol import RouterGrammar
from octogate.router_model.embedded_engine import DEFAULT_ROUTER_DIR
from octogate.router_model.token_selector import TokenSelector
cfg = graph.router
assert cfg is not None and cfg.engine == "embedded", "the graph has no embedded router"
grammar = RouterGrammar.from_graph(graph)
selector = TokenSelector(cfg.path or DEFAULT_ROUTER_DIR, n_threads=cfg.threads, extra_context=128)
selector.load(dict(grammar.token_to_node))
""",
    "toolset": """
from octogate.router_model.toolsets import Toolset
from octogate.router_model.token_selector import TokenSelector
ts = graph.toolsets[{name!r}]
toolset = Toolset.from_config({name!r}, ts.tools, ts.path, ts.threads)
selector = TokenSelector(toolset.path, n_threads=toolset.threads)
selector.load(toolset.labels())
""",
}


def measure_part(part: str, config: Path, **fmt: str) -> dict[str, int]:
    code = _REPORT + _SETUP.format(config=str(config)) + PART_CODE[part].format(**fmt) + "\nprint(json.dumps(_status()))\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"part {part} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_status(pid: int) -> dict[str, int]:
    """The memory lines of ``pid`` and its descendants, added up (a serving worker may be a child)."""
    pids, frontier = [pid], [pid]
    while frontier:
        children = []
        for p in frontier:
            try:
                children += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
            except OSError:
                pass
        pids += children
        frontier = children
    total = dict.fromkeys(FIELDS, 0)
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in total:
                    total[key] += int(value.split()[0])
        except OSError:
            pass
    total["processes"] = len(pids)
    return total


def measure_serve(config: Path, settle: float = 2.0, timeout: float = 300.0, env: dict[str, str] | None = None,
                  model: str | None = None) -> list[dict[str, int]]:
    """``octogate serve`` on ``config``: its memory once ``/readyz`` answers (``settle`` seconds later),
    then, if ``model`` is given, again after one chat request to it."""
    port = _free_port()
    octogate = Path(sys.executable).parent / "octogate"
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([str(octogate), "serve", "--config", str(config), "--port", str(port),
                                 "--log-level", "warning"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})})
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"octogate serve exited with {proc.returncode}:\n{log.read()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
                        ready = json.loads(resp.read())
                        break
                except urllib.error.HTTPError as exc:  # a 503 (no node can answer) is started up too
                    ready = json.loads(exc.read())
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"octogate serve not ready within {timeout:.0f}s") from None
                    time.sleep(0.5)
            time.sleep(settle)
            status = _tree_status(proc.pid)
            status["ready"] = ready.get("status")
            rows = [status]
            if model is not None:
                body = json.dumps({"model": model, "max_tokens": 16,
                                   "messages": [{"role": "user", "content": "What is the derivative of x^3?"}]})
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body.encode(),
                                                 headers={"content-type": "application/json"})
                with urllib.request.urlopen(request, timeout=120) as resp:
                    node = resp.headers.get("x-octogate-node")
                time.sleep(settle)
                rows.append({**_tree_status(proc.pid), "node": node})
            return rows
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _mb(kb: int) -> str:
    return f"{kb / 1024:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "default.yaml")
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    parser.add_argument("--no-serve", action="store_true", help="skip the `octogate serve` rows")
    parser.add_argument("--cold", action="store_true",
                        help="also measure a first start on an empty cache (builds the derived copies; ~1 min)")
    args = parser.parse_args(argv)
    config = args.config.resolve()

    from octogate.core.graph import load_graph

    graph = load_graph(config)
    parts: list[tuple[str, str, dict[str, str]]] = [("python + imports", "baseline", {})]
    if any(graph.backend_of(n).kind == "embedded" for n in graph.nodes):
        parts.append(("chat model (llama.cpp, SmolLM2 Q4_1)", "chat", {}))
    if graph.router is not None and graph.router.engine == "embedded":
        parts.append(("router (merged float16 copy)", "router", {}))
    for name in graph.toolsets:
        parts.append((f"toolset {name!r} selector (merged float16 copy)", "toolset", {"name": name}))

    print("memory: building derived model files into the cache (not measured) ...", file=sys.stderr, flush=True)
    for label, part, fmt in parts:
        if part in ("router", "toolset"):  # their merged float16 copies
            measure_part(part, config, **fmt)

    rows = []
    for label, part, fmt in parts:
        print(f"memory: {label} ...", file=sys.stderr, flush=True)
        rows.append((label, measure_part(part, config, **fmt)))
    base = rows[0][1]
    if not args.no_serve:
        print("memory: octogate serve ...", file=sys.stderr, flush=True)
        shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
        model = graph.router.name if graph.router is not None else graph.nodes[0].name
        ready, after = measure_serve(config, model=model)
        rows.append((f"`octogate serve` of {shown}, after /readyz", ready))
        rows.append((f"the same, after one request to `{model}` (answered by {after.pop('node')})", after))
        if args.cold:
            print("memory: octogate serve, first start on an empty cache ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory() as cache:
                cold, = measure_serve(config, env={"XDG_CACHE_HOME": cache}, timeout=600)
            rows.append((f"`octogate serve` of {shown}, first start (empty cache), after /readyz", cold))

    print("| part | RSS MB | over python + imports | anonymous MB | file-backed MB | peak MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for i, (label, s) in enumerate(rows):
        delta = "" if i == 0 else f"+{_mb(s['VmRSS'] - base['VmRSS'])}"
        print(f"| {label} | {_mb(s['VmRSS'])} | {delta} | {_mb(s['RssAnon'])} | {_mb(s['RssFile'])} | "
              f"{_mb(s['VmHWM'])} |")
    if args.json:
        print(json.dumps({label: s for label, s in rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
