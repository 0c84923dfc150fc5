"""The chat page at / in headless Chromium (Debian's `chromium`) against live servers: a scripted
engine whose answer has reasoning, text and a tool call (DOM and screenshot checked), and the tiny
synthetic model (a streamed reply with its tok/s). Skips only when chromium is not installed."""
from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from kimi_runtime.server import create_app
from test_server import LiveServer, fake_params
from test_chat_page_chromium import Chromium
from test_tool_calls import WEATHER, make_tool_generator, markup

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    b = Chromium(CHROMIUM, tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


DONE = "document.querySelector('.msg.assistant .stats, .msg.error') !== null"


def _page_url(srv: LiveServer, **q: str) -> str:
    return srv.url + "/?" + urllib.parse.urlencode(q)


def test_page_is_served_without_chromium() -> None:
    with LiveServer(create_app(make_tool_generator("x"), "m", params_factory=fake_params)) as srv:
        r = httpx.get(srv.url + "/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "/v1/chat/completions" in r.text and "<script>" in r.text


SCRIPT = ("<think>Let me think.</think>Checking the weather."
          + markup(("functions.get_weather:0", '{"city":"Paris","unit":"c"}')) + "<|im_end|>")


@needs_chromium
def test_page_streams_reasoning_text_and_tool_call(browser: Chromium, tmp_path: Path) -> None:
    gen = make_tool_generator(SCRIPT)
    gen.engine.delay = 0.005  # a visible stream: the page fills its bubble delta by delta
    with LiveServer(create_app(gen, "fake-model", params_factory=fake_params)) as srv:
        browser.open(_page_url(srv, q="weather in Paris?", tools=json.dumps([WEATHER])))
        browser.wait_for("document.querySelector('.reasoning') !== null")
        assert browser.eval("document.querySelector('.reasoning').open") is True  # open while it streams
        browser.wait_for(DONE)
        log = browser.eval("document.getElementById('log').innerHTML")
        shot = tmp_path / "page.png"
        browser.screenshot(shot)
    assert '<div class="msg user">weather in Paris?</div>' in log
    # reasoning in a <details> that collapsed once the answer was complete (no `open` attribute)
    assert re.search(r'<details class="reasoning"><summary>Reasoning</summary><div>Let me think\.</div></details>', log)
    assert "<span>Checking the weather.</span>" in log
    assert ('<div class="tool-call"><span class="name">get_weather</span>(<span class="args">'
            '{"city":"Paris","unit":"c"}</span>)</div>') in log
    m = re.search(r'<div class="stats">(\d+) tokens, ([\d.]+) tok/s, [\d.]+ s, tool_calls</div>', log)
    assert m and int(m.group(1)) == len(gen.tokenizer.encode(SCRIPT)) and float(m.group(2)) > 0

    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (900, 600)
    count = {c: n for n, c in img.getcolors(maxcolors=1 << 20)}
    # the user bubble, the reasoning box and the tool-call box are on screen in their colours
    for rgb in ((0xdb, 0xe8, 0xff), (0xf1, 0xec, 0xfa), (0xe8, 0xf6, 0xec)):
        assert count.get(rgb, 0) > 500, (rgb, count.get(rgb, 0))


@needs_chromium
def test_page_on_the_tiny_model(browser: Chromium, tiny_gguf: str) -> None:
    from kimi_runtime.generate import Generator

    with LiveServer(create_app(Generator.from_gguf(tiny_gguf), "tiny")) as srv:
        browser.open(_page_url(srv, q="Hello!", max_tokens="12"))
        browser.wait_for(DONE)
        assert browser.eval("document.getElementById('model').textContent") == "tiny"
        log = browser.eval("document.getElementById('log').innerHTML")
        # a second turn from the input box goes out with the first one as history
        browser.eval("document.getElementById('input').value = 'And again?';"
                     "document.getElementById('form').requestSubmit()")
        browser.wait_for("document.querySelectorAll('.msg.assistant .stats').length === 2")
        n_user = browser.eval("document.querySelectorAll('.msg.user').length")
    assert 'class="msg error"' not in log and n_user == 2
    m = re.search(r'<div class="msg assistant">.*?<div class="stats">(\d+) tokens, ([\d.]+) tok/s, [\d.]+ s, '
                  r'(stop|length)</div>', log, re.S)
    assert m, log
    assert 1 <= int(m.group(1)) <= 12 and float(m.group(2)) > 0
