"""Graceful shutdown of a real server process: SIGTERM stops new work, ends streams cleanly in a bound, leaves no thread."""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import pytest

from soak.process import ServerProcess
from tests.conftest import MODEL_CACHE

SHUTTING_DOWN = {"error": "Server is shutting down; retry shortly"}


class StreamReader(threading.Thread):
    """Reads one SSE answer in the background, recording each data line's arrival and how the body ended."""

    def __init__(self, url: str, body: dict, local_address: str | None = None):
        super().__init__(daemon=True)
        self.url, self.body, self.local_address = url, body, local_address
        self.status: int | None = None
        self.events: list[tuple[float, object]] = []
        self.error: str | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        transport = httpx.HTTPTransport(local_address=self.local_address) if self.local_address else None
        try:
            with httpx.Client(timeout=30, transport=transport) as client:
                with client.stream("POST", self.url, json=self.body) as r:
                    self.status = r.status_code
                    if r.status_code != 200 or not r.headers["content-type"].startswith("text/event-stream"):
                        self.events.append((time.monotonic(), json.loads(r.read() or b"{}")))
                        return
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            data = line[6:]
                            self.events.append((time.monotonic(), data if data == "[DONE]" else json.loads(data)))
        except httpx.HTTPError as e:  # e.g. "incomplete chunked read": the server cut the body
            self.error = repr(e)
        finally:
            self.ended_at = time.monotonic()

    def wait_events(self, n: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.01)
        assert len(self.events) >= n, (self.status, self.error, self.events)


def refused_soon(url: str, within: float = 1.5) -> bool:
    """True once a new connection is refused (the listener closed), polling up to `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/api", timeout=0.5)
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


# tqdm's process-wide monitor, started by transformers' "Loading weights" bar and never stopped by tqdm:
# one per process, not per request (setting tqdm.tqdm.monitor_interval = 0 before loading avoids it).
LIBRARY_SINGLETONS = {"tqdm_monitor"}


def assert_clean_exit(proc: ServerProcess, sent: float, bound: float) -> None:
    rc = proc.wait(timeout=bound + 5)
    took = time.monotonic() - sent
    assert rc in (0, -15), (rc, proc.stderr[-20:])  # uvicorn re-raises the SIGTERM it caught once it is done
    assert took < bound, f"exit took {took:.1f} s"
    left = proc.threads_left()
    assert left is not None and set(left[0]) <= LIBRARY_SINGLETONS, (left, proc.stdout)
    noisy = [line for line in proc.stderr if "Traceback" in line or line.startswith(("ERROR", "CRITICAL"))]
    assert noisy == [], "\n".join(proc.stderr)


def test_sigterm_ends_a_long_stream_with_an_error_event_after_the_grace():
    settings = {"rate_limit_enabled": False, "shutdown_grace_s": 1.0}
    with ServerProcess(settings, graceful=6) as proc:
        reader = StreamReader(proc.url + "/api", {"messages": [{"role": "user", "content": "[soak id=a pieces=400 delay=0.05]"}]})
        reader.start()
        reader.wait_events(3)
        sent = proc.terminate()
        assert refused_soon(proc.url), "still accepting connections after SIGTERM"
        reader.join(10)
        assert reader.error is None, reader.error  # the body was ended, not cut
        assert reader.events[-1][1] == SHUTTING_DOWN
        assert 0.9 <= reader.events[-1][0] - sent < 2.5
        assert len(reader.events) < 100  # it did not run on to its 400 pieces
        assert_clean_exit(proc, sent, bound=4.0)


def test_sigterm_ends_a_responses_stream_with_error_and_failed_events_after_the_grace():
    with ServerProcess({"rate_limit_enabled": False, "shutdown_grace_s": 1.0}, graceful=6) as proc:
        body = {"input": "[soak id=r pieces=400 delay=0.05]", "stream": True}
        reader = StreamReader(proc.url + "/v1/responses", body)
        reader.start()
        reader.wait_events(5)
        sent = proc.terminate()
        reader.join(10)
        assert reader.error is None, reader.error  # the body was ended, not cut
        events = [event for _, event in reader.events]
        assert [e["type"] for e in events[-3:]] == ["response.output_item.done", "error", "response.failed"]
        assert events[-2]["code"] == "shutting_down" and events[-1]["response"]["status"] == "failed"
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert 0.9 <= reader.events[-1][0] - sent < 2.5 and len(events) < 100
        assert_clean_exit(proc, sent, bound=4.0)


def test_sigterm_lets_short_work_finish_refuses_queued_and_answers_long_json_503():
    settings = {"rate_limit_enabled": True, "rate_limit_per_second": 100, "rate_limit_min_interval_ms": 0,
                "shutdown_grace_s": 1.5}
    with ServerProcess(settings, graceful=6) as proc:
        short = StreamReader(proc.url + "/api", {"messages": [{"role": "user", "content": "[soak id=s pieces=10 delay=0.08]"}]})
        queued = StreamReader(proc.url + "/api", {"messages": [{"role": "user", "content": "[soak id=q pieces=2]"}]})
        long_json = StreamReader(
            proc.url + "/api",
            {"messages": [{"role": "user", "content": "[soak id=j pieces=100 delay=0.05]"}], "stream": False},
            local_address="127.0.0.3",  # another client: not queued behind the first
        )
        short.start()
        short.wait_events(2)
        queued.start()
        long_json.start()
        deadline = time.monotonic() + 5

        def settled() -> bool:  # the queued one waits and the long one runs (a request after SIGTERM gets 503 at once)
            gate = proc.stats()["gate"]
            return gate["requests_queued"] >= 1 and gate["requests_running"] >= 2

        while not settled() and time.monotonic() < deadline:
            time.sleep(0.02)
        sent = proc.terminate()
        for r in (short, queued, long_json):
            r.join(10)
        assert short.error is None and short.events[-1][1] == "[DONE]"  # finished inside the grace
        assert queued.status == 503 and queued.events[-1][1] == SHUTTING_DOWN
        assert queued.ended_at - sent < 0.5  # refused at once, not at the end of the grace
        assert long_json.status == 503 and long_json.events[-1][1] == SHUTTING_DOWN
        assert 1.4 <= long_json.ended_at - sent < 3.0
        assert_clean_exit(proc, sent, bound=4.0)


# A process importing torch and loading the model takes ~25 s on two shared cores: `make soak` runs it.
@pytest.mark.skipif(not os.environ.get("GPTOSS_SOAK"), reason="real-model process: runs with `make soak` (GPTOSS_SOAK=1)")
@pytest.mark.skipif(not MODEL_CACHE.exists(), reason="the embedded model has not been converted yet (make test does it)")
def test_sigterm_with_the_real_model_ends_the_stream_and_the_engine_thread():
    settings = {"rate_limit_enabled": False, "shutdown_grace_s": 0.5, "cache_dir": str(MODEL_CACHE), "max_tokens_cap": 4096}
    with ServerProcess(settings, backend="local", graceful=5, ready_timeout=180) as proc:
        body = {"messages": [{"role": "user", "content": "Write a very long story about the sea."}],
                "max_tokens": 3000, "temperature": 1.0, "seed": 1}
        reader = StreamReader(proc.url + "/api", body)
        reader.start()
        reader.wait_events(3, timeout=60)
        sent = proc.terminate()
        assert refused_soon(proc.url)
        reader.join(20)
        assert reader.error is None, reader.error
        assert reader.events[-1][1] in (SHUTTING_DOWN, "[DONE]")
        assert reader.events[-1][0] - sent < 2.0
        assert_clean_exit(proc, sent, bound=5.0)  # the engine thread ("gptoss-engine") was joined
