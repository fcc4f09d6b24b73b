"""The Run tab's token-tree panel: a step picker, the tree view of the picked step (tree_view.py) and the tree charts
(tree_charts.py). The Run tab hands it each drawn run through a gr.State (not part of the API's outputs, so /run's
output positions stay), whose change redraws the panel; moving the picker redraws the view alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from specviz.core.events import StepEvent
from specviz.ui import tree_charts
from specviz.ui.common import Outputs, Update, plot
from specviz.ui.controls import slider
from specviz.ui.session import RunState
from specviz.ui.tree_view import EMPTY_TREE, latest_tree_step, render_tree_view


@dataclass(eq=False)  # identity hash: Gradio's change check on a State hashes it on every update, cheaply so
class TreeRun:
    """What the panel draws: a run's steps, its rule and the prompt shown before its output."""

    steps: list[StepEvent]
    rule: str
    prompt: str = ""


def tree_run(state: RunState) -> TreeRun | None:
    """The panel's value for a drawn run snapshot (None before any step)."""
    spec = state.spec
    if spec is None or not spec.steps:
        return None
    return TreeRun(list(spec.steps), state.request.cfg.rule if state.request else "greedy", state.prompt_shown)


def pick_slider(run: TreeRun | None) -> gr.Slider:
    """The step picker for a run: every step of it, set on the latest tree step."""
    n = len(run.steps) if run else 0
    latest = latest_tree_step(run.steps) if run else None
    value = (latest if latest is not None else n - 1) + 1 if n else 1
    # a slider needs two ends: a one-step run gets 1..2, not interactive
    return gr.Slider(minimum=1, maximum=max(n, 2), value=value, step=1, interactive=n > 1)


class TreePanel:
    """The tree view, its step picker and the two tree charts, in an accordion of the Run tab."""

    def __init__(self, out: Outputs) -> None:
        with gr.Accordion("Token tree: every guess of one step", open=True, elem_id="sv-treebox"):
            self.pick = slider(  # a typed number out of range arrives as a Refused, not as Gradio's error
                1,
                2,
                value=1,
                step=1,
                label="step shown (default: the latest tree step)",
                interactive=False,
                elem_id="sv-tree-step",
            )
            self.view = gr.HTML(EMPTY_TREE, elem_id="sv-tree")
            with gr.Row(equal_height=False):
                self.fig_pass = gr.Plot(
                    plot(tree_charts.tree_pass_chart([])), elem_id="sv-fig-tree-pass", show_label=False
                )
                self.fig_len = gr.Plot(
                    plot(tree_charts.expected_length_chart([])), elem_id="sv-fig-tree-len", show_label=False
                )
        self.data = out(gr.State(None))
        quick = {"queue": False, "show_progress": "hidden", "api_name": False}
        self.data.change(self.on_data, self.data, [self.pick, self.view, self.fig_pass, self.fig_len], **quick)
        self.pick.input(self.on_pick, [self.data, self.pick], self.view, trigger_mode="always_last", **quick)

    def draw(self, state: RunState) -> Update:
        """The Run tab's update for a drawn snapshot: the panel redraws when this value changes."""
        return {self.data: tree_run(state)}

    def on_data(self, run: TreeRun | None) -> Update:
        steps = run.steps if run else []
        rule = run.rule if run else "greedy"
        return {
            self.pick: pick_slider(run),
            self.view: render_tree_view(steps, rule=rule, prompt=run.prompt if run else ""),
            self.fig_pass: plot(tree_charts.tree_pass_chart(steps)),
            self.fig_len: plot(tree_charts.expected_length_chart(steps, rule)),
        }

    def on_pick(self, run: TreeRun | None, shown: Any) -> Update:
        """The view of the picked step; a value that is no step of the run says which ones there are."""
        if run is None:
            return {self.view: EMPTY_TREE}
        if not isinstance(shown, int | float) or isinstance(shown, bool) or not 1 <= shown <= len(run.steps):
            return {self.view: render_tree_view(run.steps, -1, run.rule, run.prompt)}
        return {self.view: render_tree_view(run.steps, int(shown) - 1, run.rule, run.prompt)}
