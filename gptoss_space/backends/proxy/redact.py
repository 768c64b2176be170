"""What the proxy shows of its upstream: the URL without credentials, text scrubbed of secrets, httpx's logs scrubbed.

The secrets are the upstream key and what the URL carries: user info and query values (api_key,
key, token, sig...). An upstream may echo any of them in an error body, a reason phrase or a
header, and httpx logs the full URL (INFO) and, at DEBUG, httpcore logs each answer's reason
phrase and headers. Text is scrubbed first and cut after, so a cut never leaves part of a secret;
text that was itself cut short (a bounded read) loses a trailing start of a secret too.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx

MAX_MESSAGE_CHARS = 500  # of an upstream's message passed to our client or our log
MAX_LOG_CHARS = 2000  # of a line httpx or httpcore logs about the upstream
MIN_SECRET_CHARS = 6  # shorter query values (stream=1, v=2) are scrubbed only under a secret-looking name
SECRET_PARAMS = {"api_key", "apikey", "api-key", "key", "token", "access_token", "auth", "sig", "signature",
                 "secret", "password", "pass", "code", "x-api-key"}
# The loggers httpx and httpcore write to (a filter on a logger sees only that logger's own records).
LIBRARY_LOGGERS = ("httpx", "httpcore.connection", "httpcore.connection_pool", "httpcore.http11",
                   "httpcore.http2", "httpcore.proxy")


def upstream_host(url: str) -> str:
    """host[:port] of a URL: no user info, path or query, which may carry secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def redacted_url(url: str) -> str:
    """scheme://host[:port]/path?name=***: the URL with its user info dropped and every query value hidden."""
    parts = urlsplit(url)
    query = "&".join(f"{name}=***" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return f"{parts.scheme}://{upstream_host(url)}{parts.path}" + (f"?{query}" if query else "")


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Scrubber:
    """Replaces the upstream's secrets in text; `shown` also cuts the result for a client or a log."""

    def __init__(self, url: str, key: str = ""):
        self.redacted = redacted_url(url)
        parts = urlsplit(url)
        found = {url: self.redacted, str(httpx.URL(url)): self.redacted}
        user = parts.username or ""
        secrets = [key, parts.password or "", user if len(user) >= MIN_SECRET_CHARS else ""]
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if len(value) >= MIN_SECRET_CHARS or name.lower() in SECRET_PARAMS:
                secrets.append(value)
        for secret in secrets:
            for form in {secret, unquote(secret), quote(secret, safe="")}:
                if form:
                    found.setdefault(form, "***")
        # The longest first: the whole URL before the values inside it.
        self.pairs = sorted(found.items(), key=lambda kv: -len(kv[0]))

    def __call__(self, text: str, cut_short: bool = False) -> str:
        for secret, shown in self.pairs:
            if secret in text:
                text = text.replace(secret, shown)
        if cut_short:  # the text stops where a read stopped: it may end with the start of a secret
            for secret, _ in self.pairs:
                for n in range(min(len(secret), len(text)), 0, -1):
                    if text.endswith(secret[:n]):
                        text = text[:-n]
                        break
        return text

    def shown(self, text: str, cut_short: bool = False, limit: int = MAX_MESSAGE_CHARS) -> str:
        return clip(self(text, cut_short), limit)


class LogScrubber(logging.Filter):
    """On httpx's and httpcore's loggers: their records with our secrets replaced and cut to MAX_LOG_CHARS."""

    def __init__(self, scrub: Scrubber):
        super().__init__()
        self.scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        shown = self.scrub.shown(text, limit=MAX_LOG_CHARS)
        if shown != text:
            record.msg, record.args = shown, None
        return True

    def attach(self) -> None:
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).addFilter(self)

    def detach(self) -> None:
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).removeFilter(self)
