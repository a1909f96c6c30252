"""Prometheus metrics for the gateway, correct however many uvicorn workers serve it.

With one worker the metrics are plain objects in the process's registry. With several, each
worker is its own process and a scrape reaches only one of them, so prometheus_client's
multiprocess mode is used: every worker writes its values to mmap files under
$PROMETHEUS_MULTIPROC_DIR, and whichever worker answers ``GET /metrics`` merges all the files.

prometheus_client picks its mode once, when ``prometheus_client.values`` is first imported, from
whether PROMETHEUS_MULTIPROC_DIR is set at that moment. Hence the order:

1. ``octogate serve`` calls ``prepare_multiprocess_dir(workers)`` in the parent, before uvicorn
   starts any worker;
2. uvicorn spawns fresh worker interpreters, which inherit the variable and so import
   prometheus_client in multiprocess mode;
3. each worker builds its ``Metrics()`` in the app factory, never at import time: with one
   worker the parent is the worker, and metrics built on import would write into files that
   step 1 then wipes.

``Metrics()`` refuses to start when the variable and the library's mode disagree, since the
numbers would otherwise silently cover one worker only.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import tempfile
import weakref

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# generate_latest writes the classic text format; Prometheus 3 refuses a bare "text/plain".
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# An LLM call takes from a cached few milliseconds to a long generation of minutes.
LLM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# A routing decision is a lookup or one small classifier pass.
ROUTE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# ``model`` is whatever the client sent. Names that resolved to a node are bounded by the graph;
# the others (typos, scans) keep their own label only up to this many per process, then share one.
UNRESOLVED_MODEL_LABELS = 32
OTHER_MODEL = "(other)"  # outside the node-name pattern, so it cannot collide with a node
_MODEL_LABEL_CHARS = 64


def prepare_multiprocess_dir(workers: int) -> str | None:
    """Give the workers about to start a fresh, empty metrics directory; return it.

    Called by the parent before any worker exists. A directory named in the environment is
    created if missing and wiped of earlier runs' ``*.db`` files (their counters would otherwise
    be added to this run's); without one, several workers get a new temporary directory, removed
    when the parent exits. One worker and no variable: None, the plain in-process registry.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    elif workers > 1:
        path = tempfile.mkdtemp(prefix="octogate-metrics-")
        _remove_at_exit(path)
    else:
        return None
    os.environ[MULTIPROC_ENV] = path
    return path


def _remove_at_exit(path: str) -> None:
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not in a forked child that inherited the handler
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)


