"""A client that trickles or bloats its request cannot hold the gateway: raw sockets against a real
``octogate serve`` whose ``server.http`` limits are short."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.conftest import scripted_graph


@pytest.fixture(scope="module")
def gw(upstream, gateway_factory):
    return gateway_factory(scripted_graph(upstream, http={"header_timeout": 1, "body_timeout": 1,
                                                          "max_header_bytes": 4096}))


def _connect(gw) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return out
        if not data:
            return out
        out += data


def test_half_a_request_line_gets_408(gw):
    with _connect(gw) as s:
        s.sendall(b"POST /v1/chat/comp")
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"code": "request_timeout"' in answer


def test_a_silent_connection_is_closed(gw):
    with _connect(gw) as s:
        answer = _read_all(s)  # returns once the gateway closes it
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_half_the_headers_get_408(gw):
    with _connect(gw) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: applic")
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_half_a_body_gets_408(gw):
    with _connect(gw) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"model\": ")
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"stalled" in answer


@pytest.mark.parametrize("size", [8 * 1024, 10 * 1024 * 1024])
def test_oversized_headers_get_431(gw, size):
    with _connect(gw) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < size:  # stops as soon as the gateway has answered and closed
                s.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_normal_requests_are_untouched(gw):
    # headers and body in pieces, each within the limits; keep-alive requests one after another
    with httpx.Client(base_url=gw.url) as client:
        for _ in range(3):
            resp = client.post("/v1/chat/completions", json={"model": "plain",
                                                             "messages": [{"role": "user", "content": "hi"}]})
            assert resp.status_code == 200
    with _connect(gw) as s:
        body = b'{"model": "plain", "messages": [{"role": "user", "content": "hi"}]}'
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        s.sendall(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        s.sendall(body[:10])
        s.sendall(body[10:])
        answer = _read_all(s)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
