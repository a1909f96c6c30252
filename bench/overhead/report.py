"""The printed report: one table row per cell (target, scenario, connections, req/s, p50, p99,
proxy CPU and errors), the CPU layout and load average of the run, then the verdict's ratios,
added latencies and checks; drawn with rich when it is installed, as plain text otherwise."""

from __future__ import annotations

import sys
from typing import Any

from .measurement import Cell
from .targets import ALL_TARGETS


def print_report(cells: dict[tuple[str, str, int], Cell], verdict: dict[str, Any], meta: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback
        Console = None  # type: ignore[assignment]

    rows = []
    for (t, s, c), cell in sorted(cells.items(), key=lambda kv: (kv[0][1], ALL_TARGETS.index(kv[0][0]), kv[0][2])):
        errs = f"{cell.non_2xx}/{sum(cell.socket_errors.values())}"
        cpu = "-" if cell.proxy_cpu_ms_per_req is None else f"{cell.proxy_cpu_ms_per_req:.3f}"
        cores = "-" if cell.proxy_cpu_cores is None else f"{cell.proxy_cpu_cores:.2f}"
        rows.append([t, s, str(c), f"{cell.rps:,.0f}", f"{cell.p50_ms:.3f}", f"{cell.p99_ms:.3f}", cpu, cores, errs])
    header = ["target", "scenario", "conns", "req/s", "p50 ms", "p99 ms", "proxy CPU ms/req", "proxy cores",
              "non-2xx/sock err"]

    def fmt(v: float | None, unit: str = "") -> str:
        return "n/a" if v is None else (f"{v:.3g}{unit}" if abs(v) < 1 else f"{v:.2f}{unit}")

    lines = [f"{k:<42} {fmt(v, 'x')}" for k, v in verdict["ratios"].items() if v is not None]
    lines += [f"added {k:<36} {fmt(v, ' ms')}" for k, v in verdict["added_ms"].items()]
    checks = [f"[{c['status']}] {name}: {fmt(c['value'])}" + (f"  ({c['why']})" if c["why"] else "")
              for name, c in verdict["checks"].items()]

    if Console is not None:
        console = Console(width=None if sys.stdout.isatty() else 120)
        table = Table(title=f"octogate overhead benchmark ({meta['duration_s']} s per cell, {meta['rounds']} round(s))")
        for h in header:
            table.add_column(h, justify="right" if h not in ("target", "scenario") else "left", no_wrap=True)
        for r in rows:
            table.add_row(*r)
        console.print(table)
        console.print(f"[dim]{meta['layout']}[/dim]")
        console.print(f"[dim]load before run: {meta['loadavg_before']}, after: {meta['loadavg_after']}[/dim]")
        for line in lines:
            console.print(line, highlight=False)
        for line in checks:
            colour = {"PASS": "green", "FAIL": "red", "INVALID": "yellow"}.get(line[1:].split("]")[0], "white")
            console.print(f"[{colour}]{line}[/{colour}]", highlight=False)
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
        print(meta["layout"])
        print(f"load before run: {meta['loadavg_before']}, after: {meta['loadavg_after']}")
        print("\n".join(lines + checks))
