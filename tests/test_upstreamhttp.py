"""The proxy's HTTP/1.1 transport (backends/upstreamhttp.py) against raw servers scripted on loopback.

Each server here writes exact bytes, so the tests pin what the transport does on the wire: keep-alive
reuse, the three ways a body can end, timeouts, a connection the upstream closed while idle or
mid-answer, flow control on a large body, and TLS.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess

import httpx
import pytest

from gptoss_space.backends.upstreamhttp import UpstreamTransport

SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Scripted:
    """A loopback server: `answer(request_number, reader, writer)` writes each answer itself."""

    def __init__(self, answer, tls: ssl.SSLContext | None = None):
        self.answer, self.tls = answer, tls
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> "Scripted":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/v1/chat/completions"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if await self.answer(len(self.requests), reader, writer) == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def client(**timeouts) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=UpstreamTransport(max_keepalive=4), timeout=httpx.Timeout(5.0, **timeouts))


async def sse(writer, *events: bytes) -> None:
    writer.write(SSE_HEAD + b"".join(chunk(b"data: %s\n\n" % e) for e in events) + b"0\r\n\r\n")
    await writer.drain()


async def test_answers_on_one_kept_connection_and_the_request_goes_out_whole():
    async def answer(n, reader, writer):
        await sse(writer, b'{"n": %d}' % n, b"[DONE]")

    async with Scripted(answer) as up, client() as c:
        for n in (1, 2, 3):
            r = await c.post(up.url, json={"messages": [{"role": "user", "content": "hi"}]}, headers={"Authorization": "Bearer k"})
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/event-stream"
            assert r.text == f'data: {{"n": {n}}}\n\ndata: [DONE]\n\n'
        assert up.connections == 1
        first = up.requests[0]
        assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nauthorization: bearer k\r\n" in first.lower()
        assert first.endswith(b'{"messages":[{"role":"user","content":"hi"}]}')


async def test_content_length_and_close_delimited_bodies_are_read_to_the_end():
    async def answer(n, reader, writer):
        if n == 1:
            writer.write(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 2\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}")
            return None
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n" + b"[" + b"1," * 5000 + b"1]")
        await writer.drain()
        return "close"

    async with Scripted(answer) as up, client() as c:
        r = await c.post(up.url, json={})
        assert (r.status_code, r.reason_phrase, r.headers["retry-after"], r.json()) == (429, "Too Many Requests", "2", {"error": "x"})
        r = await c.post(up.url, json={})
        assert r.status_code == 200 and len(r.json()) == 5001
        r = await c.post(up.url, json={})  # that connection ended with its body: a new one
        assert r.status_code == 200
        assert up.connections == 2


async def test_an_idle_connection_the_upstream_closed_is_replaced_without_an_error():
    async def answer(n, reader, writer):
        await sse(writer, b"[DONE]")
        return "close"  # keep-alive was implied, but the server closes once the answer is out

    async with Scripted(answer) as up, client() as c:
        for _ in range(3):
            r = await c.post(up.url, json={})
            assert r.text == "data: [DONE]\n\n"
            await asyncio.sleep(0.05)
        assert up.connections == 3


async def test_an_answer_left_unread_does_not_leave_its_connection_in_the_pool():
    async def answer(n, reader, writer):
        writer.write(SSE_HEAD + chunk(b"data: first\n\n"))
        await writer.drain()
        if n == 1:
            await asyncio.sleep(0.3)  # the rest would come later: the client leaves before
            return "close"
        writer.write(b"0\r\n\r\n")

    async with Scripted(answer) as up, client() as c:
        async with c.stream("POST", up.url, json={}) as r:
            async for piece in r.aiter_bytes():
                assert piece == b"data: first\n\n"
                break
        r = await c.post(up.url, json={})
        assert r.text == "data: first\n\n"
        assert up.connections == 2


async def test_silence_raises_read_timeout_and_a_cut_answer_a_protocol_error():
    async def answer(n, reader, writer):
        if n == 1:
            await asyncio.sleep(1.0)  # no status line in time
            return "close"
        writer.write(SSE_HEAD + chunk(b"data: partial\n\n"))  # then the connection drops mid-body
        await writer.drain()
        return "close"

    async with Scripted(answer) as up, client(read=0.2) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.post(up.url, json={})
        async with c.stream("POST", up.url, json={}) as r:
            got = []
            with pytest.raises(httpx.RemoteProtocolError):
                async for piece in r.aiter_bytes():
                    got.append(piece)
            assert got == [b"data: partial\n\n"]


async def test_refused_and_unknown_scheme_raise_httpx_errors():
    async with Scripted(lambda *a: None) as up:
        port = up.server.sockets[0].getsockname()[1]
    async with client(connect=1.0) as c:
        with pytest.raises(httpx.ConnectError):
            await c.post(f"http://127.0.0.1:{port}/", json={})
    transport = UpstreamTransport()
    with pytest.raises(httpx.UnsupportedProtocol):
        await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/"))


async def test_a_large_body_arrives_whole_through_flow_control():
    payload = bytes(range(256)) * 8192  # 2 MiB, over the transport's unread-bytes limit

    async def answer(n, reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload))
        for i in range(0, len(payload), 65536):
            writer.write(payload[i : i + 65536])
            await writer.drain()

    async with Scripted(answer) as up, client() as c:
        async with c.stream("POST", up.url, json={}) as r:
            got = bytearray()
            async for piece in r.aiter_bytes():
                got += piece
                await asyncio.sleep(0)  # a slow reader
        assert bytes(got) == payload
        assert (await c.post(up.url, json={})).content == payload
        assert up.connections == 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
async def test_https_upstream(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def answer(n, reader, writer):
        await sse(writer, b'{"tls": true}', b"[DONE]")

    async with Scripted(answer, tls=server_tls) as up:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(transport=UpstreamTransport(ssl_context=trusting)) as c:
            assert (await c.post(up.url, json={})).text == 'data: {"tls": true}\n\ndata: [DONE]\n\n'
            assert (await c.post(up.url, json={})).status_code == 200
            assert up.connections == 1
        async with httpx.AsyncClient(transport=UpstreamTransport()) as c:  # the system's CAs: not trusted
            with pytest.raises(httpx.ConnectError):
                await c.post(up.url, json={})
