"""Real `dynroute serve` / `dynroute llm serve` processes on loopback ports, for
benchmarks/serve_load.py and tests/serve: started together, waited for, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from dynroute.common.net import free_port

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class Proc:
    """One CLI process serving HTTP on ``port`` (``url`` is its base URL)."""

    def __init__(self, args: Sequence[str], port: int, log: Path) -> None:
        self.args, self.port, self.log = list(args), port, log
        self.url = f"http://127.0.0.1:{port}"
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "dynroute.cli", *self.args, "--port", str(port)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
        )

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.args[:2]} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.args[:2]} not ready: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._out.close()


def start_all(
    specs: Sequence[Sequence[str]], logs: Path, prefix: str = "proc", timeout_s: float = 120.0
) -> list[Proc]:
    """Start every process at once (imports overlap), then wait for all; stops all on error."""
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    try:
        for i, args in enumerate(specs):
            procs.append(Proc(args, free_port(), logs / f"{prefix}{i}.log"))
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.wait_ready(deadline)
    except BaseException:
        stop_all(procs)
        raise
    return procs


def stop_all(procs: Sequence[Proc]) -> None:
    for p in procs:
        p.stop()
