"""The proxy backend: one shared httpx client, SSE from an OpenAI-compatible upstream, retries with backoff.

httpx's own transport (httpcore over h11): pooled keep-alive connections, environment proxies and
TLS verified (the system's CAs, or SSL_CERT_FILE's). It costs ~0.5 ms more than the home-made
httptools transport it replaced (request to first Delta over a loopback upstream, median of 50:
+0.7 -> +1.2 ms), which accepted unbounded heads and lines. Bounds: upstream_body.py; what the
proxy shows or logs of the upstream: redact.py.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

from gptoss_space.backends.base import Backend, Delta, GenerationRequest
from gptoss_space.backends.proxy.redact import LogScrubber, Scrubber, redacted_url, upstream_host
from gptoss_space.backends.proxy.sse_parse import AnswerReader, error_message, parse_retry_after
from gptoss_space.backends.proxy.upstream_body import ACCEPT_ENCODING, ERROR_BODY_BYTES, TooLarge, check_head, read_bounded
from gptoss_space.errors import UpstreamError, UpstreamRejected

if TYPE_CHECKING:
    from gptoss_space.settings import Settings

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0  # one wait between attempts, whatever the attempt number
MAX_RETRY_AFTER_S = 10.0  # a longer Retry-After is not waited for: the error passes it on to our client
PROBE_TIMEOUT_S = 1.5  # health probe, all included
PROBE_MAX_AGE_S = 10.0  # a health result this fresh is reused
# Connections: as many as our own requests in flight could want; idle ones closed after 4 s, before
# uvicorn's 5 s keep-alive (vLLM, TGI's router, our own app) would close them under a request.
LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=32, keepalive_expiry=4.0)
# Statuses that are the proxy's configuration, not the client's request: our client gets 502, not these.
CONFIG_STATUSES = {401: "credentials", 403: "credentials", 404: "URL or model", 405: "URL", 407: "credentials"}


class _Retryable(Exception):
    """A failed attempt worth another try. `status` is what our client gets if it was the last one."""

    def __init__(self, reason: str, status: int, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.status, self.retry_after = reason, status, retry_after


__all__ = ["ProxyBackend", "upstream_host"]


class ProxyBackend(Backend):
    """Fronts an upstream OpenAI-compatible /chat/completions (or the GPT-OSS pages' /api)."""

    kind = "proxy"

    def __init__(self, settings: Settings):
        url = settings.upstream_url.strip()
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError("GPTOSS_UPSTREAM_URL must be a full http(s) URL when GPTOSS_BACKEND=proxy")
        self.settings = settings
        self.url = url
        self._url = httpx.URL(url)  # parsed once: httpx parses a str URL on every request (~55 us here)
        self.host = upstream_host(url)
        self.model_id = settings.upstream_model or self.host
        self.ready = False
        self._key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else ""
        self._scrub = Scrubber(url, self._key)
        self._log_filter = LogScrubber(self._scrub)
        self._client: httpx.AsyncClient | None = None
        self._reachable: bool | None = None
        self._checked_at = float("-inf")
        self._probe_lock = asyncio.Lock()

    # -- lifecycle and health ---------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        headers = {"Accept": "text/event-stream, application/json", "Accept-Encoding": ACCEPT_ENCODING}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(
                connect=s.upstream_connect_timeout_s,
                read=s.upstream_read_timeout_s,
                write=s.upstream_read_timeout_s,
                pool=s.upstream_read_timeout_s,  # waiting for a free connection is waiting for the upstream
            ),
            limits=LIMITS,
            trust_env=True,  # HTTP(S)_PROXY, NO_PROXY, SSL_CERT_FILE: where a deployment says them
        )
        self._log_filter.attach()
        self.ready = True
        log.info("Proxy backend ready: upstream %s, model %s", redacted_url(self.url), self._scrub(self.model_id))

    async def close(self) -> None:
        self.ready = False
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            finally:
                self._log_filter.detach()

    def health(self) -> dict:
        return {"backend": "proxy", "upstream_host": self.host, "upstream_reachable": self._reachable}

    async def check(self, max_age_s: float = PROBE_MAX_AGE_S) -> bool | None:
        """Whether the upstream answers HTTP at all (any status below 500), cached for max_age_s.

        A GET on the chat URL is cheap everywhere: 405/404 from vLLM, Ollama or llama.cpp, a health
        JSON from the GPT-OSS pages. Bounded by PROBE_TIMEOUT_S; concurrent callers share one probe.
        """
        if self._client is None:
            return None
        async with self._probe_lock:
            if time.monotonic() - self._checked_at < max_age_s:
                return self._reachable
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    async with self._client.stream("GET", self._url, timeout=PROBE_TIMEOUT_S) as r:
                        reachable = r.status_code < 500
            except (httpx.HTTPError, TimeoutError):
                reachable = False
            self._note_reachable(reachable)
            return reachable

    def _note_reachable(self, reachable: bool) -> None:
        self._reachable, self._checked_at = reachable, time.monotonic()

    # -- generation -----------------------------------------------------------------------------
    def body(self, req: GenerationRequest) -> dict:
        """The JSON sent upstream. Always streamed; optional fields only when they say something."""
        body: dict = {
            "messages": req.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": req.temperature,
            "top_p": req.top_p,
        }
        optional = {
            "model": self.settings.upstream_model or None,
            "max_tokens": req.max_tokens,
            "stop": list(req.stop) or None,
            "seed": req.seed,
            "presence_penalty": req.presence_penalty or None,
            "frequency_penalty": req.frequency_penalty or None,
            "reasoning_effort": req.reasoning_effort or None,
            # The upstream runs the tools protocol itself; its calls come back as Delta.tool_calls (sse_parse.py).
            "tools": req.tools or None,
            "tool_choice": req.tool_choice if req.tools else None,
            "parallel_tool_calls": False if req.tools and not req.parallel_tool_calls else None,
            "response_format": req.response_format,
            "logprobs": True if req.logprobs else None,
            "top_logprobs": req.top_logprobs if req.logprobs else None,
        }
        body.update((k, v) for k, v in optional.items() if v is not None)
        return body

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Deltas as the upstream sends them. Retries only until the first Delta is yielded."""
        if self._client is None:
            raise UpstreamError("Proxy backend is not started", status=503)
        reader, deltas, first = await self._open(self.body(request))
        try:
            if first is not None:
                yield first
                while True:
                    try:
                        delta = await anext(deltas)
                    except StopAsyncIteration:
                        break
                    except httpx.TimeoutException:
                        if reader.finish_reason is not None:
                            break  # finished; only the usage report or [DONE] never came
                        raise UpstreamError("Upstream stream interrupted: read timeout", status=502) from None
                    except httpx.HTTPError as exc:
                        raise UpstreamError(f"Upstream stream interrupted: {self._reason(exc)}", status=502) from None
                    yield delta
            final = reader.final()
            if request.logprobs:
                final.logprobs = []  # asked: the answer carries a logprobs object, if the upstream sent no entry
            yield final
        finally:
            # Also when our caller closes us early (client gone): closing aborts the upstream request.
            try:
                await reader.response.aclose()
            finally:
                await deltas.aclose()

    async def _open(self, body: dict) -> tuple[AnswerReader, AsyncIterator[Delta], Delta | None]:
        """Attempts until one reaches its first Delta, with backoff between them (Retry-After honoured)."""
        attempts, attempt = self.settings.upstream_attempts, 0
        while True:
            attempt += 1
            try:
                return await self._attempt(body)
            except _Retryable as exc:
                if attempt >= attempts:
                    what = "attempt" if attempts == 1 else "attempts"
                    message = f"Upstream unavailable after {attempts} {what}: {exc.reason}"
                    raise UpstreamError(message, status=exc.status, retry_after=exc.retry_after) from None
                delay = self._backoff(attempt, exc)
                log.warning(
                    "Upstream %s attempt %d/%d failed: %s; retrying in %.2f s",
                    self.host, attempt, attempts, exc.reason, delay,
                )
                await asyncio.sleep(delay)

    async def _attempt(self, body: dict) -> tuple[AnswerReader, AsyncIterator[Delta], Delta | None]:
        """One try: send, check the status, and read up to the first Delta (so early failures retry too)."""
        assert self._client is not None
        try:
            response = await self._client.send(self._client.build_request("POST", self._url, json=body), stream=True)
        except httpx.HTTPError as exc:
            raise self._failed(exc) from None
        reader = AnswerReader(response, scrub=self._scrub.shown)
        deltas = reader.deltas()
        try:
            check_head(response)
            await self._check_status(response)
            self._note_reachable(True)
            try:
                first = await anext(deltas)
            except StopAsyncIteration:
                first = None
            except httpx.HTTPError as exc:
                if isinstance(exc, httpx.TimeoutException) and reader.finish_reason is not None:
                    first = None
                else:
                    raise self._failed(exc) from None
            return reader, deltas, first
        except BaseException:
            try:
                await response.aclose()
            finally:
                await deltas.aclose()
            raise

    async def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        try:
            body, cut_short = await read_bounded(response, ERROR_BODY_BYTES)
            message = self._scrub.shown(error_message(body), cut_short)
        except (httpx.HTTPError, UpstreamError):
            message = ""
        message = message or self._scrub.shown(" ".join(response.reason_phrase.split())) or "no message"
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if status == 429 or status == 408 or status >= 500:
            final = 503 if status == 429 else 504 if status == 408 else 502
            if retry_after is not None and retry_after > MAX_RETRY_AFTER_S:
                raise UpstreamError(
                    f"Upstream busy (HTTP {status}), retry after {retry_after:.0f} s: {message}",
                    status=503 if status in (429, 503) else final,
                    retry_after=retry_after,
                )
            raise _Retryable(f"HTTP {status}: {message}", final, retry_after)
        if status in CONFIG_STATUSES:
            log.error("Upstream refused the proxy (HTTP %s): check its %s", status, CONFIG_STATUSES[status])
            raise UpstreamError(f"Upstream refused the proxy's request (HTTP {status}): {message}", status=502)
        if 400 <= status < 500:
            raise UpstreamRejected(message, status=status)
        raise UpstreamError(f"Upstream answered HTTP {status}, not a chat completion", status=502)

    def _failed(self, exc: httpx.HTTPError) -> Exception:
        """An httpx failure as a retryable attempt or a final error."""
        reason = self._reason(exc)
        if isinstance(exc, httpx.TimeoutException):
            if isinstance(exc, httpx.ConnectTimeout):
                self._note_reachable(False)
            return _Retryable(reason, 504)
        if isinstance(exc, httpx.UnsupportedProtocol):
            return UpstreamError("Upstream URL is not usable: unsupported protocol", status=502)
        if _caused_by(exc, lambda e: getattr(e, "error_status_hint", None) == 431):
            return TooLarge("headers")  # h11 refused a head over 100 KiB
        if _caused_by(exc, lambda e: isinstance(e, ssl.SSLCertVerificationError)):
            self._note_reachable(False)
            return UpstreamError("Upstream unavailable: its TLS certificate is not trusted", status=502)
        if isinstance(exc, httpx.ConnectError):
            self._note_reachable(False)
            return _Retryable(reason, 503)
        if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
            return _Retryable(reason, 502)
        return UpstreamError(f"Upstream answer unreadable: {reason}", status=502)

    def _reason(self, exc: httpx.HTTPError) -> str:
        """A short, secret-free reason; httpx messages may hold the URL, so they are not quoted whole."""
        text = str(exc).lower()
        s = self.settings
        if isinstance(exc, httpx.ConnectTimeout):
            return f"connect timeout ({s.upstream_connect_timeout_s:g} s)"
        if isinstance(exc, httpx.ReadTimeout):
            return f"read timeout (no data for {s.upstream_read_timeout_s:g} s)"
        if isinstance(exc, httpx.PoolTimeout):
            return "no free connection to the upstream"
        if isinstance(exc, httpx.TimeoutException):
            return "timeout"
        if isinstance(exc, httpx.ConnectError):
            if "refused" in text or "connect call failed" in text or "all connection attempts failed" in text:
                return "connection refused"
            if "name" in text and ("resolution" in text or "known" in text or "resolve" in text):
                return "cannot resolve the upstream host"
            return "cannot connect"
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
            return "connection closed by the upstream"
        return type(exc).__name__

    def _backoff(self, attempt: int, exc: _Retryable) -> float:
        """The wait after failed attempt number `attempt`: doubling from upstream_backoff_s, or the upstream's Retry-After."""
        delay = min(self.settings.upstream_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
        if exc.retry_after is not None:
            delay = max(delay, exc.retry_after)  # the check kept it under MAX_RETRY_AFTER_S
        return delay


def _caused_by(exc: BaseException, test) -> bool:
    """Whether exc or an exception it was raised from passes test (httpx wraps httpcore's, which wraps h11's or ssl's)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if test(cur):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False
