"""The token-tree view in Debian's chromium: a drafttree run on the tiny preset draws its latest tree step with no
overlapping nodes, a hovered node's tooltip holds p, q and min(1, p/q) and fits the window, the step picker and step
mode redraw it, a chain run shows the explanatory message, Compare's shortcut sets a chain beside its tree, and a
64-node tree (drawn with the app's stylesheet) stays apart and readable. Screenshots go to tests/artifacts/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import (
    ARTIFACTS,
    ROOT,
    choose_rule,
    choose_strategy,
    fake_pair,
    open_page,
    serve,
    set_number,
    set_prompt,
    wait_figure,
    wait_status,
)

from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.proposers import build_proposer
from specviz.ui.page import TOOLTIP_JS
from specviz.ui.tree_view import render_tree

pytestmark = pytest.mark.browser

PROMPT = "def add(a, b):\n    return a + b\n"
# the drawn nodes' rectangles, pairwise apart (in page pixels), and how many there are
APART_JS = """() => {
  const r = [...document.querySelectorAll('#sv-tree .sv-tn > rect:first-child, .sv-tree .sv-tn > rect:first-child')]
    .filter(e => !e.closest('.sv-tree-legend')).map(e => e.getBoundingClientRect());
  for (let i = 0; i < r.length; i++) for (let j = i + 1; j < r.length; j++) {
    const a = r[i], b = r[j];
    if (a.right > b.left && b.right > a.left && a.bottom > b.top && b.bottom > a.top) return [i, j];
  }
  return r.length;
}"""


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    with serve(log_name="app-tree.log") as url:
        yield url


def _hover_tip(page, selector: str) -> str:
    node = page.locator(selector).first
    node.scroll_into_view_if_needed()
    node.hover()
    tip = page.locator("#sv-tooltip")
    tip.wait_for(state="visible")
    box, view = tip.bounding_box(), page.viewport_size
    assert box and box["x"] >= 0 and box["y"] >= 0, box
    assert box["x"] + box["width"] <= view["width"] and box["y"] + box["height"] <= view["height"], (box, view)
    return tip.inner_text()


def test_a_tree_run_draws_its_tree_with_tooltips_and_a_step_picker(browser, app_url):
    page = open_page(browser, app_url)
    set_prompt(page, PROMPT)
    choose_strategy(page, "drafttree")
    set_number(page, "sv-max-new", 48)
    page.click("#sv-run")
    status = wait_status(page, r"^\W*ok\W+done")
    assert "identical to plain" in status
    view = page.locator("#sv-tree .sv-tree[data-nodes]")  # the drawn tree (the placeholder has none)
    view.wait_for()
    steps = int(page.locator("#sv-tree-step input[type=range]").get_attribute("max"))  # the run's steps
    shown = int(page.locator("#sv-tree-step input[type=number]").input_value())
    # the latest tree step is shown by default (the run's last step may have had nothing left to draft)
    assert view.get_attribute("data-step") == str(shown) and steps - 1 <= shown <= steps
    nodes = int(view.get_attribute("data-nodes"))
    drawn = page.evaluate(APART_JS)
    assert isinstance(drawn, int), f"nodes {drawn} overlap"
    assert drawn == page.locator("#sv-tree .sv-tree-svg .sv-tn").count() >= nodes + 1  # + the root (+ target's)
    accepted = page.locator("#sv-tree .sv-tree-svg .sv-tn-accepted").count()
    targets = page.locator("#sv-tree .sv-tree-svg .sv-tn-bonus, #sv-tree .sv-tree-svg .sv-tn-resampled").count()
    assert page.locator("#sv-tree .sv-te-accepted").count() == accepted + targets == 1 + accepted  # the path's edges
    text = _hover_tip(page, "#sv-tree .sv-tn-rejected, #sv-tree .sv-tn-not_reached")
    for part in ("tree node", "depth", "p (target) =", "q (draft)  =", "min(1, p/q) =", "path:"):
        assert part in text, f"tooltip lacks {part!r}: {text!r}"
    page.screenshot(path=str(ARTIFACTS / "tree-hover-light.png"))  # the window: the fixed tooltip included
    page.locator("#sv-treebox").screenshot(path=str(ARTIFACTS / "tree-panel-light.png"))
    # another step through the picker
    set_number(page, "sv-tree-step", 1)
    page.wait_for_selector("#sv-tree .sv-tree[data-step='1']")
    assert wait_figure(page, "sv-fig-tree-pass", 2) == [steps, steps]
    assert wait_figure(page, "sv-fig-tree-len", 2)[0] >= steps - 1
    # step mode: the walk in words, and the view follows the step taken
    page.click("#sv-step")
    page.wait_for_selector("#sv-step-panel .sv-walk li")
    walk = page.locator("#sv-step-panel .sv-walk").inner_text()
    assert "the target's top choice is" in walk and ("follow it" in walk or "itself (a correction)" in walk)
    page.wait_for_function(
        "() => { const t = document.querySelector('#sv-tree .sv-tree'); return t && t.dataset.step === '1'; }"
    )
    page.locator("#sv-stepmode").screenshot(path=str(ARTIFACTS / "tree-stepmode-light.png"))
    page.close()


def test_sampled_tree_in_dark_mode(browser, app_url):
    page = open_page(browser, app_url, dark=True)
    set_prompt(page, PROMPT)
    choose_strategy(page, "multidraft")
    choose_rule(page, "speculative sampling")
    set_number(page, "sv-max-new", 32)
    page.click("#sv-run")
    wait_status(page, r"^\W*ok\W+done")
    page.locator("#sv-tree .sv-tree-svg").wait_for()
    assert isinstance(page.evaluate(APART_JS), int)
    text = _hover_tip(page, "#sv-tree .sv-tn-accepted, #sv-tree .sv-tn-rejected")
    assert "min(1, p/q) =" in text
    page.screenshot(path=str(ARTIFACTS / "tree-hover-dark.png"))
    page.close()


def test_a_chain_run_says_to_pick_a_tree_strategy_and_compare_sets_chain_beside_tree(browser, app_url):
    page = open_page(browser, app_url)
    set_prompt(page, PROMPT)
    set_number(page, "sv-max-new", 16)
    page.click("#sv-run")  # the default strategy, draft, is a chain
    wait_status(page, r"^\W*ok\W+done")
    page.wait_for_selector("#sv-tree [data-chain]")
    assert "drafts a single chain; pick a tree strategy" in page.locator("#sv-tree").inner_text()
    page.get_by_role("tab", name="Compare").click()
    page.locator("#cmp-prompt textarea").fill(PROMPT)
    set_number(page, "cmp-max-new", 24)
    page.locator("#cmp-shortcut input").first.click()
    page.get_by_role("option", name="chain vs tree: draft model (draft, drafttree)").click()
    page.wait_for_function(
        """() => [...document.querySelectorAll('#cmp-strategies input')].filter(i => i.checked).length === 2"""
    )
    checked = [
        label.inner_text().strip()
        for label in page.locator("#cmp-strategies label").all()
        if label.locator("input").is_checked()
    ]
    assert checked == ["draft", "drafttree"]
    page.click("#cmp-run")
    wait_status(page, r"done", selector="#cmp-status", timeout=120)
    assert wait_figure(page, "cmp-tree-chart", 2) == [2, 2]  # tokens and nodes per pass, one bar per strategy
    page.locator("#cmp-tree-chart").screenshot(path=str(ARTIFACTS / "tree-compare-light.png"))
    page.close()


def test_a_64_node_tree_stays_apart_and_readable(browser, tiny_pair, codec):
    """The UI's tree strategies use the default budget (16 nodes): the largest tree, 64 nodes of depth 6 and width
    8, drawn from a real run with the app's stylesheet and page script."""
    target, draft = tiny_pair
    cfg = GenConfig(gamma=6, max_new_tokens=40, options={"tree_nodes": 64, "tree_width": 8})
    text = "def f(x):\n    return x + 1\n\ndef g(x):\n    return x"
    steps = list(
        run(
            target,
            build_proposer("drafttree", fake_pair(target, draft), cfg),
            codec.encode(text),
            cfg,
            piece=codec.piece,
        )
    )
    big = max((s for s in steps if s.tree and len(s.tree) == 64), key=lambda s: max(n.depth for n in s.tree))
    css = (ROOT / "specviz" / "assets" / "style.css").read_text()
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    theme = ":root{--border-color-primary:#d0d5dd;--background-fill-secondary:#f7f8fa;--body-text-color:#1f2430}"
    page.set_content(
        f"<style>{theme}{css}</style><body style='font-family:sans-serif'>{render_tree(big, 'greedy', 'x')}</body>"
    )
    page.evaluate(TOOLTIP_JS)  # the app's page script: its tooltip
    assert page.evaluate(APART_JS) == 64 + 1 + (1 if any(t.origin in ("resampled", "bonus") for t in big.tokens) else 0)
    scroll = page.locator(".sv-tree-scroll")
    assert scroll.evaluate("e => e.scrollHeight > e.clientHeight")  # too tall for the box: it scrolls, never shrinks
    text = _hover_tip(page, ".sv-tn-not_reached")
    assert "never checked" in text
    page.screenshot(path=str(ARTIFACTS / "tree-64-light.png"))
    page.close()
