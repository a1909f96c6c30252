"""The verdict on a run's cells: the issue's targets (octogate requests/s at least 30x
LiteLLM's at 16 connections; octogate's added p50 at most 0.6 ms at 1 connection), the ratios
and added latencies computed against baselines from the same run, and a PASS / FAIL / INVALID /
SKIP check per target, INVALID when a cell it depends on had errors."""

from __future__ import annotations

from typing import Any

from .measurement import CONCURRENCIES, Cell

# The targets.
TARGET_RPS_RATIO = 30.0  # octogate rps / litellm rps at 16 connections, one octogate worker
TARGET_ADDED_P50_MS = 0.6  # octogate p50 - direct p50 at 1 connection


def compute_verdict(cells: dict[tuple[str, str, int], Cell]) -> dict[str, Any]:
    def get(t: str, c: int, s: str = "chat") -> Cell | None:
        return cells.get((t, s, c))

    hi, lo = max(CONCURRENCIES), min(CONCURRENCIES)
    out: dict[str, Any] = {"ratios": {}, "added_ms": {}, "checks": {}}
    d_hi, d_lo = get("direct", hi), get("direct", lo)
    o_hi, o_lo = get("octogate", hi), get("octogate", lo)
    l_hi, l_lo = get("litellm", hi), get("litellm", lo)

    def ratio(a: Cell | None, b: Cell | None) -> float | None:
        return a.rps / b.rps if a and b and b.rps > 0 else None

    out["ratios"][f"octogate_rps/litellm_rps@{hi}"] = ratio(o_hi, l_hi)
    out["ratios"][f"octogate_rps/direct_rps@{hi}"] = ratio(o_hi, d_hi)
    out["ratios"][f"litellm_rps/direct_rps@{hi}"] = ratio(l_hi, d_hi)
    out["ratios"][f"octogate_rps/litellm_rps@{lo}"] = ratio(o_lo, l_lo)
    if o_hi and l_hi and o_hi.proxy_cpu_ms_per_req and l_hi.proxy_cpu_ms_per_req:
        out["ratios"][f"litellm_cpu/octogate_cpu per request@{hi}"] = (
            l_hi.proxy_cpu_ms_per_req / o_hi.proxy_cpu_ms_per_req)
    for name, cell in (("octogate", o_lo), ("litellm", l_lo)):
        if cell and d_lo:
            out["added_ms"][f"{name}_p50@{lo}"] = cell.p50_ms - d_lo.p50_ms
            out["added_ms"][f"{name}_p99@{lo}"] = cell.p99_ms - d_lo.p99_ms
    s_oh, s_lh = get("octogate", hi, "stream"), get("litellm", hi, "stream")
    if s_oh or s_lh:
        out["ratios"][f"stream: octogate_rps/litellm_rps@{hi}"] = ratio(s_oh, s_lh)
        for name in ("octogate", "litellm"):
            cell, base = get(name, lo, "stream"), get("direct", lo, "stream")
            if cell and base:
                out["added_ms"][f"stream: {name}_p50@{lo}"] = cell.p50_ms - base.p50_ms

    for scenario, base_scenario in (("responses", "chat"), ("responses-stream", "stream")):
        cell, chat = get("octogate", lo, scenario), get("octogate", lo, base_scenario)
        if cell and get("direct", lo, base_scenario):
            out["added_ms"][f"{scenario}: octogate_p50@{lo}"] = cell.p50_ms - get("direct", lo, base_scenario).p50_ms
        if cell and chat:
            out["added_ms"][f"{scenario}: octogate_p50 - {base_scenario} octogate_p50@{lo}"] = cell.p50_ms - chat.p50_ms
        if get("octogate", hi, scenario) and get("octogate", hi, base_scenario):
            out["ratios"][f"{scenario}: octogate_rps/{base_scenario} octogate_rps@{hi}"] = ratio(
                get("octogate", hi, scenario), get("octogate", hi, base_scenario))

    def check(name: str, value: float | None, target: float, higher_is_better: bool, involved: list[Cell | None]
              ) -> None:
        if value is None:
            out["checks"][name] = {"status": "SKIP", "value": None, "target": target, "why": "a target was not measured"}
            return
        bad = [c for c in involved if c is not None and c.errors]
        ok = value >= target if higher_is_better else value <= target
        status = "PASS" if ok else "FAIL"
        why = ""
        if bad:
            status = "INVALID"
            why = "errors during the measurement: " + ", ".join(
                f"{c.target}@{c.connections}: {c.non_2xx} non-2xx, {sum(c.socket_errors.values())} socket errors"
                for c in bad)
        out["checks"][name] = {"status": status, "value": value, "target": target, "why": why}

    check(f"octogate rps >= {TARGET_RPS_RATIO:g}x litellm rps @{hi} conns",
          out["ratios"][f"octogate_rps/litellm_rps@{hi}"], TARGET_RPS_RATIO, True, [o_hi, l_hi])
    # The same throughput comparison in CPU time per request (requests per CPU-second): what the
    # rps ratio would be if both proxies had got the same share of their CPU. Informational: the
    # issue's target is the rps ratio, but this one survives a noisy neighbour.
    check(f"(CPU-normalized) litellm CPU/req >= {TARGET_RPS_RATIO:g}x octogate CPU/req @{hi} conns",
          out["ratios"].get(f"litellm_cpu/octogate_cpu per request@{hi}"), TARGET_RPS_RATIO, True, [o_hi, l_hi])
    check(f"octogate added p50 <= {TARGET_ADDED_P50_MS} ms @{lo} conn",
          out["added_ms"].get(f"octogate_p50@{lo}"), TARGET_ADDED_P50_MS, False, [o_lo, d_lo])
    return out
