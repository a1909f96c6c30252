"""HTTP on 127.0.0.1 for the benchmark's own requests (readiness checks, preflights, nginx's
counter): a free port to listen on, one request at a time through an opener that never uses a
proxy, carrying the run's bearer key when there is one, and polling until a started process
answers or dies."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from typing import Any

from .subprocesses import Proc

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy

# The bearer key both proxies require (a fresh one per run), or None with --auth off. Read and set
# it only through auth_key() / set_auth_key(), so every module sees the same value.
_AUTH_KEY: str | None = None


def auth_key() -> str | None:
    return _AUTH_KEY


def set_auth_key(key: str | None) -> None:
    global _AUTH_KEY
    _AUTH_KEY = key


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=body.encode() if body is not None else None)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if _AUTH_KEY:
        req.add_header("Authorization", f"Bearer {_AUTH_KEY}")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(proc: Proc | None, check, timeout: float, what: str) -> Any:
    """Poll ``check()`` until it returns a truthy value; fail early if the process died."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what} exited with code {proc.p.returncode} before it was ready:\n{proc.tail()}")
        try:
            ok = check()
            if ok:
                return ok
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        time.sleep(0.25)
    tail = f"\n{proc.tail()}" if proc is not None else ""
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s (last error: {last}){tail}")
