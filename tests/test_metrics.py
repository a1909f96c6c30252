"""Metrics: exact numbers in one process, and the same numbers summed over real worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from octogate.gateway.metrics import (
    CONTENT_TYPE,
    LLM_BUCKETS,
    MULTIPROC_ENV,
    OTHER_MODEL,
    ROUTE_BUCKETS,
    UNRESOLVED_MODEL_LABELS,
    Metrics,
    mark_worker_dead,
    prepare_multiprocess_dir,
)

REPO = Path(__file__).resolve().parent.parent
INF = float("inf")

# This interpreter imported prometheus_client without the variable, so it is in single-process mode.
single_process = pytest.mark.skipif(MULTIPROC_ENV in os.environ, reason=f"{MULTIPROC_ENV} is set for the test run")


def parse(body: bytes) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def buckets(samples: dict, name: str, **labels: str) -> dict[float, float]:
    out = {}
    for (sample, sample_labels), v in samples.items():
        sample_labels = dict(sample_labels)
        le = sample_labels.pop("le", None)
        if sample == name + "_bucket" and sample_labels == labels:
            out[float(le)] = v
    return out


def cumulative(bounds: tuple[float, ...], observations: list[float]) -> dict[float, float]:
    return {b: sum(1 for o in observations if o <= b) for b in (*bounds, INF)}


# --- one process -------------------------------------------------------------------------------

@single_process
def test_known_traffic_renders_exact_numbers():
    metrics = Metrics(registry=CollectorRegistry())
    for _ in range(3):
        metrics.request_started("law")
    metrics.request_finished("law", "law", 200, 0.004)
    metrics.request_finished("law", "law", 200, 0.3)
    metrics.request_started("nope")
    metrics.request_finished("nope", "", 404, 0.001)  # never reached a node
    metrics.upstream_call("law", "openai-law", 0.25, ok=True)
    metrics.upstream_call("law", "openai-law", 7.0, ok=False)
    metrics.time_to_first_token("law", 0.12)
    metrics.tokens("law", 11, 7)
    metrics.tokens("law", 4, 0)
    metrics.route_decision("law", 0.0008, fallback=False)
    metrics.route_decision("general", 0.03, fallback=True)
    metrics.history_unavailable("load")
    metrics.history_unavailable("load")
    metrics.history_unavailable("save")

    body, content_type = metrics.render()
    assert content_type == CONTENT_TYPE
    s = parse(body)

    assert value(s, "octogate_requests_in_flight") == 1
    assert value(s, "octogate_requests_total", model="law", node="law", status="200", key="") == 2
    assert value(s, "octogate_requests_total", model="nope", node="", status="404", key="") == 1
    assert buckets(s, "octogate_request_duration_seconds", model="law", node="law") == cumulative(LLM_BUCKETS, [0.004, 0.3])
    assert value(s, "octogate_request_duration_seconds_count", model="law", node="law") == 2
    assert value(s, "octogate_request_duration_seconds_sum", model="law", node="law") == pytest.approx(0.304)
    assert value(s, "octogate_request_duration_seconds_count", model="nope", node="") == 1

    up = dict(node="law", backend="openai-law")
    assert buckets(s, "octogate_upstream_duration_seconds", **up, outcome="ok") == cumulative(LLM_BUCKETS, [0.25])
    assert buckets(s, "octogate_upstream_duration_seconds", **up, outcome="error") == cumulative(LLM_BUCKETS, [7.0])
    assert value(s, "octogate_upstream_duration_seconds_sum", **up, outcome="error") == 7.0

    assert buckets(s, "octogate_time_to_first_token_seconds", node="law") == cumulative(LLM_BUCKETS, [0.12])
    assert value(s, "octogate_tokens_total", node="law", direction="prompt", key="") == 15
    assert value(s, "octogate_tokens_total", node="law", direction="completion", key="") == 7

    assert buckets(s, "octogate_route_decision_seconds") == cumulative(ROUTE_BUCKETS, [0.0008, 0.03])
    assert value(s, "octogate_route_decision_seconds_sum") == pytest.approx(0.0308)
    assert value(s, "octogate_route_decisions_total", node="law") == 1
    assert value(s, "octogate_route_decisions_total", node="general") == 1
    assert value(s, "octogate_route_fallbacks_total", node="general") == 1
    assert ("octogate_route_fallbacks_total", frozenset({("node", "law")})) not in s

    assert value(s, "octogate_history_unavailable_total", operation="load") == 2
    assert value(s, "octogate_history_unavailable_total", operation="save") == 1


def test_buckets_span_llm_calls_and_routing():
    assert (LLM_BUCKETS[0], LLM_BUCKETS[-1]) == (0.005, 120.0)
    assert (ROUTE_BUCKETS[0], ROUTE_BUCKETS[-1]) == (0.001, 5.0)
    assert list(LLM_BUCKETS) == sorted(LLM_BUCKETS) and list(ROUTE_BUCKETS) == sorted(ROUTE_BUCKETS)


@single_process
def test_unknown_model_names_cannot_grow_the_label_set():
    metrics = Metrics(registry=CollectorRegistry())
    for i in range(UNRESOLVED_MODEL_LABELS + 10):
        metrics.request_finished(f"scan-{i}", "", 404, 0.001)
    metrics.request_finished("x" * 10_000, "", 404, 0.001)
    metrics.request_finished("law", "law", 200, 0.1)  # a resolved model keeps its label after the cap

    s = parse(metrics.render()[0])
    models = {dict(labels)["model"] for name, labels in s if name == "octogate_requests_total"}
    assert len(models) == UNRESOLVED_MODEL_LABELS + 2
    assert {OTHER_MODEL, "law"} <= models
    assert value(s, "octogate_requests_total", model=OTHER_MODEL, node="", status="404", key="") == 11


@single_process
def test_a_second_instance_replaces_the_first_on_its_registry():
    registry = CollectorRegistry()
    Metrics(registry=registry).request_finished("law", "law", 200, 0.1)
    metrics = Metrics(registry=registry)  # a second app in the same process: no duplicate error
    metrics.request_finished("law", "law", 500, 0.1)
    s = parse(metrics.render()[0])
    assert value(s, "octogate_requests_total", model="law", node="law", status="500", key="") == 1
    assert ("octogate_requests_total", frozenset({("model", "law"), ("node", "law"), ("status", "200"), ("key", "")})) not in s


@single_process
def test_default_registry_also_carries_the_process_metrics():
    metrics = Metrics()
    metrics.request_started("law")
    s = parse(metrics.render()[0])
    assert value(s, "octogate_requests_in_flight") == 1
    assert any(name.startswith("python_") for name, _ in s)


@single_process
def test_variable_set_after_import_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="imported before"):
        Metrics(registry=CollectorRegistry())


def test_mark_worker_dead_is_a_no_op_in_one_process(monkeypatch):
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    mark_worker_dead(os.getpid())


# --- prepare_multiprocess_dir --------------------------------------------------------------------

@pytest.fixture()
def env(monkeypatch):
    """Restore PROMETHEUS_MULTIPROC_DIR after a test, however prepare_multiprocess_dir changed it."""
    monkeypatch.setenv(MULTIPROC_ENV, "placeholder")
    monkeypatch.delenv(MULTIPROC_ENV)
    return monkeypatch


def test_one_worker_without_the_variable_stays_in_process(env):
    assert prepare_multiprocess_dir(1) is None
    assert MULTIPROC_ENV not in os.environ


def test_several_workers_get_a_fresh_directory(env):
    path = prepare_multiprocess_dir(3)
    try:
        assert os.environ[MULTIPROC_ENV] == path
        assert os.path.isdir(path) and os.listdir(path) == []
        assert prepare_multiprocess_dir(3) == path  # the variable now names it; a second call reuses it
    finally:
        os.rmdir(path)


@pytest.mark.parametrize("workers", [1, 4])
def test_a_named_directory_is_wiped_of_earlier_runs(env, tmp_path, workers):
    path = tmp_path / "prom"
    path.mkdir()
    (path / "counter_4242.db").write_bytes(b"stale")
    (path / "gauge_livesum_4242.db").write_bytes(b"stale")
    (path / "README").write_text("not ours to delete")
    env.setenv(MULTIPROC_ENV, str(path))
    assert prepare_multiprocess_dir(workers) == str(path)
    assert sorted(p.name for p in path.iterdir()) == ["README"]


def test_a_named_directory_is_created(env, tmp_path):
    path = tmp_path / "not" / "yet"
    env.setenv(MULTIPROC_ENV, str(path))
    assert prepare_multiprocess_dir(2) == str(path)
    assert path.is_dir()


# --- several processes ---------------------------------------------------------------------------

# Worker i: 2 + i requests start, 2 finish, so i stay in flight; the rest is the same in every worker.
WORKER = """
import sys
from octogate.gateway.metrics import Metrics
i = int(sys.argv[1])
m = Metrics()
for _ in range(2 + i):
    m.request_started("law")
