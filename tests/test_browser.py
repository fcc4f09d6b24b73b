"""Drives the real app (python app.py --preset tiny-random) in Debian's chromium through Playwright: a run with every
token class and live charts, tooltips, Stop, an empty prompt, three Steps, Compare, and screenshots (light, dark, a
long code answer) saved under tests/artifacts/."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from helpers import (
    ARTIFACTS,
    choose_rule,
    choose_strategy,
    emitted_count,
    figure_points,
    open_page,
    serve,
    set_number,
    set_prompt,
    wait_figure,
    wait_status,
)

pytestmark = pytest.mark.browser

# the app in a subprocess, chromium and the page helpers: tests/helpers.py and conftest.py

ADD_PROMPT = "def add(a, b):\n    return a + b\n"
CLASSES = ("sv-accepted", "sv-rejected", "sv-not-reached", "sv-resampled", "sv-bonus")
FIGURES = ("sv-fig-tput", "sv-fig-accept", "sv-fig-hist", "sv-fig-pos", "sv-fig-theory")


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    """The app in a subprocess on a free port; its log is printed if it dies."""
    with serve() as url:
        yield url


def test_run_shows_every_token_class_charts_and_summary(browser, app_url):
    page = open_page(browser, app_url)
    set_prompt(page, ADD_PROMPT)
    page.click("#sv-run")
    status = wait_status(page, r"^\W*ok\W+done")
    assert "identical to plain" in status  # greedy is lossless
    for cls in CLASSES:
        assert page.locator(f"#sv-stream .{cls}").count() > 0, f"no token styled {cls}"
    # the prompt and its newline/indentation survive as text
    assert page.locator("#sv-stream .sv-prompt").inner_text() == ADD_PROMPT
    tput = wait_figure(page, "sv-fig-tput", 2)  # the speculative run and the plain baseline
    assert min(tput) > 1, tput
    for fig in FIGURES:
        points = figure_points(page, fig)
        assert points and max(points) > 0, f"{fig} holds no data: {points}"
    speed = page.locator("#sv-kpis [data-kpi=speedup] b").inner_text()
    assert re.fullmatch(r"\d+\.\d\dx", speed), speed
    table = page.locator("#sv-summary").inner_text()
    assert "plain decoding (baseline)" in table and "speculative" in table
    assert page.locator("#sv-theory .sv-why").inner_text().startswith("Drafting costs")
    # hovering a rejected token shows step, position, p, q, min(1, p/q) and the verdict
    page.locator("#sv-stream .sv-rejected").first.hover()
    tip = page.locator("#sv-tooltip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    for part in ("step ", "draft position", "p (target) =", "q (draft)  =", "min(1, p/q) =", "rejected"):
        assert part in text, f"tooltip lacks {part!r}: {text!r}"
    page.screenshot(path=str(ARTIFACTS / "run-light.png"), full_page=True)
    page.locator("#sv-stream").screenshot(path=str(ARTIFACTS / "stream-light.png"))
    # both downloads are offered
    assert page.locator("#sv-dl-trace").is_enabled() and page.locator("#sv-dl-csv").is_enabled()
    page.close()


def test_stop_ends_a_long_run_and_leaves_the_app_ready(browser, app_url):
    page = open_page(browser, app_url)
    other = open_page(browser, app_url)  # a second visitor
    set_number(other, "sv-max-new", 20)
    # layerskip at gamma 16 is the costliest setting per token on the tiny pair: the shallow self-draft almost never
    # agrees with the target, so every step runs 16 draft passes and a target pass for about one token. 1800 tokens
    # take about 64 s of engine time alone (the default draft strategy at gamma 16: about 17 s), and a loaded machine
    # stretches that to minutes, so the run outlasts the queue wait and Stop below by a wide margin; Stop cuts it
    # short, so the test stays quick
    choose_strategy(page, "layerskip")
    set_number(page, "sv-gamma", 16)
    set_number(page, "sv-max-new", 1800)  # the default prompt leaves room for this many
    page.click("#sv-run")
    page.wait_for_function("document.querySelectorAll('#sv-stream .sv-tok').length > 8")
    # the second visitor waits in the queue (one generation per loaded model) and sees the position; the page's
    # own poll would add latency, so the status is watched in the browser and Stop is pressed the moment it shows
    other.click("#sv-run")
    other.wait_for_function(
        "/queue: \\d+\\/\\d+/i.test(document.querySelector('#sv-run-status').innerText)", polling=50, timeout=30_000
    )
    # a real mouse click: the live updates are small (only new steps), so the page stays idle enough to take it
    page.locator("#sv-stop").click(timeout=10_000)
    status = wait_status(page, r"stopped after (\d+) tokens|done: \d+ tokens")
    m = re.search(r"stopped after (\d+) tokens", status)
    assert m, f"the run ended before Stop reached it: {status!r}"
    assert 0 < int(m.group(1)) < 1800
    wait_status(other, r"done: 20 tokens")  # the waiting visitor's run went through
    other.close()
    # ready again: a short run goes through
    set_number(page, "sv-max-new", 24)
    page.click("#sv-run")
    wait_status(page, r"done: 24 tokens")
    page.close()


def test_empty_prompt_shows_an_error_and_keeps_results(browser, app_url):
    page = open_page(browser, app_url)
    set_prompt(page, ADD_PROMPT)
    set_number(page, "sv-max-new", 30)
    page.click("#sv-run")
    wait_status(page, r"done")
    before = emitted_count(page)
    set_prompt(page, "   ")
    page.click("#sv-run")
    status = wait_status(page, r"prompt is empty")
    assert page.locator("#sv-run-status .sv-error").count() == 1, status
    assert "Traceback" not in page.content()
    assert emitted_count(page) == before, "an error must not wipe the previous results"
    # a number typed outside a slider's range is clamped by the page, and a note beside the field says so
    set_number(page, "sv-gamma", 0)
    note = page.locator("#sv-gamma .sv-clamp-note")
    note.wait_for()
    assert note.inner_text() == "gamma (draft length): 0 is below the minimum, so 1 is used"
    assert page.locator("#sv-gamma input[type=number]").input_value() == "1"
    set_number(page, "sv-max-new", 99999)
    assert "max new tokens: 99999 is above the maximum, so 2000 is used" in page.locator("#sv-max-new").inner_text()
    set_number(page, "sv-gamma", 4)
    note.wait_for(state="detached")  # an in-range value takes the note away
    set_number(page, "sv-max-new", 30)
    # an out-of-range setting is named too
    set_prompt(page, ADD_PROMPT)
    choose_rule(page, "speculative sampling")
    set_number(page, "sv-temperature", 0)
    page.click("#sv-run")
    wait_status(page, r"temperature 0 means greedy")
    page.close()


def test_step_mode_walks_three_steps(browser, app_url):
    page = open_page(browser, app_url)
    set_prompt(page, ADD_PROMPT)
    choose_rule(page, "speculative sampling")
    set_number(page, "sv-max-new", 40)
    for k in (1, 2, 3):
        page.click("#sv-step")
        page.wait_for_selector(f"#sv-step-panel .sv-steppanel[data-step='{k}']")
        panel = page.locator("#sv-step-panel").inner_text()
        assert "Draft proposes" in panel and "Target checks" in panel and "Verdict" in panel
        assert page.locator("#sv-stream .sv-current").count() == 1
        assert page.locator("#sv-stream .sv-step").count() == k
    # step 3 of this seeded run rejects a draft: the chart shows p, q and the residual the correction comes from
    assert "Correction" in page.locator("#sv-step-panel").inner_text()
    wait_figure(page, "sv-fig-step", 3)
    names = page.evaluate("document.querySelector('#sv-fig-step .js-plotly-plot').data.map(t => t.name)")
    assert names == ["p (target)", "q (draft)", "residual norm(max(0, p - q))"]
    page.locator("#sv-stepmode").screenshot(path=str(ARTIFACTS / "step-mode.png"))
    page.close()


def test_dark_mode_long_code_answer(browser, app_url):
    page = open_page(browser, app_url, dark=True)
    assert page.evaluate("document.body.classList.contains('dark')")
    set_number(page, "sv-max-new", 600)
    page.click("#sv-run")  # the default prompt is the first code example
    wait_status(page, r"done: 600 tokens", timeout=180)
    page.locator("#sv-stream .sv-resampled").first.hover()
    page.locator("#sv-tooltip").wait_for(state="visible")
    page.screenshot(path=str(ARTIFACTS / "run-dark.png"), full_page=True)
    page.locator("#sv-stream").screenshot(path=str(ARTIFACTS / "long-code-dark.png"))
    page.close()
    light = open_page(browser, app_url)
    set_number(light, "sv-max-new", 600)
    light.click("#sv-run")
    wait_status(light, r"done: 600 tokens", timeout=180)
    light.locator("#sv-stream").screenshot(path=str(ARTIFACTS / "long-code-light.png"))
    light.close()


def test_compare_two_strategies(browser, app_url):
    two = ["draft", "medusa"]  # medusa runs the tiny preset's shipped helper heads
    page = open_page(browser, app_url)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#cmp-prompt textarea").fill(ADD_PROMPT)
    boxes = page.locator("#cmp-strategies label")
    for i in range(boxes.count()):
        label = boxes.nth(i)
        want = label.inner_text().strip() in two
        if label.locator("input").is_checked() != want:
            label.click()
    page.click("#cmp-run")
    wait_status(page, r"done", selector="#cmp-status", timeout=120)
    table = page.locator("#cmp-table").inner_text()
    for name in [*two, "plain", "acceptance by draft position"]:
        assert name in table
    assert table.count("yes") >= 2, "greedy outputs must equal plain token for token"
    assert [c.get_attribute("data-run") for c in page.locator("#cmp-outputs .sv-col").all()] == [*two, "plain"]
    assert wait_figure(page, "cmp-chart", 2) == [3, 3]
    page.screenshot(path=str(ARTIFACTS / "compare-light.png"), full_page=True)
    page.close()


def test_theory_lab_playground_renders_and_responds(browser, app_url):
    """The toy playground needs no model: it renders at once and redraws when p or q changes."""
    page = open_page(browser, app_url)
    page.get_by_role("tab", name="Theory lab").click()
    big = page.locator("#lab-pg-summary .sv-lab-big")
    big.wait_for()
    # the 'close' case: overlap sum min(p, q) = 0.25 + 0.25 + 0.2 + 0.1 + 0.1
    assert big.get_attribute("data-overlap") == "0.9000"
    assert wait_figure(page, "lab-pg-fig-dist", 5) == [5] * 5  # p, q, overlap, residual, acceptance over 5 tokens
    assert sum(wait_figure(page, "lab-pg-fig-hist", 2)) == 10
    overlap = "document.querySelector('#lab-pg-summary .sv-lab-big')?.getAttribute('data-overlap')"
    page.locator("#lab-pg-q textarea").fill("0.2, 0.2, 0.2, 0.2, 0.2")
    page.wait_for_function(f"{overlap} === '0.8500'")  # min with p = 0.3, 0.25, 0.2, 0.15, 0.1
    page.wait_for_function(
        "document.querySelector('#lab-pg-fig-dist .js-plotly-plot').data[1].y.every(v => Math.abs(v - 0.2) < 1e-9)"
    )
    # bad input: a clear message, the charts stay
    page.locator("#lab-pg-q textarea").fill("0.2, x, 0.2, 0.2, 0.2")
    page.wait_for_selector("#lab-pg-summary .sv-error")
    assert "'x' is not a number" in page.locator("#lab-pg-summary").inner_text()
    assert len(figure_points(page, "lab-pg-fig-dist")) == 5
    # a case with disjoint supports: nothing overlaps, every draft is rejected
    page.locator("#lab-pg-case label", has_text="disjoint").click()
    page.wait_for_function(f"{overlap} === '0.0000'")
    assert "Traceback" not in page.content()
    page.screenshot(path=str(ARTIFACTS / "lab-playground.png"), full_page=True)
    page.close()
