"""Running a ``[code]`` step's Python where it cannot hurt the gateway or the host.

Two executor kinds (``agents.<name>.executor.kind``):

``local``: each run is a separate process, started as::

    prlimit --cpu --as --nproc --fsize --nofile -- [setpriv --reuid nobody] bwrap ... python3 -I -c CODE

- **bubblewrap** (``bwrap``, Debian's ``bubblewrap``): new user, PID, network, IPC, UTS and
  cgroup namespaces (``--unshare-all``: no network interface but loopback, which nothing listens
  on), ``/usr`` bound read-only (with ``/bin``, ``/lib``... as on the host), a fresh ``/proc`` and
  minimal ``/dev``, a private tmpfs ``/tmp`` and working directory ``/sandbox`` of ``disk_mb`` each,
  the root remounted read-only, ``--die-with-parent`` and ``--new-session``. Nothing of the host's
  ``/home``, ``/root``, ``/etc``, ``/work`` or the gateway's files is visible.
- **limits** (``prlimit``, inherited by everything the code starts): CPU seconds, address space,
  processes, file size, open files. Run as root, the sandbox first drops to ``nobody`` (a process
  limit does not apply to root); otherwise the process limit counts the gateway's own threads, so
  it is set to what the user already runs plus ``max_processes``.
- a **wall-clock timeout** (the whole process group is killed) and an **output cap** (reading stops
  and the run is killed once ``output_bytes`` have come).

If bubblewrap is missing or cannot create namespaces here (a container without user namespaces),
``isolation()`` says so and runs fall back to ``unshare --net --map-root-user`` (a network
namespace only) when that works, else to the limits alone: no read-only view of the system and,
in the last case, network access. ``Sandbox.isolation`` names the level in use; the gateway logs
it at start-up and docs/husky.md describes each.

``http``: the code is POSTed to a sandbox service, ``{"code", "language": "python", "timeout"}``,
and the answer ``{"stdout", "stderr", "exit_code"}`` (or ``{"output"}``) is the step's output.

Every failure (timeout, limit, non-zero exit, unreachable service) becomes the step's text
output, never an exception: the agent records it and goes on.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from octogate.core.agent_config import ExecutorConfig

NOBODY = 65534
MAX_CODE_BYTES = 64_000


@dataclass
class RunResult:
    output: str  # what the step records: stdout, and the error if the run failed
    ok: bool
    exit_code: int | None
    reason: str  # "ok", "exit", "timeout", "cpu", "output", "memory", "http", "refused"


def _interpreter(configured: str | None) -> str:
    if configured:
        return configured
    for cand in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.path.exists(cand):
            return cand
    return os.path.realpath(sys.executable)


def _system_binds(python: str) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    real = os.path.realpath(python)
    if not real.startswith("/usr/"):  # an interpreter outside /usr (pyenv...): its prefix, read-only
        prefix = str(Path(real).parent.parent)
        args += ["--ro-bind", prefix, prefix]
    return args


def bwrap_argv(python: str, disk_mb: int) -> list[str]:
    size = str(disk_mb * 1024 * 1024)
    return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", *_system_binds(python),
            "--proc", "/proc", "--dev", "/dev",
            "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", "/sandbox",
            "--remount-ro", "/", "--chdir", "/sandbox",
            "--setenv", "HOME", "/sandbox", "--setenv", "TMPDIR", "/tmp",
            "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--"]


def _works(argv: list[str], as_nobody: bool) -> bool:
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if as_nobody else []
    try:
        return subprocess.run([*prefix, *argv, "/bin/true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@lru_cache(maxsize=4)
def isolation(python: str | None = None) -> str:
    """The strongest isolation this machine gives: ``bwrap``, ``unshare-net`` or ``rlimits``."""
    py = _interpreter(python)
    as_nobody = _drops_to_nobody()
    if shutil.which("bwrap") and _works(bwrap_argv(py, 1), as_nobody):
        return "bwrap"
    if shutil.which("unshare") and _works(["unshare", "--net", "--map-root-user", "--"], as_nobody):
        return "unshare-net"
    return "rlimits"


def _drops_to_nobody() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


def _tasks_of(uid: int) -> int:
    """Threads the user runs now (RLIMIT_NPROC counts threads of the real uid)."""
    n = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            n += int(fields.get("Threads", "1").strip())
    return n


class Sandbox:
    """The local executor: one sandboxed process per run."""

    def __init__(self, cfg: ExecutorConfig):
        self.cfg = cfg
        self.python = _interpreter(cfg.python)
        self.isolation = isolation(cfg.python)
        self.as_nobody = _drops_to_nobody()

    def argv(self, code: str) -> list[str]:
        c = self.cfg
        nproc = c.max_processes if self.as_nobody else _tasks_of(os.getuid()) + c.max_processes
        limits = ["prlimit", f"--cpu={c.cpu_seconds}:{c.cpu_seconds + 1}", f"--as={c.memory_mb * 1024 * 1024}", f"--nproc={nproc}",
                  f"--fsize={c.disk_mb * 1024 * 1024}", "--nofile=64", "--core=0", "--"]
        user = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if self.as_nobody else []
        if self.isolation == "bwrap":
            box = bwrap_argv(self.python, c.disk_mb)
        elif self.isolation == "unshare-net":
            box = ["unshare", "--net", "--map-root-user", "--"]
        else:
            box = []
        return [*limits, *user, *box, self.python, "-I", "-c", code]

    async def run(self, code: str) -> RunResult:
        if len(code.encode()) > MAX_CODE_BYTES:
            return RunResult(f"Error: the code is longer than {MAX_CODE_BYTES} bytes; not run.", False, None, "refused")
        cwd = None
        if self.isolation != "bwrap":  # no private working directory from bwrap: a temporary one
            import tempfile
            cwd = tempfile.mkdtemp(prefix="octogate-sandbox-")
            if self.as_nobody:
                os.chown(cwd, NOBODY, NOBODY)
        try:
            return await self._run(code, cwd)
        finally:
            if cwd:
                shutil.rmtree(cwd, ignore_errors=True)

    async def _run(self, code: str, cwd: str | None) -> RunResult:
        c = self.cfg
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        if cwd:
            env.update(HOME=cwd, TMPDIR=cwd)
        proc = await asyncio.create_subprocess_exec(
            *self.argv(code), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=cwd or "/", env=env, start_new_session=True)
        cap = c.output_bytes
        out, err = bytearray(), bytearray()
        over = False

        async def pump(stream: asyncio.StreamReader, buf: bytearray) -> None:
            nonlocal over
            while chunk := await stream.read(65536):  # read to the end, so the pipes close with the process
                if over:
                    continue
                buf += chunk
                if len(out) + len(err) > cap:
                    over = True
                    _kill(proc)

        reason = "ok"
        try:
            await asyncio.wait_for(asyncio.gather(pump(proc.stdout, out), pump(proc.stderr, err), proc.wait()),
                                   timeout=c.timeout)
        except asyncio.TimeoutError:
            reason = "timeout"
        finally:
            _kill(proc)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                pass
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()
        code_ = proc.returncode
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        if over:
            reason = "output"
        elif reason == "ok" and code_ not in (0, None):
            # killed by a signal: negative from Python, 128 + signal through bwrap's own exit status
            killed_by = -code_ if code_ < 0 else code_ - 128 if code_ > 128 else None
            reason = "cpu" if killed_by in (signal.SIGXCPU, signal.SIGKILL) else "exit"
            if "MemoryError" in stderr:
                reason = "memory"
        if reason == "ok":
            return RunResult(_trim(stdout, cap) or "(no output)", True, code_, "ok")
        problem = {
            "timeout": f"Error: the code ran longer than {c.timeout:g} s and was stopped.",
            "output": f"Error: the code printed more than {cap} bytes and was stopped.",
            "cpu": f"Error: the code used more than {c.cpu_seconds} s of CPU and was stopped.",
            "memory": f"Error: the code ran out of memory (limit {c.memory_mb} MB).",
            "exit": f"Error: the code failed (exit status {code_}).",
        }[reason]
        tail = _last_lines(stderr)
        text = "\n".join(p for p in (_trim(stdout, cap // 2), problem, tail) if p)
        return RunResult(text, False, code_, reason)


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _trim(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def _last_lines(stderr: str, n: int = 3) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return "\n".join(lines[-n:])[-600:]


class HttpExecutor:
    """The code is sent to a remote sandbox service; its JSON answer is the step's output."""

    def __init__(self, cfg: ExecutorConfig):
        from octogate.core.config_base import resolve_secret

        self.cfg = cfg
        self.url = resolve_secret(cfg.url) or cfg.url
        self.api_key = resolve_secret(cfg.api_key)
        self.isolation = f"http ({self.url})"

    async def run(self, code: str) -> RunResult:
        import aiohttp

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {"code": code, "language": "python", "timeout": self.cfg.timeout}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout + 5)) as s:
                async with s.post(self.url, json=body, headers=headers) as r:
                    if r.status != 200:
                        return RunResult(f"Error: the sandbox service answered HTTP {r.status}.", False, None, "http")
                    data = await r.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return RunResult(f"Error: the sandbox service failed: {type(exc).__name__}: {exc}", False, None, "http")
        if not isinstance(data, dict):
            return RunResult("Error: the sandbox service's answer is not a JSON object.", False, None, "http")
        cap = self.cfg.output_bytes
        if "output" in data:
            return RunResult(_trim(str(data["output"]), cap), bool(data.get("ok", True)), None, "ok")
        exit_code = data.get("exit_code")
        stdout, stderr = str(data.get("stdout") or ""), str(data.get("stderr") or "")
        if exit_code in (0, None):
            return RunResult(_trim(stdout, cap) or "(no output)", True, exit_code, "ok")
        text = "\n".join(p for p in (_trim(stdout, cap // 2), f"Error: the code failed (exit status {exit_code}).",
                                     _last_lines(stderr)) if p)
        return RunResult(text, False, exit_code, "exit")


def build_executor(cfg: ExecutorConfig) -> Sandbox | HttpExecutor:
    return HttpExecutor(cfg) if cfg.kind == "http" else Sandbox(cfg)