m.request_finished("law", "law", 200, 0.02)
m.request_finished("law", "law", 200, 3.0)
m.upstream_call("law", "openai-law", 0.5, True)
m.upstream_call("law", "openai-law", 1.5, False)
m.time_to_first_token("law", 0.2)
m.tokens("law", 10, 5)
m.route_decision("law", 0.002, False)
m.route_decision("general", 0.004, True)
m.history_unavailable("load")
print("ready", flush=True)
sys.stdin.readline()
"""

RENDER = """
import sys
from octogate.gateway.metrics import Metrics
body, content_type = Metrics().render()
sys.stdout.write(content_type + "\\n" + body.decode())
"""


def render_in_fresh_interpreter(env: dict[str, str]) -> dict:
    """A fresh interpreter, because prometheus_client fixes its mode when first imported."""
    out = subprocess.run([sys.executable, "-c", RENDER], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    content_type, _, body = out.partition("\n")
    assert content_type == CONTENT_TYPE
    return parse(body.encode())


def assert_traffic_of(s: dict, workers: int) -> None:
    n = workers
    assert value(s, "octogate_requests_total", model="law", node="law", status="200", key="") == 2 * n
    assert buckets(s, "octogate_request_duration_seconds", model="law", node="law") == cumulative(LLM_BUCKETS, [0.02, 3.0] * n)
    assert value(s, "octogate_request_duration_seconds_count", model="law", node="law") == 2 * n
    assert value(s, "octogate_request_duration_seconds_sum", model="law", node="law") == pytest.approx(3.02 * n)
    up = dict(node="law", backend="openai-law")
    assert value(s, "octogate_upstream_duration_seconds_count", **up, outcome="ok") == n
    assert value(s, "octogate_upstream_duration_seconds_count", **up, outcome="error") == n
    assert value(s, "octogate_upstream_duration_seconds_sum", **up, outcome="error") == pytest.approx(1.5 * n)
    assert buckets(s, "octogate_time_to_first_token_seconds", node="law") == cumulative(LLM_BUCKETS, [0.2] * n)
    assert value(s, "octogate_tokens_total", node="law", direction="prompt", key="") == 10 * n
    assert value(s, "octogate_tokens_total", node="law", direction="completion", key="") == 5 * n
    assert buckets(s, "octogate_route_decision_seconds") == cumulative(ROUTE_BUCKETS, [0.002, 0.004] * n)
    assert value(s, "octogate_route_decisions_total", node="law") == n
    assert value(s, "octogate_route_decisions_total", node="general") == n
    assert value(s, "octogate_route_fallbacks_total", node="general") == n
    assert value(s, "octogate_history_unavailable_total", operation="load") == n


def test_workers_sum_and_in_flight_counts_only_live_workers(tmp_path, monkeypatch):
    prom = tmp_path / "prom"
    prom.mkdir()
    env = {**os.environ, MULTIPROC_ENV: str(prom)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(i)], env=env, cwd=REPO, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for i in (1, 2, 3)]
    try:
        for w in workers:
            assert w.stdout.readline() == "ready\n"

        s = render_in_fresh_interpreter(env)
        assert_traffic_of(s, 3)
        assert value(s, "octogate_requests_in_flight") == 1 + 2 + 3

        # The supervisor's bookkeeping for a worker that exits: its in-flight stops counting.
        monkeypatch.setenv(MULTIPROC_ENV, str(prom))
        mark_worker_dead(workers[0].pid)
        s = render_in_fresh_interpreter(env)
        assert_traffic_of(s, 3)
        assert value(s, "octogate_requests_in_flight") == 2 + 3

        # A worker killed outright tells nobody; the next scrape notices it is gone.
        workers[2].kill()
        workers[2].wait(timeout=30)
        s = render_in_fresh_interpreter(env)
        assert_traffic_of(s, 3)  # what it served still counts
        assert value(s, "octogate_requests_in_flight") == 2
    finally:
        for w in workers:
            w.stdin.close()  # a live worker's readline returns and it exits
            w.wait(timeout=30)
            w.stdout.close()