def mark_worker_dead(pid: int) -> None:
    """Stop counting a finished worker's live gauges (its in-flight requests); its counters stay."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        try:
            multiprocess.mark_process_dead(pid, path)
        except FileNotFoundError:  # another worker's scrape removed it first
            pass


def _forget_dead_workers(path: str) -> None:
    """mark_worker_dead for every worker that is gone without saying so.

    uvicorn has no per-worker exit hook, and a crashed or killed worker runs no shutdown code,
    so each scrape checks the pids behind the live-gauge files and drops the dead ones.
    """
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = os.path.basename(name)[: -len(".db")].rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            mark_worker_dead(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _multiprocess_dir() -> str | None:
    """This process's metrics directory, or None; raise if prometheus_client's mode disagrees."""
    path = os.environ.get(MULTIPROC_ENV) or None
    multiprocess_mode = values.ValueClass is not values.MutexValue
    if path and not multiprocess_mode:
        raise RuntimeError(
            f"{MULTIPROC_ENV} is set, but prometheus_client was imported before it was, so this "
            "process's metrics would not be shared with the other workers. Set it before the "
            "process starts (octogate serve does so, via prepare_multiprocess_dir, before the workers)."
        )
    if multiprocess_mode and not path:
        raise RuntimeError(f"prometheus_client is in multiprocess mode but {MULTIPROC_ENV} is now unset or empty.")
    if path and not os.path.isdir(path):
        raise RuntimeError(f"{MULTIPROC_ENV}={path} is not a directory.")
    return path


class Metrics:
    """Every metric the gateway exports, recorded through one small method per event.

    One instance per process, built in the app factory. Building another on the same registry
    (tests that create several apps) replaces the first instead of failing as a duplicate.
    ``node`` is "" when the request never reached one; ``status`` is the HTTP status.
    """

    _installed: weakref.WeakKeyDictionary[CollectorRegistry, list] = weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._multiproc_dir = _multiprocess_dir()
        self.registry = REGISTRY if registry is None else registry
        for collector in self._installed.pop(self.registry, ()):
            self.registry.unregister(collector)
        r = self.registry
        self._requests = Counter("octogate_requests_total", "Chat completion requests answered.",
                                 ("model", "node", "status", "key"), registry=r)
        self._duration = Histogram("octogate_request_duration_seconds", "Time from request to complete answer.",
                                   ("model", "node"), buckets=LLM_BUCKETS, registry=r)
        self._in_flight = Gauge("octogate_requests_in_flight", "Chat completion requests being served.",
                                multiprocess_mode="livesum", registry=r)
        self._upstream = Histogram("octogate_upstream_duration_seconds", "Time spent in a backend call.",
                                   ("node", "backend", "outcome"), buckets=LLM_BUCKETS, registry=r)
        self._ttft = Histogram("octogate_time_to_first_token_seconds", "Time until a stream's first chunk.",
                               ("node",), buckets=LLM_BUCKETS, registry=r)
        self._tokens = Counter("octogate_tokens_total", "Tokens reported by the backends.",
                               ("node", "direction", "key"), registry=r)
        self._replica_in_flight = Gauge("octogate_replica_requests_in_flight", "Calls in flight to one replica.",
                                        ("backend", "replica"), multiprocess_mode="livesum", registry=r)
        self._replica_outcomes = Counter("octogate_replica_outcomes_total",
                                         "Calls to one replica, by outcome (ok, backend_error, backend_timeout, "
                                         "rate_limited).", ("backend", "replica", "outcome"), registry=r)
        self._fallbacks = Counter("octogate_fallbacks_total", "Requests a fallback node answered because every "
                                  "replica of the node asked for had failed.", ("from", "to", "reason"), registry=r)
        self._rate_limited = Counter("octogate_rate_limited_total", "Requests refused for a key's rate limit.",
                                     ("key", "limit"), registry=r)
        self._rate_limit_unchecked = Counter("octogate_rate_limit_unchecked_total",
                                             "Requests let through unchecked because the rate-limit store was down.",
                                             registry=r)
        self._route_seconds = Histogram("octogate_route_decision_seconds", "Time the router took to choose a node.",
                                        buckets=ROUTE_BUCKETS, registry=r)
        self._route_decisions = Counter("octogate_route_decisions_total", "Router decisions, by chosen node.",
                                        ("node",), registry=r)
        self._route_fallbacks = Counter("octogate_route_fallbacks_total",
                                        "Router decisions that fell back to a default node.", ("node",), registry=r)
        self._history = Counter("octogate_history_unavailable_total",
                                "Conversation-history operations skipped because the store was down or slow.",
                                ("operation",), registry=r)
        self._installed[r] = [self._requests, self._duration, self._in_flight, self._upstream, self._ttft,
                              self._tokens, self._route_seconds, self._route_decisions, self._route_fallbacks,
                              self._history, self._replica_in_flight, self._replica_outcomes, self._fallbacks,
                              self._rate_limited, self._rate_limit_unchecked]
        self._unresolved_models: set[str] = set()

    def request_started(self, model: str) -> None:
        """One more request in flight. The gauge is a single series: ``model`` is raw client
        input at this point, and a per-model split is in octogate_requests_total."""
        self._in_flight.inc()

    def request_finished(self, model: str, node: str, status: int, seconds: float, key: str = "") -> None:
        """``key``: the caller's key name (never the key itself); "" when keys are off or unknown."""
        self._in_flight.dec()
        model = self._model_label(model, node)
        self._requests.labels(model, node, str(status), key).inc()
        self._duration.labels(model, node).observe(seconds)

    def upstream_call(self, node: str, backend: str, seconds: float, ok: bool) -> None:
        self._upstream.labels(node, backend, "ok" if ok else "error").observe(seconds)

    def time_to_first_token(self, node: str, seconds: float) -> None:
        self._ttft.labels(node).observe(seconds)

    def tokens(self, node: str, prompt: int, completion: int, key: str = "") -> None:
        # A counter refuses negative increments; a backend's odd usage must not fail the request.
        if prompt > 0:
            self._tokens.labels(node, "prompt", key).inc(prompt)
        if completion > 0:
            self._tokens.labels(node, "completion", key).inc(completion)

    # The ReplicaObserver of adapters/replicas.py.
    def replica_in_flight(self, backend: str, replica: str, delta: int) -> None:
        self._replica_in_flight.labels(backend, replica).inc(delta)

    def replica_outcome(self, backend: str, replica: str, outcome: str) -> None:
        self._replica_outcomes.labels(backend, replica, outcome).inc()

    def fallback(self, from_node: str, to_node: str, reason: str) -> None:
        self._fallbacks.labels(from_node, to_node, reason).inc()

    def rate_limited(self, key: str, limit: str) -> None:
        self._rate_limited.labels(key, limit).inc()

    def rate_limit_unchecked(self) -> None:
        self._rate_limit_unchecked.inc()

    def route_decision(self, node: str, seconds: float, fallback: bool) -> None:
        self._route_seconds.observe(seconds)
        self._route_decisions.labels(node).inc()
        if fallback:
            self._route_fallbacks.labels(node).inc()

    def history_unavailable(self, operation: str) -> None:
        self._history.labels(operation).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type: this process's registry, or with several
        workers every worker's files merged (live gauges summed over the workers still alive)."""
        if self._multiproc_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE
        _forget_dead_workers(self._multiproc_dir)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._multiproc_dir)
        return generate_latest(registry), CONTENT_TYPE

    def _model_label(self, model: str, node: str) -> str:
        if node:
            return model
        model = model[:_MODEL_LABEL_CHARS]
        if model not in self._unresolved_models:
            if len(self._unresolved_models) >= UNRESOLVED_MODEL_LABELS:
                return OTHER_MODEL
            self._unresolved_models.add(model)
        return model
