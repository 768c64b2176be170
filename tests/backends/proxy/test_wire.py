"""The proxy on the wire (httpx's transport) against raw upstreams on loopback that write exact bytes.

What a user of the proxy notices: answers reuse one upstream connection, bodies of every framing
arrive whole, compressed answers are read, a server that closed an idle connection costs no
error, TLS is verified (a private CA through SSL_CERT_FILE).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import ssl
import subprocess
import zlib

import pytest

from gptoss_space.errors import UpstreamError
from tests.backends.proxy.test_backend import collect, proxy, req, text
from tests.support.raw_upstream import RawUpstream, chunk, delta, sse_answer

KEY = "sk-wire-key-0123456789"


async def test_answers_share_one_kept_connection_and_the_request_goes_out_whole():
    async def answer(n, method, reader, writer):
        writer.write(sse_answer(delta(f"n{n}"), b"[DONE]"))

    with RawUpstream(answer) as up:
        async with proxy(up.url, upstream_api_key=KEY) as p:
            assert [text(await collect(p)) for _ in range(3)] == ["n1", "n2", "n3"]
    assert up.connections == 1
    first = up.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"\r\nauthorization: bearer {KEY.lower()}\r\n".encode() in first.lower()
    assert json.loads(first.split(b"\r\n\r\n", 1)[1])["messages"] == [{"role": "user", "content": "Hi"}]


async def test_content_length_and_close_delimited_answers_are_read_whole():
    content = "x" * (2 << 20)  # 2 MiB of text: more than any socket buffer, under the 8 MiB bound
    completion = json.dumps({"choices": [{"index": 0, "message": {"content": content}, "finish_reason": "stop"}]}).encode()

    async def answer(n, method, reader, writer):
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(completion))
            writer.write(completion)
            return None
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + b"data: %s\n\n" % delta("closed"))
        return "close"

    with RawUpstream(answer) as up:
        async with proxy(up.url) as p:
            assert text(await collect(p)) == content
            assert text(await collect(p)) == "closed"
            assert text(await collect(p)) == "closed"
    assert up.connections == 2  # kept after the sized answer; the close-delimited one ended it


async def test_an_idle_connection_the_upstream_closed_is_replaced_without_an_error():
    async def answer(n, method, reader, writer):
        writer.write(sse_answer(delta("ok"), b"[DONE]"))
        await writer.drain()
        return "close"  # keep-alive was implied, but the server closes once the answer is out

    with RawUpstream(answer) as up:
        async with proxy(up.url, upstream_attempts=1) as p:
            for _ in range(3):
                assert text(await collect(p)) == "ok"
                await asyncio.sleep(0.05)
    assert up.connections == 3


async def test_an_answer_left_unread_does_not_break_the_next_one():
    async def answer(n, method, reader, writer):
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(chunk(b"data: %s\n\n" % delta("first")))
            await writer.drain()
            await asyncio.sleep(0.5)  # the rest would come later: our client leaves before
            return "close"
        writer.write(sse_answer(delta("second"), b"[DONE]"))

    with RawUpstream(answer) as up:
        async with proxy(up.url) as p:
            stream = p.stream(req())
            assert (await anext(stream)).content == "first"
            await stream.aclose()
            assert text(await collect(p)) == "second"
    assert up.connections == 2


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_answers_are_read(coding):
    events = b"".join(b"data: %s\n\n" % e for e in (delta("Hel"), delta("lo"), b"[DONE]"))
    if coding == "gzip":
        body = gzip.compress(events)
    else:
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS if coding == "raw-deflate" else zlib.MAX_WBITS)
        body = c.compress(events) + c.flush()
    name = coding.removeprefix("raw-").encode()

    async def answer(n, method, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: %s\r\n"
                     b"content-length: %d\r\n\r\n%s" % (name, len(body), body))

    with RawUpstream(answer) as up:
        async with proxy(up.url) as p:
            assert text(await collect(p)) == "Hello"
    assert b"accept-encoding: gzip, deflate\r\n" in up.requests[0].lower()  # what we can inflate with a bound


async def test_an_encoding_we_did_not_ask_for_is_a_502():
    async def answer(n, method, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: br\r\ncontent-length: 4\r\n\r\nxxxx")

    with RawUpstream(answer) as up:
        async with proxy(up.url) as p:
            with pytest.raises(UpstreamError) as e:
                await collect(p)
    assert (e.value.status, e.value.message) == (502, "Upstream answer in an unsupported content encoding")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
async def test_https_upstream_is_verified_and_a_private_ca_is_trusted_through_ssl_cert_file(tmp_path, monkeypatch):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def answer(n, method, reader, writer):
        writer.write(sse_answer(delta("tls"), b"[DONE]"))

    with RawUpstream(answer, tls=server_tls) as up:
        async with proxy(up.url) as p:  # the system's CAs: not trusted, not retried
            with pytest.raises(UpstreamError) as e:
                await collect(p)
            assert (e.value.status, e.value.message) == (502, "Upstream unavailable: its TLS certificate is not trusted")
            assert p.health()["upstream_reachable"] is False
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        async with proxy(up.url) as p:
            assert [text(await collect(p)) for _ in range(2)] == ["tls", "tls"]
        assert (len(up.requests), up.connections) == (2, 1)  # the refused handshake never reached a request
