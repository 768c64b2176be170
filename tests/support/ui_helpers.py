"""Fixtures and page helpers for the browser tests of the Gradio page (tests/ui/test_page.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptoss_space.http.app import create_app
from gptoss_space.settings import Settings
from gptoss_space.ui import docs
from gptoss_space.ui.docs_tab import SNIPPET_TABS
from tests.support.fakes import ScriptedBackend
from tests.support.servers import LiveServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MODEL_CACHE = Path(os.environ.get("GPTOSS_TEST_CACHE", Path.home() / ".cache" / "gptoss-space"))
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
# Short answers keep the real-model tests quick on a shared CPU; long enough to watch text grow and stop it.
UI_CAP = 48

requires_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")


def _serve(app, **kw) -> LiveServer:
    server = LiveServer(app, ready_path="/api", **kw)
    server.start()
    server.service = app.state.service
    server.settings = app.state.settings
    return server


@pytest.fixture(scope="module")
def ui_server():
    """The whole app (API and page) with the real embedded model; rate limiting on, as deployed."""
    app = create_app(Settings(cache_dir=MODEL_CACHE, max_tokens_cap=UI_CAP))
    server = _serve(app)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def scripted_ui_server():
    """The page over the scripted backend; no waiting queue, so a second concurrent turn gets a 429."""
    backend = ScriptedBackend()
    settings = Settings(cache_dir=MODEL_CACHE, rate_limit_queue_per_client=0, inject_datetime=False)
    app = create_app(settings, backend=backend)
    server = _serve(app)
    server.backend = backend
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def open_page(browser):
    """open_page(url, width=1200, height=900) -> a page with the chat rendered; closed after the test."""
    contexts = []

    def _open(url: str, width: int = 1200, height: int = 900, wait_for: str = "#gs-chatbot"):
        ctx = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(ctx)
        page = ctx.new_page()
        page.goto(url)
        if wait_for:
            page.wait_for_selector(wait_for, timeout=30_000)
        return page

    yield _open
    for ctx in contexts:
        ctx.close()


def shot(page, name: str, full_page: bool = True) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def send(scope, text: str) -> int:
    """Type a message and press Enter; returns how many user messages the chat will then show."""
    n = scope.locator("#gs-chatbot .message.user").count() + 1
    box = scope.locator("#gs-input textarea")
    box.fill(text)
    box.press("Enter")
    return n


def bot_text(scope) -> str:
    """The last answer's text (its content parts, not the thinking or status titles)."""
    bots = scope.locator("#gs-chatbot .message.bot")
    if not bots.count():
        return ""
    js = """b => [...b.querySelectorAll('.message-content')]
        .filter(e => !e.closest('[role=status]'))  // Gradio's "Loading content" dots
        .map(e => e.innerText).join('\\n')"""
    return bots.last.evaluate(js).strip()


def busy(scope) -> bool:
    return scope.locator("#gs-input .stop-button").count() > 0


def wait_turn(scope, users: int, timeout: float = 60) -> None:
    """Until the chat shows `users` user messages, each answered, and Send is back (twice in a row)."""
    deadline, calm = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        done = (
            scope.locator("#gs-chatbot .message.user").count() == users
            and scope.locator("#gs-chatbot .message.bot").count() >= users
            and not busy(scope)
            and scope.locator("#gs-input .submit-button").count() > 0
        )
        calm = calm + 1 if done else 0
        if calm >= 3:
            return
        time.sleep(0.15)
    raise AssertionError(f"the chat did not finish turn {users} in {timeout} s")


def growth(scope, seconds: float, every: float = 0.15) -> list[int]:
    """The last answer's length sampled over time."""
    lengths, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        lengths.append(len(bot_text(scope)))
        time.sleep(every)
    return lengths


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=re.compile(name)).first.click()


def set_number(page, elem_id: str, value) -> None:
    """Type a value in a slider's number box (what a visitor does for an exact value)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def code_text(page, elem_id: str) -> str:
    """The text of a gr.Code block, line by line as CodeMirror shows it."""
    lines = page.locator(f"#{elem_id} .cm-content .cm-line").all_inner_texts()
    return "\n".join(line.replace("\u200b", "").replace("\n", "") for line in lines)


@pytest.fixture(scope="module")
def docs_page(ui_server, browser):
    """The docs tab as a visitor sees it: the base URL shown and every snippet's text."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    page = ctx.new_page()
    page.goto(ui_server.url)
    open_tab(page, "API docs")
    page.wait_for_function(  # filled in by the page's load event
        f"() => !(document.querySelector('#docs-base')?.innerText ?? '{docs.PLACEHOLDER_BASE}')"
        f".includes('{docs.PLACEHOLDER_BASE}')"
    )
    shown = page.locator("#docs-base").inner_text()
    base = re.search(r"https?://[^\s/]+", shown).group(0)
    codes = {}
    for tab, _, _ in SNIPPET_TABS:
        page.locator("#docs-quickstart").get_by_role("tab", name=tab, exact=True).click()
        for s in docs.snippets(docs.Facts(base, "", ui_server.settings)):
            block = page.locator(f"#snippet-{s.key}")
            if s.key not in codes and block.count() and block.is_visible():
                block.locator(".cm-line").first.wait_for()
                codes[s.key] = code_text(page, f"snippet-{s.key}")
    shot(page, "desktop-docs")
    yield {"base": base, "codes": codes, "page": page}
    ctx.close()


def run_snippet(key: str, code: str, tmp_path) -> str:
    if key.startswith("curl"):
        cmd = ["bash", "-c", code]
    elif key.startswith("js"):
        script = tmp_path / f"{key}.mjs"
        script.write_text(code)
        cmd = ["node", str(script)]
    else:
        cmd = [sys.executable, "-c", code]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


FRAME_HTML = """<!doctype html><html><body style="margin:0;background:#fff">
<h3 style="font-family:sans-serif">Another site</h3>
<iframe src="{src}" style="width:420px;height:760px;border:1px solid #ccc"></iframe></body></html>"""
