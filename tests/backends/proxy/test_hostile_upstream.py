"""What a hostile (or broken) upstream finds: the whole app in proxy mode in front of raw loopback upstreams.

Each attack ends in a short 502 that holds no secret, every log line stays short and secret-free,
memory stays bounded, and other clients are served meanwhile (GET /api within 1 s).
"""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest

from tests.backends.proxy.test_proxy_app import HELLO, KEY, proxy_server
from tests.support.raw_upstream import RawUpstream, endless, gzip_bomb
from tests.support.upstream import Upstream

SHORT = 4096  # "a few KB": the most an answer or a log line may hold after an attack


def pieces(secret: str, n: int = 8) -> set[str]:
    return {secret[i : i + n] for i in range(len(secret) - n + 1)}


def assert_hidden(secret: str, *texts: str) -> None:
    for text in texts:
        found = [p for p in pieces(secret) if p in text]
        assert not found, f"part of a secret shown: {found[:3]}"


def attack_while_serving(server, window_s: float = 0.8) -> tuple[list[httpx.Response], list[float]]:
    """POST /api again and again from a thread for window_s; meanwhile GET /api every 50 ms.

    Returns the attack's answers and the health answers' latencies (each must be under 1 s).
    """
    answers: list[httpx.Response] = []
    stop = threading.Event()

    def attack() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set() or not answers:
                answers.append(client.post(server.url + "/api", json={**HELLO, "stream": False}))

    attacker = threading.Thread(target=attack)
    attacker.start()
    latencies: list[float] = []
    with httpx.Client(timeout=5) as client:
        end = time.monotonic() + window_s
        while time.monotonic() < end:
            t0 = time.monotonic()
            assert client.get(server.url + "/api").status_code == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.05)
    stop.set()
    attacker.join(60)
    assert answers and latencies and max(latencies) < 1.0, f"health took {max(latencies):.2f} s during the attack"
    return answers, latencies


def log_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


@pytest.fixture(autouse=True)
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)  # httpcore writes each answer's reason phrase and headers at DEBUG


def reason_upstream(reason: bytes):
    async def answer(n, method, reader, writer):
        writer.write(b"HTTP/1.1 500 " + reason + b"\r\ncontent-length: 0\r\n\r\n")

    return answer


@pytest.mark.parametrize("padding", [0, 60_000], ids=["short", "60KB"])
def test_a_key_in_the_reason_phrase_reaches_neither_the_client_nor_the_log(caplog, padding):
    with RawUpstream(reason_upstream(b"x" * padding + b"Internal error for Bearer " + KEY.encode())) as up:
        with proxy_server(up.url) as server:
            answers, _ = attack_while_serving(server)
    assert {r.status_code for r in answers} == {502}
    assert answers[0].json()["error"].startswith("Upstream unavailable after 3 attempts: HTTP 500: ")
    assert_hidden(KEY, *(r.text for r in answers), *log_lines(caplog))
    assert max(len(r.text) for r in answers) < SHORT and max(map(len, log_lines(caplog))) < SHORT


@pytest.mark.parametrize("where", ["message-cut", "read-cut"])
def test_a_key_straddling_a_cut_leaves_no_piece_of_it(caplog, where):
    if where == "message-cut":  # across the 500 characters of a message we pass on
        body = b'{"error": {"message": "%s%s"}}' % (b"m" * 490, KEY.encode())
    else:  # across the 64 KiB of an error body we read: spaces fold away, what was read of the key remains
        body = b" " * (64 * 1024 - 12) + KEY.encode() + b" " * 100

    async def answer(n, method, reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    with RawUpstream(answer) as up:
        with proxy_server(up.url) as server:
            r = httpx.post(server.url + "/api", json=HELLO, timeout=10)
    assert r.status_code == 400
    assert_hidden(KEY, r.text, *log_lines(caplog))


def test_a_2_mb_reason_phrase_is_a_short_502_and_short_log_lines(caplog):
    with RawUpstream(reason_upstream(b"E" * (2 << 20))) as up:
        with proxy_server(up.url) as server:
            answers, _ = attack_while_serving(server)
    assert {r.status_code for r in answers} == {502}
    assert answers[0].json() == {"error": "Upstream answer too large: headers"}
    assert max(len(r.text) for r in answers) < SHORT and max(map(len, log_lines(caplog))) < SHORT


@pytest.mark.parametrize("size", [80 * 1024, 300 << 20], ids=["80KB", "300MB"])
def test_oversized_headers_are_a_502(caplog, size):
    async def answer(n, method, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        await endless(writer, b"x-filler: " + b"f" * 1000 + b"\r\n", size)
        writer.write(b"content-length: 0\r\n\r\n")  # a whole head: 80 KB gets this far, 300 MB never does

    with RawUpstream(answer) as up:
        with proxy_server(up.url) as server:
            answers, _ = attack_while_serving(server)
    assert {r.status_code for r in answers} == {502}
    assert answers[0].json() == {"error": "Upstream answer too large: headers"}
    assert max(len(r.text) for r in answers) < SHORT and max(map(len, log_lines(caplog))) < SHORT


def test_an_oversized_sse_line_is_a_502(caplog):
    async def answer(n, method, reader, writer):
        if method != "POST":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            return None
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: ")
        return await endless(writer, b"y" * 65536, 300 << 20)  # a 300 MB line

    with RawUpstream(answer) as up:
        with proxy_server(up.url) as server:
            answers, _ = attack_while_serving(server)
    assert {r.status_code for r in answers} == {502}
    assert answers[0].json() == {"error": "Upstream answer too large: one event"}


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@pytest.mark.parametrize("ctype", [b"application/json", b"text/event-stream"])
def test_a_gzip_bomb_is_a_502_in_bounded_memory(caplog, ctype):
    bomb = gzip_bomb()  # ~2 MB that inflate to 2 GiB

    async def answer(n, method, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % (ctype, len(bomb)))
        writer.write(bomb)
        await writer.drain()
        return "close"

    with RawUpstream(answer) as up:
        with proxy_server(up.url) as server:
            before = rss_kb()
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets the peak (VmHWM) to the present RSS
                peak = "VmHWM"
            except OSError:
                peak = "VmRSS"
            answers, _ = attack_while_serving(server)
            grown_mb = (rss_kb(peak) - before) / 1024
    assert grown_mb < 100, f"RSS grew by {grown_mb:.0f} MB"
    assert {r.status_code for r in answers} == {502}
    what = "the completion" if ctype == b"application/json" else "one event"
    assert answers[0].json() == {"error": f"Upstream answer too large: {what}"}


def test_credentials_in_the_upstream_url_are_in_no_log_line(caplog):
    with Upstream() as up:
        url = f"http://user-S3CRET:pa55-S3CRET@127.0.0.1:{up.port}/v1/chat/completions?api_key=QUERY-S3CRET&v=1"
        with proxy_server(url) as server:
            r = httpx.post(server.url + "/api", json=HELLO, timeout=10)
            health = httpx.get(server.url + "/api", timeout=5).json()  # a probe of the upstream too
    assert r.status_code == 200 and up.attempts == 1 and len(up.probes) >= 1
    assert up.requests[0].path == "/v1/chat/completions"  # the credentials did reach the upstream
    assert health["details"]["upstream_host"] == f"127.0.0.1:{up.port}"
    lines = log_lines(caplog)
    assert any("HTTP Request: POST" in line for line in lines)  # httpx's line is there, redacted
    assert any(f"127.0.0.1:{up.port}/v1/chat/completions?api_key=***" in line for line in lines)
    assert "S3CRET" not in caplog.text + repr(health)
