"""Real `rumor node` processes on this host: the one harness behind `rumor up`,
`make demo`, the benchmarks and the end-to-end tests.

    with LocalCluster(tmp) as c:
        c.start("n0", models=["mlp=builtin:mlp"])
        c.start("n1", join=["n0"])
        c.wait_for(lambda: c.alive_members("n1") == {"n0", "n1"}, 15, "n1 to see n0")
        c.kill("n0")                          # SIGKILL; also pause/resume/stop
        c.start("n0", join=["n1"])            # a new process, same data dir

Every process it starts is in its own session and is reaped on exit (also on
an exception); reading a daemon's bound addresses has a deadline, so a daemon
that hangs before binding fails the caller instead of blocking it.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


class NodeStartError(RuntimeError):
    """A daemon exited, or did not bind, within its deadline."""


@dataclass
class NodeProcess:
    name: str
    proc: subprocess.Popen[str]
    bound: dict[str, str]
    log: Path
    data_dir: Path | None
    args: list[str] = field(default_factory=list)

    @property
    def http(self) -> str:
        return self.bound["http"]

    @property
    def gossip(self) -> str:
        return self.bound["gossip"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None


def read_line(stream: IO[str], timeout: float) -> str:
    """One line from a child's pipe, or "" if none came within `timeout`."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return ""
        return stream.readline()
    finally:
        sel.close()


def spawn(
    name: str,
    args: Iterable[str],
    log: Path | None,
    env: dict[str, str] | None = None,
    nofile: int | None = None,
    timeout: float = 60.0,
) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start `rumor node --name NAME ARGS...`; returns it and its bound addresses.
    Its stderr goes to `log` (appended), or to an unnamed temporary file."""
    cmd = [sys.executable, "-m", "node.cli", "node", "--name", name, *args]
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")

    def limits() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    # The child keeps its own copy of the descriptor; ours is closed on return.
    with open(log, "ab") if log is not None else tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=full_env,
            start_new_session=True,
            preexec_fn=limits if nofile is not None else None,
        )
        assert proc.stdout is not None
        line = read_line(proc.stdout, timeout)
        if not line:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            proc.stdout.close()
            if log is None:
                err.seek(0)
                tail = err.read().decode(errors="replace")
            else:
                tail = log.read_text(errors="replace")
            raise NodeStartError(
                f"{name} did not bind within {timeout:g} s ({proc.returncode}): {tail[-2000:]}"
            )
    return proc, json.loads(line)


class LocalCluster:
    def __init__(
        self,
        workdir: Path,
        keyring: Path | None = None,
        common: Iterable[str] = ("--log-level", "warning"),
        data_dirs: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keyring = keyring
        self.common = list(common)
        self.data_dirs = data_dirs
        self.nodes: dict[str, NodeProcess] = {}
        self._all: list[subprocess.Popen[str]] = []

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # -- processes ---------------------------------------------------------------

    def start(
        self,
        name: str,
        models: Iterable[str] = (),
        join: Iterable[str] = (),
        extra: Iterable[str] = (),
        env: dict[str, str] | None = None,
        data_dir: bool | None = None,
        nofile: int | None = None,
        timeout: float = 60.0,
    ) -> NodeProcess:
        """Start (or restart) `name`. `join` names started nodes or HOST:PORTs."""
        args = list(self.common)
        for j in join:
            args += ["--join", self.nodes[j].gossip if j in self.nodes else j]
        for m in models:
            args += ["--model", m]
        if self.keyring is not None:
            args += ["--keyring", str(self.keyring)]
        ddir = self.workdir / name if (self.data_dirs if data_dir is None else data_dir) else None
        if ddir is not None:
            args += ["--data-dir", str(ddir)]
        args += list(extra)
        log = self.workdir / f"{name}.log"
        proc, bound = spawn(name, args, log, env, nofile, timeout)
        self._all.append(proc)
        self.nodes[name] = NodeProcess(name, proc, bound, log, ddir, args)
        return self.nodes[name]

    def signal(self, name: str, sig: int) -> None:
        node = self.nodes[name]
        if node.running():
            os.killpg(node.pid, sig)

    def kill(self, name: str) -> None:
        """SIGKILL, and reap."""
        self.signal(name, signal.SIGKILL)
        self.nodes[name].proc.wait(10)

    def pause(self, name: str) -> None:
        self.signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.signal(name, signal.SIGCONT)

    def stop(self, name: str, grace: float = 15.0) -> int:
        """SIGTERM (a graceful leave); SIGKILL after `grace`. Returns the exit code."""
        node = self.nodes[name]
        self.signal(name, signal.SIGTERM)
        try:
            return node.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill(name)
            return node.proc.wait(5)

    def stop_all(self, grace: float = 10.0) -> None:
        """Every process this cluster ever started: SIGCONT, SIGTERM, then SIGKILL."""
        for p in self._all:
            if p.poll() is None:
                for sig in (signal.SIGCONT, signal.SIGTERM):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, sig)
        deadline = time.monotonic() + grace
        for p in self._all:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            if p.stdout is not None:
                p.stdout.close()

    # -- looking at it -------------------------------------------------------------

    def http(self, name: str) -> str:
        return self.nodes[name].http

    def url(self, name: str, path: str) -> str:
        return f"http://{self.nodes[name].http}{path}"

    def view(self, name: str) -> dict[str, Any]:
        import httpx

        body: dict[str, Any] = httpx.get(self.url(name, "/v1/cluster"), timeout=5).json()
        return body

    def member(self, observer: str, member: str) -> dict[str, Any] | None:
        for m in self.view(observer)["members"]:
            if m["name"] == member:
                return dict(m)
        return None

    def alive_members(self, observer: str) -> set[str]:
        return {m["name"] for m in self.view(observer)["members"] if m["status"] == "alive"}

    def wait_for(
        self, cond: Callable[[], bool], timeout: float, what: str, step: float = 0.1
    ) -> float:
        """Seconds until `cond()` held (HTTP errors count as "not yet");
        AssertionError naming `what` on timeout."""
        import httpx

        t0 = time.monotonic()
        while True:
            try:
                if cond():
                    return time.monotonic() - t0
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(step)

    def log(self, name: str) -> str:
        return self.nodes[name].log.read_text(errors="replace")
