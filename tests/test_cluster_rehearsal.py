"""The Kubernetes deployment rehearsed on one machine: three real ``octogate serve`` replicas behind
nginx (Debian's, as a non-daemon subprocess on a loopback port) and the Redis on 127.0.0.1:6379,
in front of a scripted OpenAI-compatible upstream and an SGLang-protocol router double.

- a conversation continues whichever replica answers each turn;
- a routing decision made by one replica is reused by the others (the Redis route cache);
- a replica taken out of rotation and sent SIGTERM under load drains: the request it is serving
  completes, and no request fails. This is the order Kubernetes follows (the pod leaves the
  Service's endpoints while preStop sleeps, then SIGTERM); here nginx's reload plays the endpoint
  update. Then the dead replica is put back into nginx's list, as a crashed pod would still be
  listed for a moment, and nginx's `proxy_next_upstream error` sends the refused requests to the
  others: still no failed request.

- a key's rate limit holds across the replicas: its budget is counted in the one Redis.

Everything listens on 127.0.0.1; the keys live in Redis database 13 under a per-run prefix and are
deleted afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import redis
import yaml
from aiohttp import web

from tests.conftest import Gateway, start_gateway
from tests.loopback import free_port
from tests.sglang_server import SGLangDouble
from tests.upstream import ScriptedUpstream, wait_until

REDIS_DB = 13
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
REPLICAS = 3
LOAD = 100           # requests per load phase (two phases: 200 in all)
CONCURRENCY = 8
KEY = {"Authorization": "Bearer rehearsal-key"}  # no budget of its own
TEAM_A = {"Authorization": "Bearer team-a-key"}  # 5 requests a minute, across the replicas


class HeldUpstream(ScriptedUpstream):
    """The scripted upstream, plus model ``held``: its answer waits until the test releases it
    (at most 30 s), so a replica can be shut down while it is known to be serving a request."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.held_received = 0

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())  # aiohttp keeps the body: the base class reads it again
        if body.get("model") != "held":
            return await super()._chat(request)
        self.held_received += 1
        for _ in range(600):
            if self.release.is_set():
                break
            await asyncio.sleep(0.05)
        return web.json_response({
            "id": "chatcmpl-held", "object": "chat.completion", "created": 1, "model": "held",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "released"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


class Nginx:
    """nginx in front of the replicas: round robin from one worker process (so consecutive requests
    go to consecutive replicas), a response header naming the replica(s) each request went to."""

    def __init__(self, tmp: Path, replicas: list[Gateway]):
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            pytest.fail("nginx is not installed: apt-get install -y nginx (.ci/run does)")
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = tmp / "nginx.conf"
        self.write({gw.port: "" for gw in replicas})
        cmd = [binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(self.conf)]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        self.log = (tmp / "nginx.out").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_until(lambda: self._answers(), 15), f"nginx did not start:\n{self.errors()}"

    def write(self, servers: dict[int, str]) -> None:
        """servers: {port: extra server parameters, e.g. "down"}."""
        upstream = "".join(f"        server 127.0.0.1:{port} {extra};\n" for port, extra in servers.items())
        t = self.tmp
        self.conf.write_text(f"""\
daemon off;
worker_processes 1;
pid {t}/nginx.pid;
error_log {t}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {t}/access.log;
    client_body_temp_path {t}/client-body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    upstream octogate {{
{upstream}    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://octogate;
            # A refused connection sent nothing, so even a POST goes on to the next replica.
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries {REPLICAS};
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            proxy_buffering off;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
""")

    def reload(self, servers: dict[int, str]) -> None:
        """New configuration; returns once a new worker serves it (the old one finishes its requests)."""
        before = self.workers()
        self.write(servers)
        self.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: bool(self.workers() - before), 15), f"nginx did not reload:\n{self.errors()}"

    def workers(self) -> set[int]:
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:  # ppid
                children.add(int(stat.parent.name))
        return children

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def errors(self) -> str:
        path = self.tmp / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@dataclass
class Cluster:
    upstream: HeldUpstream
    router: SGLangDouble
    replicas: list[Gateway]
    nginx: Nginx
    run: str

    def post(self, model: str, text: str, headers: dict[str, str] | None = None) -> httpx.Response:
        # A new connection per request (no keep-alive), as from many clients.
        return httpx.post(f"{self.nginx.url}/v1/chat/completions", headers={**KEY, **(headers or {})}, timeout=60,
                          json={"model": model, "messages": [{"role": "user", "content": text}]})

    def addr(self, gw: Gateway) -> str:
        return f"127.0.0.1:{gw.port}"


def rehearsal_graph(upstream: ScriptedUpstream, router_url: str, run: str) -> dict:
    def node(name: str, token: int | None, model: str = "echo") -> dict:
        n = {"name": name, "description": f"{name} (rehearsal {run})", "persona": f"You are the {name} persona.",
             "backend": {"model": f"openai/{model}", "api_base": upstream.base_url, "timeout": 30}}
        return n if token is None else {**n, "token": token}

    return {
        "server": {"api_keys": [{"name": "rehearsal", "key": "rehearsal-key"},
                                {"name": "team-a", "key": "team-a-key", "requests_per_minute": 5}],
                   "rate_limits": {"redis_url": REDIS_URL, "key_prefix": f"octogate:rehearsal:{run}:rl"}},
        "history": {"redis_url": REDIS_URL, "key_prefix": f"octogate:rehearsal:{run}:conv:", "ttl_seconds": 600},
        "router": {"engine": "sglang", "base_url": router_url, "mode": "select", "timeout": 2, "fallback": "general",
                   "cache": {"redis_url": REDIS_URL, "ttl_seconds": 600}},
        "nodes": [node("physics", 0), node("math", 4), node("general", 16), node("held", None, "held")],
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    run = uuid.uuid4().hex[:12]
    upstream = HeldUpstream().start()
    router = SGLangDouble().start()
    tmp = tmp_path_factory.mktemp("cluster")
    (tmp / "graph.yaml").write_text(yaml.safe_dump(rehearsal_graph(upstream, router.base_url, run)))
    replicas: list[Gateway] = []
    nginx = None
    try:
        for i in range(REPLICAS):
            # As in the manifests: the Redis URL from the environment (it overrides the graph's).
            replicas.append(start_gateway(tmp / "graph.yaml", tmp / f"replica-{i}.log", {"OCTOGATE_REDIS_URL": REDIS_URL}))
        for gw in replicas:  # the readiness probe: backends, router and Redis answer
            assert wait_until(lambda: httpx.get(f"{gw.url}/readyz", timeout=10).json().get("status") == "ready", 30), \
                httpx.get(f"{gw.url}/readyz", timeout=10).text
        nginx = Nginx(tmp, replicas)
        yield Cluster(upstream, router, replicas, nginx, run)
    finally:
        upstream.release.set()
        if nginx is not None:
            nginx.stop()
        for gw in replicas:
            gw.stop()
        router.stop()
        upstream.stop()
        r = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        for pattern in (f"octogate:rehearsal:{run}:*", "octogate:route:*"):
            for key in r.scan_iter(pattern):
                r.delete(key)


def test_a_keys_rate_limit_holds_across_the_replicas(cluster):
    answers = [cluster.post("general", f"budget {i}", TEAM_A) for i in range(8)]
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 3
    assert len({r.headers["x-upstream"] for r in answers[:5]}) > 1, "the budget was spent on several replicas"
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers[:5]] == ["4", "3", "2", "1", "0"]
    assert answers[5].json()["error"]["code"] == "rate_limit_exceeded"
    assert cluster.post("general", "another key", KEY).status_code == 200


def test_a_conversation_continues_whichever_replica_answers(cluster):
    conversation = f"rehearsal-{cluster.run}"
    turns = ["My name is Ada.", "I write compilers.", "What do you know about me?"]
    answered_by = []
    for text in turns:
        resp = cluster.post("general", text, {"X-Conversation-Id": conversation})
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == f"echo: {text}"
        answered_by.append(resp.headers["x-upstream"])
    assert sorted(answered_by) == sorted(cluster.addr(gw) for gw in cluster.replicas)  # one turn each
    # The third replica sent the upstream the two turns the other two stored.
    sent = [(m["role"], m["content"]) for m in cluster.upstream.state.last().body["messages"]]
    assert sent == [("system", "You are the general persona."),
                    ("user", turns[0]), ("assistant", f"echo: {turns[0]}"),
                    ("user", turns[1]), ("assistant", f"echo: {turns[1]}"),
                    ("user", turns[2])]
    # Every replica reads the same stored conversation.
    for gw in cluster.replicas:
        stored = httpx.get(f"{gw.url}/v1/conversations/{conversation}", headers=KEY, timeout=10)
        assert stored.status_code == 200 and len(stored.json()["turns"]) == 3


def test_a_routing_decision_made_by_one_replica_is_reused_by_the_others(cluster):
    cluster.router.reset(text="<nexa_4>")
    query = f"What is the integral of 2x? ({cluster.run})"
    answered_by = []
    for _ in range(REPLICAS):
        resp = cluster.post("octopus", query)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-octogate-node"] == "math" and resp.headers["x-octogate-token"] == "<nexa_4>"
        answered_by.append(resp.headers["x-upstream"])
    assert len(set(answered_by)) == REPLICAS
    assert len(cluster.router.requests) == 1  # decided once, by the first replica
    # One decision in Redis for this query (keys end with the query's SHA-256).
    digest = hashlib.sha256(query.encode()).hexdigest()
    assert len(list(redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).scan_iter(f"octogate:route:*{digest}"))) == 1


