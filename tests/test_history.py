"""Conversation history against a real Redis: the one on 127.0.0.1:6379 (each test under its own
key prefix, cleaned up after), and, for outages, a redis-server this module starts and kills."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis

from octogate.gateway.history import (
    ConversationStore,
    HistoryLimits,
    HistoryUnavailable,
    check_conversation_id,
    scope_for_key,
)
from tests.loopback import free_port

LOCAL_URL = "redis://127.0.0.1:6379/0"
SCOPE = scope_for_key("sk-test-key")


@pytest.fixture(scope="module")
def local_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(LOCAL_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("no Redis on 127.0.0.1:6379 (.ci/run starts one)")
    yield client
    client.close()


@pytest.fixture
def prefix(local_redis: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (never FLUSHDB)."""
    value = f"octogate-test:{uuid.uuid4().hex}:"
    yield value
    keys = list(local_redis.scan_iter(match=f"{value}*", count=1000))
    if keys:
        local_redis.delete(*keys)


@asynccontextmanager
async def open_store(url: str = LOCAL_URL, limits: HistoryLimits = HistoryLimits(), **kwargs):
    store = ConversationStore(url, limits, **kwargs)
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# ------------------------------------------------------------------------------------ basics


def test_round_trip(prefix):
    parts = [{"type": "text", "text": "what is in"}, {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]

    async def main():
        async with open_store(key_prefix=prefix) as store:
            assert await store.history(SCOPE, "c1") == []
            assert await store.get(SCOPE, "c1") is None
            assert await store.append(SCOPE, "c1", [{"role": "system", "content": "be brief"}, user("one")], assistant("1"))
            assert await store.append(SCOPE, "c1", [{"role": "user", "content": parts}], assistant("a cat"))
            assert await store.append(SCOPE, "c1", [user("three")], assistant("3"))

            assert await store.history(SCOPE, "c1") == [
                {"role": "system", "content": "be brief"}, user("one"), assistant("1"),
                {"role": "user", "content": parts}, assistant("a cat"),  # content parts kept as sent
                user("three"), assistant("3"),
            ]
            conv = await store.get(SCOPE, "c1")
            assert conv["id"] == "c1" and conv["object"] == "conversation"
            assert [t["messages"] for t in conv["turns"]] == [
                [{"role": "system", "content": "be brief"}, user("one")], [{"role": "user", "content": parts}], [user("three")],
            ]
            assert [t["answer"] for t in conv["turns"]] == [assistant("1"), assistant("a cat"), assistant("3")]
            assert all(isinstance(t["created"], int) and abs(t["created"] - time.time()) < 60 for t in conv["turns"])

            assert await store.delete(SCOPE, "c1") is True
            assert await store.get(SCOPE, "c1") is None
            assert await store.history(SCOPE, "c1") == []
            assert await store.delete(SCOPE, "c1") is False
            assert not store.degraded

    asyncio.run(main())


def test_scopes_isolate_keys(prefix):
    a, b = scope_for_key("sk-alice"), scope_for_key("sk-bob")
    assert a != b and len(a) == 24 and int(a, 16) >= 0
    assert a == scope_for_key("sk-alice")
    assert scope_for_key(None) == scope_for_key("") == "anonymous"

    async def main():
        async with open_store(key_prefix=prefix) as store:
            assert await store.append(a, "shared-id", [user("alice's secret")], assistant("noted"))
            assert await store.history(b, "shared-id") == []
            assert await store.get(b, "shared-id") is None
            assert await store.delete(b, "shared-id") is False
            assert await store.history("anonymous", "shared-id") == []
            assert await store.history(a, "shared-id") == [user("alice's secret"), assistant("noted")]

    asyncio.run(main())


def test_the_raw_key_never_reaches_redis(prefix, local_redis):
    async def main():
        async with open_store(key_prefix=prefix) as store:
            await store.append(scope_for_key("sk-very-secret"), "c", [user("hi")], assistant("hello"))

    asyncio.run(main())
    keys = [k.decode() for k in local_redis.scan_iter(match=f"{prefix}*")]
    assert keys == [f"{prefix}{scope_for_key('sk-very-secret')}:c"]
    assert "sk-very-secret" not in keys[0]


def test_malformed_entries_are_skipped(prefix, local_redis):
    async def main():
        async with open_store(key_prefix=prefix) as store:
            await store.append(SCOPE, "c", [user("one")], assistant("1"))
            local_redis.rpush(store.key(SCOPE, "c"), b"not json", b'{"unexpected": true}')
            await store.append(SCOPE, "c", [user("two")], assistant("2"))
            assert await store.history(SCOPE, "c") == [user("one"), assistant("1"), user("two"), assistant("2")]
            assert len((await store.get(SCOPE, "c"))["turns"]) == 2

    asyncio.run(main())


# ------------------------------------------------------------------------------------ limits


def test_max_turns_bounds_the_prepended_history(prefix):
    async def main():
        async with open_store(limits=HistoryLimits(max_turns=3), key_prefix=prefix) as store:
            for i in range(5):
                assert await store.append(SCOPE, "c", [user(f"q{i}")], assistant(f"a{i}"))
            assert await store.history(SCOPE, "c") == [
                user("q2"), assistant("a2"), user("q3"), assistant("a3"), user("q4"), assistant("a4"),
            ]
            assert len((await store.get(SCOPE, "c"))["turns"]) == 5  # all kept, only fewer prepended

    asyncio.run(main())


def test_max_tokens_drops_the_oldest_turns_first(prefix):
    # Each turn is ~2,000 chars of text, ~500 tokens by the chars/4 estimate (plus a little framing).
    limits = HistoryLimits(max_turns=20, max_tokens=1200)

    async def main():
        async with open_store(limits=limits, key_prefix=prefix) as store:
            for i in range(4):
                assert await store.append(SCOPE, "c", [user(f"q{i}" + "x" * 1000)], assistant(f"a{i}" + "y" * 1000))
            got = await store.history(SCOPE, "c")
            assert [m["content"][:2] for m in got] == ["q2", "a2", "q3", "a3"]

            # A newest turn over the whole budget leaves no room: nothing older is skipped to.
            assert await store.append(SCOPE, "c", [user("q4" + "z" * 6000)], assistant("a4"))
            assert await store.history(SCOPE, "c") == []
            assert await store.append(SCOPE, "c", [user("q5")], assistant("a5"))
            assert await store.history(SCOPE, "c") == [user("q5"), assistant("a5")]

    asyncio.run(main())


def test_stored_turns_are_capped(prefix):
    limits = HistoryLimits(max_turns=2)
    assert limits.stored_turns == 8

    async def main():
        async with open_store(limits=limits, key_prefix=prefix) as store:
            for i in range(11):
                await store.append(SCOPE, "c", [user(f"q{i}")], assistant(f"a{i}"))
            turns = (await store.get(SCOPE, "c"))["turns"]
            assert [t["messages"][0]["content"] for t in turns] == [f"q{i}" for i in range(3, 11)]

    asyncio.run(main())


def test_ttl_is_set_and_refreshed_by_each_write(prefix, local_redis):
    async def main():
        async with open_store(limits=HistoryLimits(ttl_seconds=1000), key_prefix=prefix) as store:
            key = store.key(SCOPE, "c")
            await store.append(SCOPE, "c", [user("one")], assistant("1"))
            assert 990 <= local_redis.ttl(key) <= 1000
            local_redis.expire(key, 5)
            await store.history(SCOPE, "c")  # reading does not count as a write
            assert local_redis.ttl(key) <= 5
            await store.append(SCOPE, "c", [user("two")], assistant("2"))
            assert 990 <= local_redis.ttl(key) <= 1000

    asyncio.run(main())


@pytest.mark.parametrize("kwargs", [{"max_turns": 0}, {"max_tokens": -1}, {"ttl_seconds": 0}])
def test_limits_must_be_positive(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        HistoryLimits(**kwargs)


# ------------------------------------------------------------------------------- concurrency


def test_a_thousand_concurrent_appends_lose_no_turn(prefix):
    limits = HistoryLimits(max_turns=250)  # stores 4 * 250 = 1,000 turns
    markers = [f"turn-{i}-{uuid.uuid4().hex}" for i in range(1000)]

    async def main():
        # Two stores, two connection pools: two gateway replicas writing the same conversation.
        # op_timeout is generous: this test is about atomicity, not latency (1,000 appends are
        # ~0.5 s of CPU for one event loop on a busy 2-core machine).
        async with open_store(limits=limits, key_prefix=prefix, op_timeout=10) as one, \
                open_store(limits=limits, key_prefix=prefix, op_timeout=10) as two:
            results = await asyncio.gather(*(
                (one if i % 2 else two).append(SCOPE, "busy", [user(m)], assistant(f"ok {m}"))
                for i, m in enumerate(markers)
            ))
            assert all(results)
            turns = (await one.get(SCOPE, "busy"))["turns"]
            assert len(turns) == 1000
            assert sorted(t["messages"][0]["content"] for t in turns) == sorted(markers)
            assert all(t["answer"]["content"] == f"ok {t['messages'][0]['content']}" for t in turns)

    asyncio.run(main())


# ---------------------------------------------------------------------------------- outages


class RedisServer:
    """A throwaway redis-server on a port of its own, with no persistence."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(tmp_path)
    yield server
    server.kill()


def _history_log(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "octogate.history" and text in r.getMessage()]


def test_redis_killed_mid_run_then_back(redis_server, caplog):
    caplog.set_level(logging.INFO, logger="octogate.history")
    redis_server.start()

    async def main():
        async with open_store(redis_server.url, op_timeout=0.5, retry_after=0.2) as store:
            assert await store.append(SCOPE, "c", [user("before")], assistant("ok"))
            assert await store.history(SCOPE, "c") == [user("before"), assistant("ok")]
            assert not store.degraded and await store.ping()

            redis_server.kill()
            assert await store.history(SCOPE, "c") is None
            assert store.degraded
            assert await store.append(SCOPE, "c", [user("during")], assistant("lost")) is False
            with pytest.raises(HistoryUnavailable):
                await store.get(SCOPE, "c")
            with pytest.raises(HistoryUnavailable):
                await store.delete(SCOPE, "c")
            assert await store.ping() is False
            # Past retry_after, the breaker lets a probe through, which fails: still degraded.
            await asyncio.sleep(0.3)
            assert await store.history(SCOPE, "c") is None
            assert store.degraded

            redis_server.start()  # same port; no persistence, so the old turns are gone
            deadline = time.monotonic() + 10
            while (got := await store.history(SCOPE, "c")) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert got == []
            assert not store.degraded
            assert await store.append(SCOPE, "c", [user("after")], assistant("back"))
            assert await store.history(SCOPE, "c") == [user("after"), assistant("back")]
            assert await store.ping()

    asyncio.run(main())
    assert len(_history_log(caplog, "is unavailable")) == 1  # once going down, however many calls failed
    assert len(_history_log(caplog, "reachable again")) == 1  # once on recovery
    assert all(r.levelno == logging.WARNING for r in _history_log(caplog, ""))


def test_slow_writes_alone_do_not_open_the_breaker(redis_server):
    # CLIENT PAUSE WRITE holds every write (scripts included) while reads go on: Redis is up,
    # appends are merely slow. (On the private server: pausing the shared one would stall others.)
    redis_server.start()
    admin = redis.Redis(port=redis_server.port)

    async def main():
        async with open_store(redis_server.url, op_timeout=0.3, retry_after=60) as store:
            assert await store.append(SCOPE, "c", [user("one")], assistant("1"))
            admin.client_pause(2000, all=False)  # WRITE mode
            try:
                appended, served = await asyncio.gather(
                    store.append(SCOPE, "c", [user("two")], assistant("2")),
                    store.history(SCOPE, "c"),
                )
                assert appended is False
                assert served == [user("one"), assistant("1")]
                assert not store.degraded
            finally:
                admin.client_unpause()
            assert await store.append(SCOPE, "c", [user("three")], assistant("3"))
            # The timed-out append ran once the pause ended: "False" means "maybe not stored".
            turns = (await store.get(SCOPE, "c"))["turns"]
            assert [t["messages"][0]["content"] for t in turns][0] == "one"
            assert [t["messages"][0]["content"] for t in turns][-1] == "three"

    try:
        asyncio.run(main())
    finally:
        admin.close()


def test_starts_degraded_and_fails_fast_while_the_breaker_is_open(redis_server):
    async def main():
        # Nothing listens on the port yet: start() must not raise.
        async with open_store(redis_server.url, op_timeout=0.5, retry_after=60) as store:
            assert store.degraded
            assert await store.history(SCOPE, "c") is None
            assert await store.append(SCOPE, "c", [user("q")], assistant("a")) is False
            # Redis is up now, but for retry_after the store does not even try: it fails fast.
            redis_server.start()
            assert await store.history(SCOPE, "c") is None
            assert await store.ping() is False
            assert store.degraded

        async with open_store(redis_server.url) as store:
            assert not store.degraded
            assert await store.history(SCOPE, "c") == []

    asyncio.run(main())


def test_a_hanging_redis_is_cut_off_by_op_timeout():
    # A listening socket that never answers: the TCP handshake completes, then silence.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"

        async def main():
            async with open_store(url, op_timeout=0.2, retry_after=0.1) as store:
                assert store.degraded  # start()'s check timed out
                assert await store.history(SCOPE, "c") is None
                await asyncio.sleep(0.15)  # let the breaker allow a probe, which times out too
                assert await store.append(SCOPE, "c", [user("q")], assistant("a")) is False
                assert store.degraded

        asyncio.run(main())


def test_unstarted_store_is_unavailable():
    async def main():
        store = ConversationStore(LOCAL_URL, HistoryLimits())
        assert await store.history(SCOPE, "c") is None
        assert await store.append(SCOPE, "c", [user("q")], assistant("a")) is False
        with pytest.raises(HistoryUnavailable):
            await store.get(SCOPE, "c")

    asyncio.run(main())


# ------------------------------------------------------------------------------ validation

BAD_IDS = ["", "x" * 129, "has space", "a/b", "é", "new\nline", "trailing\n", "*", "a{b}", None, 42]


@pytest.mark.parametrize("conversation_id", BAD_IDS)
def test_invalid_conversation_ids_raise_value_error(prefix, conversation_id):
    async def main():
        async with open_store(key_prefix=prefix) as store:
            for call in (
                lambda: store.history(SCOPE, conversation_id),
                lambda: store.append(SCOPE, conversation_id, [user("q")], assistant("a")),
                lambda: store.get(SCOPE, conversation_id),
                lambda: store.delete(SCOPE, conversation_id),
            ):
                with pytest.raises(ValueError, match="conversation id"):
                    await call()

    asyncio.run(main())
    with pytest.raises(ValueError, match="1 to 128 characters"):
        check_conversation_id(conversation_id)


def test_valid_conversation_ids(prefix):
    ids = ["a", "x" * 128, "conv_2024-01-01.v2:thread-7", "UPPER.lower"]
    assert [check_conversation_id(i) for i in ids] == ids

    async def main():
        async with open_store(key_prefix=prefix) as store:
            for cid in ids:
                assert await store.append(SCOPE, cid, [user(cid)], assistant("ok"))
                assert await store.history(SCOPE, cid) == [user(cid), assistant("ok")]

    asyncio.run(main())


def test_scopes_must_come_from_scope_for_key(prefix):
    async def main():
        async with open_store(key_prefix=prefix) as store:
            with pytest.raises(ValueError, match="scope"):
                await store.history("a:b", "c")  # would alias scope "a", id "b:c"

    asyncio.run(main())
