"""The command line and the run itself: the flags, then one run start to finish (check for wrk,
install the cleanup handlers, pick the CPU layout and the run's bearer key, start nginx, start,
check, warm up, measure and stop every target for every round, then print the report, write
bench/results/<timestamp>.json and return the exit code: 0, 1 when a target could not be
measured, 2 without wrk, 130 on Ctrl-C; SIGTERM and SIGHUP exit with 128 + the signal's number)."""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import __doc__ as BENCHMARK_DOC
from .canned_upstream import Upstream
from .cpu_layout import choose_layout
from .loopback_http import auth_key, set_auth_key
from .measurement import (
    CONCURRENCIES,
    Cell,
    measure,
    median_cell,
    scenario_target,
    scenarios_of,
    warm_up,
)
from .paths import REPO, RESULTS_DIR
from .report import print_report
from .subprocesses import install_cleanup, stop_all
from .targets import ALL_TARGETS, STARTERS, Running, preflight, status_without_key
from .verdict import TARGET_ADDED_P50_MS, TARGET_RPS_RATIO, compute_verdict


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=BENCHMARK_DOC.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds of load per cell (target x concurrency)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of load before a target's first cell (0: none)")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help="comma-separated subset of " + ",".join(ALL_TARGETS))
    ap.add_argument("--octogate-workers", type=int, default=1)
    ap.add_argument("--octogate-extra", default="", help="extra arguments for `octogate serve`, space-separated (write --octogate-extra=\"--flag ...\")")
    ap.add_argument("--stream", action="store_true", help="also measure a canned SSE stream (stream: true)")
    ap.add_argument("--responses", action="store_true",
                    help="also measure POST /v1/responses on octogate (with --stream: streamed too)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every target this many times, interleaved, and report per-figure medians")
    ap.add_argument("--pin", choices=("auto", "on", "off"), default="auto",
                    help="taskset layout: proxy under test on its own CPU, wrk + nginx on another")
    ap.add_argument("--auth", choices=("on", "off"), default="on",
                    help="on: both proxies require the same bearer key (LiteLLM refuses to boot without a "
                         "master key unless told it is a dev setup); off: neither checks one")
    ap.add_argument("--boot-timeout", type=float, default=120.0, help="seconds to wait for a proxy to serve")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, generated configs)")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/<timestamp>.json")
    args = ap.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.target_list) - set(ALL_TARGETS)
    if unknown or not args.target_list:
        ap.error(f"--targets: unknown {sorted(unknown)}; choose from {','.join(ALL_TARGETS)}")
    if args.duration < 1 or args.rounds < 1 or args.octogate_workers < 1:
        ap.error("--duration, --rounds and --octogate-workers must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y nginx wrk", file=sys.stderr)
        return 2
    install_cleanup()

    set_auth_key("sk-bench-" + secrets.token_hex(16) if args.auth == "on" else None)
    layout = choose_layout(args.pin)
    scenarios = ["chat"] + (["stream"] if args.stream else [])
    if args.responses:
        scenarios += ["responses"] + (["responses-stream"] if args.stream else [])
    started = _dt.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    meta: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "duration_s": args.duration, "warmup_s": args.warmup,
        "rounds": args.rounds, "targets": args.target_list, "scenarios": scenarios,
        "octogate_workers": args.octogate_workers, "auth": args.auth, "layout": layout.describe(), "pinned": layout.pinned,
        "load_cpus": layout.load_cpus, "proxy_cpus": layout.proxy_cpus,
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0:1],
    }
    for dist in ("litellm", "octogate"):
        try:  # metadata only: importing litellm costs seconds and tries the network
            meta[f"{dist}_version"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            meta[f"{dist}_version"] = None

    samples: dict[tuple[str, str, int], list[Cell]] = {}
    target_info: dict[str, Any] = {}
    failures: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="octogate-bench-"))
    os.chmod(tmp, 0o755)
    print(f"bench: {layout.describe()}", flush=True)
    if layout.pinned and args.octogate_workers > 1 and "octogate" in args.target_list:
        print(f"bench: note: all {args.octogate_workers} octogate workers share CPU {layout.proxy_cpus}; "
              "use --pin off to let them spread", flush=True)
    print(f"bench: logs and generated configs in {tmp}", flush=True)
    up: Upstream | None = None
    try:
        up = Upstream(tmp, layout)
        for rnd in range(args.rounds):
            for name in args.target_list:
                if name in failures:
                    continue
                label = f"[round {rnd + 1}/{args.rounds}] {name}"
                print(f"bench: {label}: starting", flush=True)
                run: Running | None = None
                try:
                    t0 = time.monotonic()
                    run = STARTERS[name](up, tmp, layout, args)
                    boot = time.monotonic() - t0
                    info = target_info.setdefault(name, {"command": run.command, **run.settings, "boot_s": []})
                    info["boot_s"].append(round(boot, 2))
                    info["preflight"] = {s: preflight(*scenario_target(run, s)) for s in scenarios_of(name, scenarios)}
                    if auth_key() and run.proc is not None:
                        status, text = status_without_key(run)
                        info["without_key"] = {"status": status, "body": text}
                        if 200 <= status < 300:
                            print(f"bench: {label}: WARNING: a request without the key got HTTP "
                                  f"{status} (auth is not being checked)", flush=True)
                    print(f"bench: {label}: ready in {boot:.1f}s; warm-up {args.warmup}s", flush=True)
                    warm_up(run, scenarios, args.warmup, layout)
                    for scenario in scenarios_of(name, scenarios):
                        for conns in CONCURRENCIES:
                            cell = measure(run, up, scenario, conns, args.duration, layout)
                            samples.setdefault((name, scenario, conns), []).append(cell)
                            extra = f", {cell.non_2xx} non-2xx" if cell.non_2xx else ""
                            extra += f", socket errors {cell.socket_errors}" if any(cell.socket_errors.values()) else ""
                            if cell.upstream_requests is not None and abs(cell.upstream_requests - cell.requests) > conns:
                                extra += (f", WARNING: upstream served {cell.upstream_requests} requests "
                                          f"for wrk's {cell.requests}")
                            if cell.proxy_cpu_ms_per_req is not None:
                                extra += f", proxy CPU {cell.proxy_cpu_ms_per_req:.3f} ms/req"
                            print(f"bench: {label}: {scenario} c={conns}: {cell.rps:,.0f} req/s, "
                                  f"p50 {cell.p50_ms:.3f} ms, p99 {cell.p99_ms:.3f} ms{extra}", flush=True)
                    if run.proc is not None and not run.proc.alive():
                        raise RuntimeError(f"{name} died during the measurement:\n{run.proc.tail()}")
                except (RuntimeError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
                    failures[name] = str(exc)
                    print(f"bench: {label}: FAILED: {exc}", file=sys.stderr, flush=True)
                finally:
                    if run is not None and run.proc is not None:
                        if name in failures or any(c.errors for k, v in samples.items() if k[0] == name for c in v):
                            target_info.setdefault(name, {})["log_tail"] = run.proc.tail(80)
                        run.proc.stop()
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        if up is not None:
            up.stop()
        stop_all()

    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    meta["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    cells = {k: median_cell(v) for k, v in samples.items()}
    verdict = compute_verdict(cells)
    if cells:
        print()
        print_report(cells, verdict, meta)
    for name, why in failures.items():
        print(f"\n{name} could not be measured: {why}", file=sys.stderr)

    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{stamp}.json"
        doc = {
            "meta": meta,
            "targets": target_info,
            "failures": failures,
            "cells": [asdict(c) for c in cells.values()],
            "samples": {f"{t}/{s}/{c}": [asdict(x) for x in v] for (t, s, c), v in samples.items()},
            "verdict": verdict,
            "goals": {"rps_ratio_vs_litellm": TARGET_RPS_RATIO, "added_p50_ms": TARGET_ADDED_P50_MS},
        }
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nresults: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    if failures or args.keep_tmp:
        print(f"logs and generated configs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0
