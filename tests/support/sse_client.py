"""Reading an SSE answer the way a browser client does: split on blank lines, take `data:` lines."""

from __future__ import annotations

import json
import time

import httpx


def parse_events(text: str) -> list:
    """Every `data:` payload in order; JSON decoded, "[DONE]" kept as the string."""
    out = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def stream_events(client: httpx.Client, url: str, body: dict, **kw) -> tuple[httpx.Response, list, list[float]]:
    """POST and read the stream incrementally; returns the response, the events and their arrival times."""
    events, times, buf = [], [], ""
    with client.stream("POST", url, json=body, **kw) as resp:
        if resp.status_code != 200:
            resp.read()
            return resp, [], []
        for piece in resp.iter_text():
            buf += piece
            while "\n\n" in buf:
                block, buf = buf.split("\n\n", 1)
                for ev in parse_events(block + "\n\n"):
                    events.append(ev)
                    times.append(time.monotonic())
    return resp, events, times


def content_of(events: list) -> str:
    return "".join(
        (e["choices"][0]["delta"].get("content") or "")
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )
