"""uvicorn's HTTP/1.1 protocol with the limits a gateway facing the open network needs.

uvicorn alone lets a client hold a connection forever with half a request line, half its headers
or half its body, and buffers headers of any size. Here, per connection:

- the request line and headers must arrive within ``header_timeout`` seconds of the connection
  (or of the request's first byte on a kept-alive connection), else 408 and close;
- they may take ``max_header_bytes`` at most, else 431 and close;
- once the headers are in, each piece of the body must follow the last within ``body_timeout``,
  else the request is cancelled (the app sees the client go) and the client gets 408.

The limits come from the graph's ``server.http`` through ``OCTOGATE_HTTP_LIMITS`` (JSON), which
``octogate serve`` sets before uvicorn starts its workers; the cap on open connections and the
keep-alive timeout are uvicorn's own settings (``limit_concurrency``, ``timeout_keep_alive``).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

LIMITS_ENV = "OCTOGATE_HTTP_LIMITS"
_DEFAULTS = {"max_header_bytes": 64 * 1024, "header_timeout": 10.0, "body_timeout": 30.0}
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _limits() -> dict[str, Any]:
    raw = os.environ.get(LIMITS_ENV)
    return {**_DEFAULTS, **(json.loads(raw) if raw else {})}


class LimitedHttpProtocol(HttpToolsProtocol):
    _settings: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if LimitedHttpProtocol._settings is None:
            LimitedHttpProtocol._settings = _limits()
        limits = LimitedHttpProtocol._settings
        self.max_header_bytes: int = limits["max_header_bytes"]
        self.header_timeout: float = limits["header_timeout"]
        self.body_timeout: float = limits["body_timeout"]
        self._header_bytes = 0
        self._awaiting_headers = True
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ timers
    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` in OpenAI's error envelope and close, unless a response has begun."""
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not self._awaiting_headers:  # a request is being read
            if cycle.response_started:  # too late for a status: just end the connection
                self.transport.close()
                return
            cycle.disconnected = True  # the app, waiting for the body, sees the client go
            cycle.message_event.set()
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                     "code": "request_timeout" if status == 408 else "headers_too_large"}}).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body)) + body)
        self.transport.close()

    def _headers_too_slow(self) -> None:
        if self._awaiting_headers:
            self._refuse(408, f"The request line and headers did not arrive within {self.header_timeout:g}s.")

    def _body_too_slow(self) -> None:
        self._refuse(408, f"The request body stalled for {self.body_timeout:g}s.")

    # ------------------------------------------------------------------ protocol hooks
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                head = data.find(b"\r\n\r\n")
                if head < 0 or self._header_bytes - len(data) + head > self.max_header_bytes:
                    self._refuse(431, f"The request's headers exceed {self.max_header_bytes} bytes.")
                    return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._awaiting_headers:  # a further request on a kept-alive connection
            self._awaiting_headers = True
            self._header_bytes = 0
            self._arm(self.header_timeout, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._arm(self.body_timeout, self._body_too_slow)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._arm(self.body_timeout, self._body_too_slow)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
