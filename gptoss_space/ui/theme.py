"""The page's look: a dark violet theme (the same in light and dark mode), its CSS and the header."""

from __future__ import annotations

import html

import gradio as gr

# The seed pages' signature gradient.
GRADIENT = "linear-gradient(135deg, #667eea 0%, #764ba2 100%)"


def make_theme() -> gr.themes.Base:
    """Base (local fonts only: nothing is fetched from Google) with dark violet values.

    The dark values are copied over the light ones, so the page looks the same whatever the
    visitor's system preference is, as the seed pages do.
    """
    theme = gr.themes.Base(primary_hue="violet", secondary_hue="purple", neutral_hue="slate", radius_size="lg")
    theme.set(
        body_background_fill_dark="radial-gradient(circle at 20% 0%, #2a1f4d 0%, #14112a 45%, #0d0b1a 100%)",
        background_fill_primary_dark="#17142b",
        background_fill_secondary_dark="#1e1a38",
        block_background_fill_dark="#1a1731",
        block_border_color_dark="#332c5c",
        block_label_background_fill_dark="#241f45",
        border_color_primary_dark="#332c5c",
        input_background_fill_dark="#120f24",
        button_primary_background_fill_dark=GRADIENT,
        button_primary_background_fill_hover_dark="linear-gradient(135deg, #7b8ff0 0%, #8a5cb8 100%)",
        button_primary_text_color_dark="#ffffff",
        button_secondary_background_fill_dark="#2a2450",
        button_secondary_background_fill_hover_dark="#362e66",
        color_accent_soft_dark="#3b2f6e",
        link_text_color_dark="#b69cff",
        code_background_fill_dark="#0f0c1f",
        slider_color_dark="#8b6cf0",
        checkbox_background_color_selected_dark="#7c5cdb",
        loader_color_dark="#a78bfa",
    )
    for name in list(vars(theme)):
        value = getattr(theme, name)
        if name.endswith("_dark") and value is not None:  # None: dark mode inherits the light value
            setattr(theme, name[: -len("_dark")], value)
    return theme


CSS = """
#gs-header { background: $GRADIENT; border-radius: 16px; padding: 14px 20px; color: #fff;
  box-shadow: 0 8px 28px rgba(118, 75, 162, 0.35); }
#gs-header h1 { margin: 0; font-size: 1.45rem; line-height: 1.3; color: #fff; }
#gs-header p { margin: 4px 0 8px; opacity: 0.92; color: #fff; }
.gs-badges { display: flex; flex-wrap: wrap; gap: 6px; }
.gs-badge { background: rgba(255, 255, 255, 0.16); border: 1px solid rgba(255, 255, 255, 0.25);
  border-radius: 999px; padding: 2px 10px; font-size: 0.82rem; white-space: nowrap; color: #fff; }
#gs-chatbot { min-height: 360px; }
.gs-note { opacity: 0.8; font-size: 0.9rem; }
.gs-live { background: rgba(139, 108, 240, 0.12); border: 1px solid #4b3f8a; border-radius: 12px; padding: 8px 14px; }
#tryit-out { white-space: pre-wrap; word-break: break-word; max-height: 360px; overflow: auto; margin: 0;
  background: #0f0c1f; border: 1px solid #332c5c; border-radius: 10px; padding: 10px 12px;
  font-family: ui-monospace, Consolas, monospace; font-size: 0.82rem; color: #e4defc; min-height: 3em; }
.gs-docs table { font-size: 0.9rem; }
.gs-docs th { white-space: nowrap; }
.gs-docs code { word-break: break-word; }
#gs-top, #gs-top .prose, #gs-top .html-container { padding: 0 !important; margin: 0 !important; }
#tryit-body { border: 1px solid #4b3f8a !important; }
#gs-input .stop-button { background: linear-gradient(135deg, #e0527a 0%, #b4235a 100%) !important; color: #fff !important; }
@media (max-width: 640px) {
  #gs-header { padding: 10px 14px; border-radius: 12px; }
  #gs-header h1 { font-size: 1.15rem; }
  #gs-header p { display: none; }
  .gs-badge { font-size: 0.74rem; padding: 1px 8px; white-space: normal; overflow-wrap: anywhere; }
  #gs-chatbot { min-height: 300px; }
  /* Tables become stacked cards: the short cells on one line, the description under them. */
  .gs-table table, .gs-table tbody, .gs-table tr { display: block; width: 100%; }
  .gs-table thead { display: none; }
  .gs-table tr { border-bottom: 1px solid #332c5c; padding: 6px 0; }
  .gs-table td { display: inline-block; border: none !important; padding: 2px 6px !important; }
  .gs-table td:first-child { font-weight: 600; }
  .gs-table td:last-child { display: block; }
}
""".replace("$GRADIENT", GRADIENT)


# Gradio scopes `css` to the app's content; the frame around it (page padding) needs a plain <style>.
# The script: in an iframe whose browser blocks third-party storage (incognito Chrome), reading
# localStorage throws, and Gradio's BrowserState (inside ChatInterface) then stops the page from
# loading. An in-memory stand-in keeps the embedded chat working; nothing is persisted anyway.
HEAD = """<style>
@media (max-width: 640px) { .gradio-container .app { padding: 8px 6px !important; } }
footer > .divider:last-child { display: none; }
</style>
<script>
(() => {
  try { window.localStorage.getItem("probe"); return; } catch (e) {}
  const data = new Map();
  const memory = {
    getItem: (k) => (data.has(String(k)) ? data.get(String(k)) : null),
    setItem: (k, v) => { data.set(String(k), String(v)); },
    removeItem: (k) => { data.delete(String(k)); },
    clear: () => data.clear(),
    key: (i) => Array.from(data.keys())[i] ?? null,
    get length() { return data.size; },
  };
  try { Object.defineProperty(window, "localStorage", { value: memory, configurable: true }); } catch (e) {}
})();
</script>"""


def header_html(model: str, backend: str, settings) -> str:
    """What this Space is, in one glance: the model, the backend and the rate limits."""
    s = settings
    if s.rate_limit_enabled:
        limits = f"🔒 {s.rate_limit_per_second:g} req/s · {s.rate_limit_min_interval_ms} ms gap per IP"
    else:
        limits = "🔓 no rate limit"
    badges = [
        f"✨ Model: {model}",
        f"🧠 Backend: {backend}",
        limits,
        "🔌 OpenAI-compatible",
        "🔑 No API key",
    ]
    spans = "".join(f'<span class="gs-badge">{html.escape(b)}</span>' for b in badges)
    return (
        '<div id="gs-header">'
        "<h1>🤖 GPT-OSS Space</h1>"
        "<p>A free, rate-limited chat API and demo: chat here, call <code>/api</code> from your code, "
        "or embed this page in an iframe.</p>"
        f'<div class="gs-badges">{spans}</div>'
        "</div>"
    )
