"""The benchmark's subprocesses: each runs in its own process group with its output in a log
file, is stopped together with its children, and is counted in the one registry of running
processes that ``install_cleanup`` kills on exit, Ctrl-C, SIGTERM or SIGHUP; also the CPU time a
process group has used (from /proc) and the environment subprocesses get (no proxies, no keys
or databases from the shell)."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

# Every Proc that has been started and not stopped yet; the only instance, used by stop_all().
_RUNNING: list[Proc] = []


class Proc:
    """A subprocess in its own process group, logged to a file, stopped with its children."""

    def __init__(self, name: str, cmd: list[str], log: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, cpus: str | None = None):
        self.name = name
        self.log = log
        if cpus is not None:
            cmd = ["taskset", "-c", cpus, *cmd]
        self.cmd = cmd
        self._logf = open(log, "ab")
        self.p = subprocess.Popen(
            cmd, stdout=self._logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
        _RUNNING.append(self)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self in _RUNNING:
            _RUNNING.remove(self)
        try:
            pgid = os.getpgid(self.p.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.p.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue
                # The leader is gone; make sure no child of it outlives it (uvicorn workers...).
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._logf.close()

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process in this process group (workers included)."""
        return group_cpu_seconds(self.p.pid)

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu_seconds(pgid: int) -> float:
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After "(comm)": state ppid pgrp ... utime(14th field) stime(15th) -> indexes 11, 12 here.
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLK_TCK


def stop_all() -> None:
    for proc in list(reversed(_RUNNING)):
        proc.stop(grace=3.0)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Turn Ctrl-C, SIGTERM and SIGHUP into exceptions and stop every running Proc at exit."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(stop_all)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        # Loopback must never be routed through a proxy; keys/DBs from the shell must not leak in.
        if k.lower() in {"http_proxy", "https_proxy", "all_proxy"} or k in {
            "OCTOGATE_API_KEYS", "DATABASE_URL", "LITELLM_MASTER_KEY", "REDIS_URL", "REDIS_HOST",
        }:
            del env[k]
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env
