"""The soak app (or the real model behind it) in its own process: start, probe, SIGTERM, collect its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`with ServerProcess(settings={...}) as proc: httpx.get(proc.url + "/api")`; proc.terminate() sends SIGTERM."""

    def __init__(self, settings: dict | None = None, *, backend: str = "soak", graceful: float | None = None,
                 host: str = "127.0.0.1", ready_timeout: float = 120.0):
        self.settings = settings or {}
        self.backend, self.graceful, self.host = backend, graceful, host
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "soak.app", "--host", self.host, "--backend", self.backend,
               "--settings", json.dumps(self.settings)]
        if self.graceful is not None:
            cmd += ["--graceful", str(self.graceful)]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        if not first.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"soak app did not start: {first!r} {self.proc.stderr.read()[-2000:]}")
        self.port = int(first.split()[1])
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            t = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            t.start()
            self._readers.append(t)
        self.wait_ready()
        return self

    @staticmethod
    def _pump(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("soak app exited:\n" + "\n".join(self.stderr[-30:]))
            try:
                if httpx.get(self.url + "/api", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("soak app never became ready")

    def stats(self, **params) -> dict:
        return httpx.get(self.url + "/_soak/stats", params=params, timeout=30).json()

    def terminate(self) -> float:
        """SIGTERM; returns the time.monotonic() it was sent."""
        self.proc.send_signal(signal.SIGTERM)
        return time.monotonic()

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return rc

    def threads_left(self) -> tuple[list[str], int] | None:
        for line in self.stdout:
            if line.startswith("THREADS_LEFT "):
                _, rest = line.split(" ", 1)
                names, _, executor = rest.rpartition(" EXECUTOR ")
                return json.loads(names), int(executor)
        return None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
