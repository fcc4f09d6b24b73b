"""Incremental streaming of the Run tab's token stream. While a run goes, the stream component itself is left alone
(every value Gradio 6 hands an HTML component is compared, copied and re-rendered whole in the browser, so a growing
value costs work that grows with the stream on each update); a hidden delta component carries only the steps not sent
yet, and DELTA_JS, run in the browser whenever the delta's value changes, appends them to the stream's container. The
whole stream is never sent for a run (Gradio's closing message would repeat it); the downloads hold it. No gradio
here."""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Sequence

from specviz.core.events import StepEvent
from specviz.ui.render import PROMPT_CSS, render_step

MARK = "<!--sv-live:{}:{}-->"  # opens every delta: the run it belongs to and the index of its first step


def parse_mark(value: str) -> tuple[str, int] | None:
    """(run id, first step index) of a delta value; None for a value that is no delta (tests read deltas back)."""
    m = re.match(r"<!--sv-live:(\w+):(\d+)-->", value or "")
    return (m.group(1), int(m.group(2))) if m else None


class LiveStream:
    """What one run has sent to the browser: each update's delta holds the steps after the last one sent (the first
    also the prompt), so its size depends on the steps made since the last update, never on the stream's length."""

    def __init__(self, rule: str, prefix: str = "") -> None:
        self.rule = rule
        self.run_id = prefix + secrets.token_hex(6)  # prefix: a word that tells kinds of runs apart (replays: "r")
        self.sent = 0  # steps already sent
        self.value = MARK.format(self.run_id, 0)  # the last delta (unchanged: nothing new, the browser does nothing)

    def update(self, steps: Sequence[StepEvent], prompt: str) -> str:
        """The delta for the steps not sent yet, or the previous delta again when there are none. The prompt goes in
        with the first step: by then the worker has said whether it is shown (chat models apply a template)."""
        if len(steps) <= self.sent:
            return self.value
        head = ""
        if self.sent == 0 and prompt:
            head = f'<span class="{PROMPT_CSS}" data-tip="the prompt">{html.escape(prompt)}</span>'
        body = "".join(render_step(s, self.rule) for s in steps[self.sent :])
        self.value = MARK.format(self.run_id, self.sent) + head + body
        self.sent = len(steps)
        return self.value


# Runs in the browser as the delta component's js_on_load (Gradio gives it `props` and `watch`). Steps carry their
# number (data-step), so the container's last one says how far it got: a delta that starts there is appended; a new
# run mark starts an empty container; a container redrawn behind our back is rebuilt from the deltas kept in `parts`;
# one that is ahead (a step-mode render landed) is left alone. A delta that starts later than expected (one was
# dropped, which Gradio's in-order stream should never do) is appended anyway and the container marked (data-gap: the
# page then says that the downloads hold every step). While the visitor has the container scrolled to its end, it
# stays there (scrolling up to read stops that). A run that another has replaced is over: its late deltas (a replay's
# last one, sent as Run was pressed) are ignored; window.__svLiveEnd() ends the current one from the page's own script.
DELTA_JS = """
const box = () => document.querySelector('#sv-stream .prose');
const last = (b) => { const c = b.lastElementChild; return c && c.dataset && c.dataset.step ? +c.dataset.step : 0; };
let run = null, parts = [], known = 0;
const over = new Set();
window.__svLiveEnd = () => { if (run) over.add(run); run = null; parts = []; known = 0; window.__svLiveRun = ''; };
watch('value', () => {
  const v = typeof props.value === 'string' ? props.value : '';
  const m = /^<!--sv-live:(\\w+):(\\d+)-->/.exec(v);
  const b = box();
  if (!m || !b || over.has(m[1])) return;
  if (m[1] !== run) {
    if (run) over.add(run);
    run = m[1]; parts = []; known = 0; b.innerHTML = ''; delete b.dataset.gap;
    window.__svLiveRun = run;
  }
  const dom = last(b);
  if (dom > known) { run = 'done'; return; }
  if (dom < known) b.innerHTML = parts.join('');
  const follow = b.scrollTop + b.clientHeight >= b.scrollHeight - 40;  // at the end: keep the newest steps in view
  if (+m[2] > known) b.dataset.gap = 'true';
  if (+m[2] >= known) { b.insertAdjacentHTML('beforeend', v); parts.push(v); }
  if (follow) b.scrollTop = b.scrollHeight;
  known = last(b);
  window.__svLiveSteps = known;
});
"""
