"""Fixtures: a scripted upstream on loopback, and real ``octogate serve`` processes in front of it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.loopback import free_port
from tests.upstream import ScriptedUpstream

REPO = Path(__file__).resolve().parent.parent
OCTOGATE = [sys.executable, "-m", "octogate.gateway.cli"]


@pytest.fixture(scope="session")
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream().start()
    yield server
    server.stop()


class Gateway:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def client(self, api_key: str = "unused", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_gateway(config: Path, log: Path, env: dict[str, str] | None = None, timeout: float = 90,
                  workers: int = 1) -> Gateway:
    port = free_port()
    out = log.open("wb")
    proc = subprocess.Popen(
        [*OCTOGATE, "serve", "--config", str(config), "--port", str(port), "--workers", str(workers)],
        cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    gw = Gateway(proc, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"octogate exited with {proc.returncode}:\n{gw.output()}")
        try:
            if httpx.get(f"{gw.url}/healthz", timeout=1).status_code == 200:
                return gw
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    gw.stop()
    raise RuntimeError(f"octogate did not become healthy:\n{gw.output()}")


@pytest.fixture(scope="session")
def gateway_factory(tmp_path_factory) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(graph: dict, env: dict[str, str] | None = None, workers: int = 1) -> Gateway:
        d = tmp_path_factory.mktemp("gw")
        config = d / "graph.yaml"
        config.write_text(yaml.safe_dump(graph))
        gw = start_gateway(config, d / "octogate.log", env, workers=workers)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def default_graph_gateway(tmp_path: Path, *, toolsets: bool = True) -> Gateway:
    """``config/default.yaml`` served from ``tmp_path``, without its router (routing not under test);
    its toolsets kept (their tools file made absolute) or dropped (the general tool-calling path)."""
    graph = yaml.safe_load((REPO / "config" / "default.yaml").read_text())
    graph.pop("router", None)
    if toolsets:
        graph["toolsets"]["assistant"]["tools"] = str(REPO / "config" / "toolsets" / "assistant.json")
    else:
        graph.pop("toolsets", None)
    (tmp_path / "graph.yaml").write_text(yaml.safe_dump(graph))
    return start_gateway(tmp_path / "graph.yaml", tmp_path / "octogate.log")


def streamed_tool_calls(chunks) -> dict[int, dict]:
    """Tool-call deltas of streamed chunks put together per ``index``: {"id", "name", "arguments"}."""
    calls: dict[int, dict] = {}
    for c in chunks:
        for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            slot = calls.setdefault(d.index, {"id": d.id, "name": d.function.name, "arguments": ""})
            slot["arguments"] += d.function.arguments or ""
    return calls


def scripted_graph(upstream: ScriptedUpstream, **server) -> dict:
    """A graph whose nodes all point at the scripted upstream, each asking it for one behaviour."""

    def node(name: str, model: str, **extra) -> dict:
        return {"name": name, "backend": {"model": f"openai/{model}", "api_base": upstream.base_url,
                                          "api_key": "upstream-secret", "timeout": 2}, **extra}

    return {
        "server": server,
        "nodes": [
            node("echo", "echo", description="echoes", token=0, persona="You are the echo persona.",
                 params={"temperature": 0.3, "max_tokens": 77}),
            node("plain", "echo", token=1),
            node("ratelimit", "ratelimit"),
            node("broken", "broken"),
            node("badparam", "badparam"),
            node("slow", "slow"),
            node("dies", "dies"),
            node("endless", "endless"),
            {"name": "via-litellm", "persona": "You are the litellm persona.",
             "backend": {"model": "openai/echo", "api_base": upstream.base_url, "api_key": "upstream-secret",
                         "adapter": "litellm", "timeout": 2}},
        ],
    }


@pytest.fixture(scope="session")
def gateway(upstream, gateway_factory) -> Gateway:
    return gateway_factory(scripted_graph(upstream, max_body_bytes=64 * 1024))


@pytest.fixture()
def client(gateway) -> openai.OpenAI:
    return gateway.client()
