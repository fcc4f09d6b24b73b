"""Replays in Debian's chromium: the page opens on the gallery's code / draft / greedy run, which plays within 2 s of
the page's load event (or with the page's own controls, where those draw later) before anything else is pressed;
the scrubber jumps to a step and step mode's captions follow; a live run (tiny-random) then takes over the stream
cleanly; a hostile upload is one message. Screenshots of each state are saved under tests/artifacts/ for a person
to look at."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import ARTIFACTS, serve, set_number, set_prompt, wait_status

pytestmark = pytest.mark.browser

TOKENS = "document.querySelectorAll('#sv-stream .sv-tok').length"
# the page's own clock: when the first token of the stream, and the Run button (the page's controls, drawn by Gradio),
# were in the document (a MutationObserver from the start)
FIRST_TOKEN_JS = """
new MutationObserver((_, obs) => {
  const now = performance.now();
  if (window.__svRunButton === undefined && document.querySelector('#sv-run')) window.__svRunButton = now;
  if (window.__svFirstToken === undefined && document.querySelector('#sv-stream .sv-tok')) window.__svFirstToken = now;
  if (window.__svRunButton !== undefined && window.__svFirstToken !== undefined) obs.disconnect();
}).observe(document, {childList: true, subtree: true});
"""
SINCE_LOAD = "(window.{} - performance.getEntriesByType('navigation')[0].loadEventEnd) / 1e3"
VISITS = 3  # the page's first sight is timed on this many fresh pages, the best counted (a busy machine draws late)
STEPS = "document.querySelectorAll('#sv-stream .sv-step').length"


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    with serve(log_name="app-replay-browser.log") as url:
        yield url


def test_the_page_opens_on_a_playing_replay_that_scrubs_and_gives_way_to_a_live_run(browser, app_url):
    # a first visitor, so the server has read its static files once (a fresh subprocess serves the first page's
    # hundred-odd script and style files from a cold disk); the visitor timed below has a browser cache of its own
    warm = browser.new_page()
    warm.goto(app_url + "/?__theme=light", wait_until="load")
    warm.wait_for_selector("#sv-stream .sv-tok", timeout=60_000)
    warm.close()
    visits = []  # (first tokens, Run button) in seconds after the page's load event, one pair per fresh page
    for i in range(VISITS):
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(60_000)
        page.add_init_script(FIRST_TOKEN_JS)
        page.goto(app_url + "/?__theme=light", wait_until="load")
        page.wait_for_function("window.__svFirstToken !== undefined && window.__svRunButton !== undefined", polling=50)
        visits.append(
            (page.evaluate(SINCE_LOAD.format("__svFirstToken")), page.evaluate(SINCE_LOAD.format("__svRunButton")))
        )
        if i < VISITS - 1:
            page.close()
    first, drawn = min(visits)
    seen = ", ".join(f"{a:.2f} s (Run button {b:.2f} s)" for a, b in visits)
    # measured in the page, from its load event: the opening replay's first tokens within 2 s, or, where the page's
    # own controls take longer than that to draw (chromium on a busy 2-core machine: 2.3-3.6 s seen), no later than
    # they are: the replay is never what a visitor waits for
    assert first <= max(2.0, drawn), f"the opening replay's first tokens came {seen} after the page's load event"
    # the first step is in the page as served: it is drawn with the page's controls, with no round trip of its own
    assert first - drawn <= 0.5, f"the first tokens came {first - drawn:.2f} s after the page's controls ({seen})"
    status = page.locator("#sv-replay-status").inner_text()
    assert "replay of code · draft · greedy" in status, status
    assert "recorded on" in status  # the machine and date it was recorded on
    n0 = page.evaluate(STEPS)
    page.wait_for_function(f"{STEPS} > {n0}", polling=100, timeout=10_000)  # and goes on, step after step
    page.screenshot(path=str(ARTIFACTS / "replay-playing.png"), full_page=True)
    print(f"first replayed tokens after the load event, {VISITS} fresh pages: {seen}")

    # scrub to step 3: the stream holds exactly 3 steps, the third highlighted, and step mode explains it
    set_number(page, "sv-scrub", 3)
    page.wait_for_function(
        "document.querySelector('#sv-stream .sv-current[data-step=\"3\"]') !== null", polling=100, timeout=10_000
    )
    assert page.evaluate(STEPS) == 3
    page.wait_for_selector('#sv-step-panel .sv-steppanel[data-step="3"]', state="attached")
    assert "paused" in page.locator("#sv-replay-status").inner_text()
    page.wait_for_timeout(800)  # the playing loop has stopped: nothing more arrives
    assert page.evaluate(STEPS) == 3
    page.screenshot(path=str(ARTIFACTS / "replay-scrubbed.png"), full_page=True)

    # a live run on the tiny pair takes the stream over: its own prompt, then its own steps only
    prompt = "def add(a, b):\n"
    set_prompt(page, prompt)
    set_number(page, "sv-max-new", 40)
    page.click("#sv-run")
    wait_status(page, r"done: \d+ tokens")
    assert page.locator("#sv-stream .sv-prompt").inner_text() == prompt
    kpi_steps = int(page.locator("#sv-kpis [data-kpi=steps] b").inner_text())
    assert page.evaluate(STEPS) == kpi_steps
    assert page.locator("#sv-stream .sv-current").count() == 0
    page.screenshot(path=str(ARTIFACTS / "replay-then-live.png"), full_page=True)
    page.close()


def test_a_hostile_upload_is_one_message(browser, app_url, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url + "/?__theme=light", wait_until="load")
    page.wait_for_selector("#sv-replay-upload")
    bad = tmp_path / "not-a-trace.json"
    bad.write_text('{"steps": "nope"}')
    with page.expect_file_chooser() as chooser:
        page.click("#sv-replay-upload")
    chooser.value.set_files(str(bad))
    wait_status(page, "not a specviz event trace", selector="#sv-replay-status", timeout=30)
    assert page.locator("#sv-replay-status .sv-error").count() == 1
    assert "Traceback" not in page.content()
    page.close()
