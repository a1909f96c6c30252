"""agents/sandbox.py: [code] steps run as real sandboxed processes (bubblewrap when the machine allows
it), and hostile code is stopped with its error as the step's text, never an exception."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from octogate.agents.sandbox import HttpExecutor, Sandbox, isolation
from octogate.core.agent_config import ExecutorConfig

CFG = ExecutorConfig(timeout=6, cpu_seconds=2, memory_mb=256, max_processes=16, output_bytes=2000)


def run(code: str, cfg: ExecutorConfig = CFG):
    return asyncio.run(Sandbox(cfg).run(code))


@pytest.fixture
def host_port():
    """A port listening on the host's loopback: sandboxed code must not reach it. (Only loopback: a
    test never aims at an address off this machine, even from inside a network namespace.)"""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def connect_code(port: int) -> str:
    return f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('connected')"


def test_this_machine_gives_bubblewrap():
    # .ci/run installs bubblewrap; the weaker levels are for hosts without user namespaces.
    assert isolation() == "bwrap"


def test_plain_code_runs_and_prints():
    result = run("print(sum(range(101)))")
    assert result.ok and result.output == "5050"


def test_an_infinite_loop_is_stopped_by_the_cpu_limit():
    result = run("while True:\n    pass")
    # Stopped: by the CPU limit (seen as SIGXCPU/SIGKILL, or as a plain failed exit when bubblewrap
    # reports the signal that way) or by the wall clock, never left running.
    assert not result.ok and result.reason in ("cpu", "timeout", "exit")
    assert result.output.startswith("Error:")


def test_a_sleeping_process_is_stopped_by_the_wall_clock():
    result = run("import time\ntime.sleep(60)", ExecutorConfig(timeout=1.5))
    assert result.reason == "timeout" and "longer than 1.5 s" in result.output


def test_a_fork_bomb_hits_the_process_limit():
    result = run("import os\nwhile True:\n    os.fork()")
    assert not result.ok
    assert "Resource temporarily unavailable" in result.output or result.reason in ("timeout", "cpu")


def test_a_memory_hog_runs_out_of_memory():
    result = run("a = []\nwhile True:\n    a.append(bytearray(10**7))")
    assert result.reason == "memory" and "MemoryError" in result.output


@pytest.mark.parametrize("path", ["/usr/evil.txt", "/evil.txt", "/work/main/evil.txt"])
def test_writing_outside_its_directory_fails(path):
    result = run(f"open({path!r}, 'w').write('x')")
    assert not result.ok
    assert "Read-only file system" in result.output or "No such file or directory" in result.output


def test_its_own_directory_and_tmp_are_writable_and_private():
    result = run("open('a.txt', 'w').write('hi')\nopen('/tmp/b', 'w').write('!')\n"
                 "import os\nprint(open('a.txt').read() + open('/tmp/b').read(), sorted(os.listdir('/')))")
    assert result.ok, result.output
    assert result.output.startswith("hi!") and "root" not in result.output and "home" not in result.output


def test_the_host_files_are_not_visible():
    result = run("print(open('/etc/passwd').read())")
    assert not result.ok and "No such file" in result.output


def test_a_socket_cannot_reach_anything(host_port):
    result = run(connect_code(host_port))
    assert not result.ok and "connected" not in result.output.splitlines()[0]
    # its own loopback, not the host's: nothing listens there (refused) or it is down (unreachable)
    assert "Connection refused" in result.output or "Network is unreachable" in result.output


def test_output_is_capped():
    result = run("while True:\n    print('y' * 1000)")
    assert result.reason == "output" and len(result.output) < 3000


def test_the_weaker_fallbacks_still_limit(monkeypatch, host_port):
    # What runs when bubblewrap cannot create namespaces: a network namespace of its own, then rlimits only.
    for level in ("unshare-net", "rlimits"):
        box = Sandbox(CFG)
        box.isolation = level
        result = asyncio.run(box.run("print(6 * 7)"))
        assert result.ok and result.output == "42", (level, result)
        result = asyncio.run(box.run("a = []\nwhile True:\n    a.append(bytearray(10**7))"))
        assert result.reason == "memory", level
    box = Sandbox(CFG)
    box.isolation = "unshare-net"
    result = asyncio.run(box.run(connect_code(host_port)))
    assert "Network is unreachable" in result.output


class _SandboxService(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _SandboxService.received.append({**body, "auth": self.headers.get("Authorization")})
        if body["code"] == "boom":
            self.send_response(500)
            self.end_headers()
            return
        answer = {"stdout": "", "stderr": "ZeroDivisionError: division by zero", "exit_code": 1} \
            if "1/0" in body["code"] else {"stdout": "remote says 42\n", "stderr": "", "exit_code": 0}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_the_http_executor_posts_code_and_reads_json():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SandboxService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = ExecutorConfig(kind="http", url=f"http://127.0.0.1:{server.server_port}/run", api_key="k1")
        ex = HttpExecutor(cfg)
        ok = asyncio.run(ex.run("print(42)"))
        assert ok.ok and ok.output == "remote says 42"
        assert _SandboxService.received[-1] == {"code": "print(42)", "language": "python", "timeout": 10.0,
                                                "auth": "Bearer k1"}
        failed = asyncio.run(ex.run("1/0"))
        assert not failed.ok and "ZeroDivisionError" in failed.output
        refused = asyncio.run(ex.run("boom"))
        assert not refused.ok and "HTTP 500" in refused.output
    finally:
        server.shutdown()
    gone = asyncio.run(HttpExecutor(ExecutorConfig(kind="http", url="http://127.0.0.1:9/run", timeout=1)).run("x"))
    assert not gone.ok and gone.output.startswith("Error: the sandbox service failed")