def run_load(cluster: Cluster, label: str, after: tuple[int, threading.Event] | None = None) -> list[httpx.Response | BaseException]:
    """LOAD echo requests through nginx from CONCURRENCY threads; every outcome is returned.
    ``after``: (n, event) sets the event once n requests have completed."""
    done = 0
    lock = threading.Lock()

    def one(i: int) -> httpx.Response | BaseException:
        nonlocal done
        try:
            return cluster.post("physics", f"{label} request {i}")
        except httpx.HTTPError as exc:
            return exc
        finally:
            with lock:
                done += 1
                if after is not None and done >= after[0]:
                    after[1].set()

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(one, range(LOAD)))


def failures(results: list[httpx.Response | BaseException], label: str) -> list[str]:
    bad = []
    for i, r in enumerate(results):
        if isinstance(r, BaseException):
            bad.append(f"{i}: {r!r}")
        elif r.status_code != 200 or r.json()["choices"][0]["message"]["content"] != f"echo: {label} request {i}":
            bad.append(f"{i}: {r.status_code} via {r.headers.get('x-upstream')}: {r.text[:200]}")
    return bad


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def test_a_replica_drains_under_load_without_a_failed_request(cluster):
    victim = cluster.replicas[0]
    servers = {gw.port: "" for gw in cluster.replicas}
    with ThreadPoolExecutor(REPLICAS) as held_pool:
        # One request held in every replica (round robin), answered only when the test says so.
        held = [held_pool.submit(cluster.post, "held", f"held {i}") for i in range(REPLICAS)]
        assert wait_until(lambda: cluster.upstream.held_received == REPLICAS, 15)

        started = threading.Event()
        with ThreadPoolExecutor(1) as load_pool:
            phase_a = load_pool.submit(run_load, cluster, "A", (20, started))
            assert started.wait(60), "the load did not get going"
            # What Kubernetes does: out of the Service's endpoints (preStop keeps the pod running
            # meanwhile; here a second for requests already on their way), then SIGTERM.
            cluster.nginx.reload({**servers, victim.port: "down"})
            time.sleep(1)
            victim.proc.send_signal(signal.SIGTERM)
            # uvicorn stops accepting at once, and keeps serving the request it holds.
            assert wait_until(lambda: refuses(victim.port), 15), victim.output()
            assert victim.proc.poll() is None, "the replica exited with a request in flight"
            cluster.upstream.release.set()
            results_a = phase_a.result(timeout=300)
        answers = [f.result(timeout=60) for f in held]
    # A clean exit: uvicorn finishes its shutdown, then re-raises the SIGTERM it caught.
    assert victim.proc.wait(30) in (0, -signal.SIGTERM), victim.output()
    assert "Application shutdown complete." in victim.output() and "Finished server process" in victim.output()

    assert failures(results_a, "A") == [], cluster.nginx.errors()
    assert [r.status_code for r in answers] == [200] * REPLICAS
    assert sorted(r.headers["x-upstream"] for r in answers) == sorted(cluster.addr(gw) for gw in cluster.replicas)
    # The drained replica answered the request it held after SIGTERM.
    assert [r.json()["choices"][0]["message"]["content"] for r in answers
            if r.headers["x-upstream"] == cluster.addr(victim)] == ["released"]

    # A dead replica still in the list (a crashed pod before its endpoint goes): refused
    # connections go on to the others.
    cluster.nginx.reload(servers)
    results_b = run_load(cluster, "B")
    assert failures(results_b, "B") == [], cluster.nginx.errors()
    retried = [r.headers["x-upstream"] for r in results_b if "," in r.headers["x-upstream"]]
    assert retried and all(h.startswith(cluster.addr(victim) + ",") for h in retried)
    assert cluster.addr(victim) not in {h.split(", ")[-1] for r in results_b for h in [r.headers["x-upstream"]]}
