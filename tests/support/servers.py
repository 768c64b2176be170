"""A real uvicorn server on a loopback address in a background thread, for tests; stops by itself."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from gptoss_space.http.serving import uvicorn_options


class LiveServer:
    """`with LiveServer(app) as server: httpx.get(server.url + "/api")`.

    `lifespan` "on" runs the app's startup (model loading for the real app); `wait_ready` polls a
    path until it answers 200 (GET /api says 503 "loading" until the model is ready).
    """

    def __init__(self, app, host: str = "127.0.0.1", *, lifespan: str = "on", ready_path: str | None = None,
                 ready_timeout: float = 180.0):
        self.app, self.host, self.lifespan = app, host, lifespan
        self.ready_path, self.ready_timeout = ready_path, ready_timeout
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LiveServer:
        # IPPROTO_TCP: with protocol 0 asyncio sets no TCP_NODELAY and every answer waits ~45 ms.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        # As app.py serves it (h11 with bounded heads and connections) when the app carries its settings.
        settings = getattr(getattr(self.app, "state", None), "settings", None)
        options = uvicorn_options(settings) if settings is not None else {"http": "h11", "proxy_headers": False}
        config = uvicorn.Config(self.app, lifespan=self.lifespan, log_config=None, access_log=False,
                                loop="asyncio", timeout_graceful_shutdown=2, **options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"live-server-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        if self.ready_path:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            try:
                r = httpx.get(self.url + self.ready_path, timeout=5)
                # GET /api also says whether the page (mounted after start-up) is there yet.
                if r.status_code == 200 and r.json().get("page") in (None, "ready", "off"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.url}{self.ready_path} never answered 200")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def raw_exchange(server, parts: list[bytes], *, gap_s: float = 0.0, source: str = "127.0.0.1",
                 timeout: float = 5.0) -> bytes:
    """Send bytes by hand (the parts `gap_s` apart), then read until the server closes; return what came back."""
    with socket.create_connection((server.host, server.port), timeout=timeout, source_address=(source, 0)) as s:
        try:
            for i, part in enumerate(parts):
                if i and gap_s:
                    time.sleep(gap_s)
                s.sendall(part)
        except OSError:  # answered and closed while we were still sending
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def rss_mb() -> float:
    """This process's resident memory in MiB (the servers in tests run in it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0
