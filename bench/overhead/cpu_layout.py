"""Which CPUs the benchmark's processes run on: with ``--pin`` (and at least two usable CPUs and
``taskset``), the proxy under test gets a CPU of its own and wrk + nginx share another, the same
for every proxy, so a proxy never competes with its own load generator."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass


@dataclass
class Layout:
    """Which cores things run on (identical for every proxy under test)."""

    pinned: bool
    load_cpus: str | None  # wrk and nginx
    proxy_cpus: str | None  # the proxy under test

    def describe(self) -> str:
        if not self.pinned:
            return "no CPU pinning: wrk, nginx and the proxy under test share all cores"
        return (f"taskset: wrk + nginx on CPU {self.load_cpus}, the proxy under test on CPU {self.proxy_cpus} "
                "(same for octogate and LiteLLM; 'direct' is wrk + nginx on their CPU)")


def choose_layout(mode: str) -> Layout:
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    can = ncpu >= 2 and shutil.which("taskset") is not None
    if mode == "off" or (mode == "auto" and not can):
        return Layout(False, None, None)
    if not can:
        raise SystemExit("--pin on needs taskset and at least 2 usable CPUs")
    cpus = sorted(os.sched_getaffinity(0))
    return Layout(True, str(cpus[0]), str(cpus[1]))
