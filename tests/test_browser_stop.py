"""Stop in a real browser during a 2,000-token run, pressed with a real mouse click: it registers within about one
verification step, the stream the browser assembled from the live deltas is whole, and the bytes of each streamed
update (read off the page's own SSE stream) do not grow with the number of tokens shown; the end sends the charts,
text and table once, not the stream again.

The app runs with SPECVIZ_TEST_STEP_DELAY=0.01 (ui/session.py: a 10 ms sleep after every verification step, only under
that variable), so the run outlasts the test on a fast machine too; layerskip at gamma 16 on the tiny pair makes about
one token per 17-pass step, so 2,000 tokens would take well over a minute."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import ARTIFACTS, serve, set_number, wait_status

pytestmark = pytest.mark.browser

SHORT_PROMPT = "def add(a, b):\n"  # leaves room for 2,000 new tokens in the tiny pair's 2,048 positions
MAX_KB = 256  # no streamed update may be bigger than this (typically 20-40 KB; before: up to 855 KB at 2,000 tokens)

# Counts the bytes of every SSE message the page receives: Gradio's client reads /queue/data through fetch(), so the
# response is teed and one copy is read here, message by message (messages end with a blank line).
FRAMES_JS = """
(() => {
  window.__svFrames = [];
  const orig = window.fetch;
  window.fetch = async (...args) => {
    const resp = await orig(...args);
    const url = typeof args[0] === 'string' ? args[0] : args[0].url;
    const sse = (resp.headers.get('content-type') || '').includes('event-stream');
    if (!url.includes('/queue/data') || !resp.body || !sse) return resp;
    const [mine, theirs] = resp.body.tee();
    (async () => {
      const reader = mine.getReader(), dec = new TextDecoder(), enc = new TextEncoder();
      let buf = '';
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true});
        let i;
        while ((i = buf.indexOf('\\n\\n')) >= 0) {
          const msg = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const kind = (/"msg":\\s*"(\\w+)"/.exec(msg.slice(0, 80)) || [])[1] || '';
          window.__svFrames.push({t: performance.now(), n: enc.encode(msg).length, kind});
        }
      }
    })();
    return new Response(theirs, {status: resp.status, statusText: resp.statusText, headers: resp.headers});
  };
})();
"""


@pytest.fixture(scope="module")
def slow_app() -> Iterator[str]:
    """The app with a 10 ms pause after every verification step (the test hook)."""
    with serve(env={"SPECVIZ_TEST_STEP_DELAY": "0.01"}, log_name="app-stop.log") as url:
        yield url


def tokens_shown(page) -> int:
    """Emitted tokens in the stream (rejected and discarded drafts are not output)."""
    return page.evaluate(
        "document.querySelectorAll('#sv-stream .sv-tok:not(.sv-rejected):not(.sv-not-reached)').length"
    )


def frames(page, since: float) -> list[dict[str, Any]]:
    """The SSE messages the page received since `since` (performance.now() ms): time, bytes, kind."""
    return [f for f in page.evaluate("window.__svFrames") if f["t"] >= since]


def test_stop_registers_within_a_step_and_updates_stay_small(browser, slow_app):  # noqa: F811
    """A 2,000-token run, Stop clicked a few seconds in: it stops at once, its stream is whole, updates stay small."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.add_init_script(FRAMES_JS)
    page.set_default_timeout(60_000)
    page.goto(slow_app + "/?__theme=light", wait_until="load")
    page.wait_for_selector("#sv-model-status .sv-ok", timeout=120_000)
    page.locator("#sv-prompt textarea").fill(SHORT_PROMPT)
    box = page.locator("#sv-strategy input").first
    box.click()
    page.get_by_role("option", name="layerskip", exact=True).click()
    set_number(page, "sv-gamma", 16)
    set_number(page, "sv-max-new", 2000)
    assert page.locator("#sv-max-new input[type=number]").input_value() == "2000"

    t_run = page.evaluate("performance.now()")
    page.locator("#sv-run").click()
    page.wait_for_function("document.querySelectorAll('#sv-stream .sv-tok').length > 20", timeout=60_000)
    t_first = time.time()
    while time.time() - t_first < 12 and tokens_shown(page) < 400:  # a few seconds of streaming, a long stream
        time.sleep(0.25)
    before = tokens_shown(page)
    time.sleep(1.0)
    rate = (tokens_shown(page) - before) / 1.0  # tokens per second as the page shows them
    at_click = tokens_shown(page)
    click_t = page.evaluate("performance.now()")  # frames before this are the live updates
    t0 = time.time()
    page.locator("#sv-stop").click(timeout=10_000)  # a real mouse click: the page must be idle enough to take it
    click_s = time.time() - t0
    status = wait_status(page, r"stopped after (\d+) tokens|done: \d+ tokens", timeout=30)
    stop_s = time.time() - t0
    m = re.search(r"stopped after (\d+) tokens", status)
    assert m, f"the run ended before Stop reached it: {status!r}"
    stopped_at = int(m.group(1))
    time.sleep(1.0)
    settled = tokens_shown(page)
    time.sleep(1.5)
    assert tokens_shown(page) == settled, "tokens kept coming after Stop"
    page.screenshot(path=str(ARTIFACTS / "stop-after.png"), full_page=True)
    page.locator("#sv-stream").screenshot(path=str(ARTIFACTS / "stop-stream.png"))

    # the stream assembled from deltas is whole: every step once, in order, and every emitted token the run reports
    steps = page.evaluate("[...document.querySelectorAll('#sv-stream .prose > .sv-step')].map(s => +s.dataset.step)")
    assert steps == list(range(1, len(steps) + 1)), "steps missing, repeated or out of order"
    assert settled == stopped_at, (settled, stopped_at)
    assert page.locator("#sv-stream .sv-prompt").inner_text() == SHORT_PROMPT

    # Stop took effect within about one step: the click went through at once, the status said so within a few
    # seconds (the final charts, table and files follow it), and the engine made only the tokens of the steps in
    # flight while the press travelled (at ~1 token per step, a few; the page lags the engine by one update)
    late = stopped_at - at_click
    print(
        f"\nstop: click {click_s:.2f} s, status after {stop_s:.2f} s, {at_click} tokens shown at the click, "
        f"{stopped_at} at the stop ({late} later, {rate:.0f} tokens/s shown before)"
    )
    assert click_s < 2.0, f"the Stop click took {click_s:.1f} s to go through"
    assert stop_s < 5.0, f"Stop took {stop_s:.1f} s to show"
    assert 0 < stopped_at < 2000 and late <= max(24, 1.5 * rate), (at_click, stopped_at, rate)

    # bytes per update: the streamed updates of this run up to the click, the first third against the last third
    # (means: an update carries the steps made since the one before, so a stall on a loaded machine makes one bigger)
    run_frames = [f for f in frames(page, t_run) if f["kind"] in ("process_generating", "process_completed")]
    live = [f["n"] for f in run_frames if f["t"] < click_t and f["kind"] == "process_generating"]
    end = [f["n"] for f in run_frames if f["t"] >= click_t]
    assert len(live) >= 9, f"only {len(live)} streamed updates"
    third = len(live) // 3
    first, last = live[:third], live[-third:]
    mean = lambda xs: sum(xs) / len(xs) / 1024  # noqa: E731
    print(
        f"updates: {len(live)} streamed, first third mean {mean(first):.1f} KB (max {max(first) / 1024:.1f}), last "
        f"third mean {mean(last):.1f} KB (max {max(last) / 1024:.1f}); after Stop {len(end)} messages, "
        f"{sum(end) / 1024:.1f} KB in all"
    )
    assert mean(last) <= 2 * mean(first), (first, last)
    assert max(live) < MAX_KB * 1024, live
    assert sum(end) < 4 * MAX_KB * 1024, end  # the end sends charts, text and table once, never the whole stream again

    # ready again, and a new run starts a fresh stream (no tokens of the stopped one left)
    set_number(page, "sv-max-new", 24)
    page.locator("#sv-run").click()
    done = wait_status(page, r"done: 24 tokens", timeout=120)
    assert tokens_shown(page) == 24, done
    page.close()
