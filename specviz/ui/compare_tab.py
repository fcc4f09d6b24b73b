"""The Compare tab: several strategies on one prompt, each in turn, plus one plain run on the same loaded models, as a
table, charts (one puts each chain beside the tree of the same proposer; a shortcut picks such pairs) and the outputs
side by side. While it runs, updates stay small: the status, the table and charts (one row per strategy), and each
run's column once, when that run ends (sent as an append)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
import pandas as pd
from gradio.blocks import Block

from specviz.core.config import ConfigError
from specviz.proposers import STRATEGIES
from specviz.ui import charts, render, tables
from specviz.ui.common import Outputs, Update, guarded, on_models, plot, status_for, stopper
from specviz.ui.controls import build_controls
from specviz.ui.models import ModelManager, gpu_task
from specviz.ui.session import stream_run
from specviz.ui.tree_charts import CHAIN_VS_TREE, tree_compare_chart
from specviz.ui.visitors import Visitors


def pick_pair(name: str | None) -> Any:
    """A shortcut's strategies into the checkboxes (an unknown name changes nothing)."""
    return gr.CheckboxGroup(value=CHAIN_VS_TREE[name]) if name in CHAIN_VS_TREE else gr.skip()


class CompareTab:
    """The Compare tab's components and its handlers (Compare, Stop)."""

    def __init__(self, manager: ModelManager, visitors: Visitors) -> None:
        self.manager, self.visitors = manager, visitors
        out = self.out = Outputs()
        drafting = [s for s in STRATEGIES if s != "plain"]
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                self.c = build_controls("cmp", manager.preset, with_strategy=False, presets=manager.allowed)
                self.strategies = gr.CheckboxGroup(
                    choices=drafting, value=drafting[:3], label="Strategies to compare", elem_id="cmp-strategies"
                )
                self.shortcut = gr.Dropdown(
                    choices=list(CHAIN_VS_TREE),
                    value=None,
                    label="Shortcut: a chain beside the tree of the same proposer",
                    elem_id="cmp-shortcut",
                )
                with gr.Row():
                    self.run_btn = gr.Button("Compare", variant="primary", elem_id="cmp-run")
                    self.stop_btn = gr.Button("Stop", variant="stop", elem_id="cmp-stop")
            with gr.Column(scale=8, min_width=360):
                self.status = out(
                    gr.HTML(render.render_status("pick strategies and press Compare"), elem_id="cmp-status")
                )
                self.table = out(
                    gr.Dataframe(
                        tables.compare_table([], None),
                        label="Strategies side by side",
                        elem_id="cmp-table",
                        interactive=False,
                        wrap=False,
                    )
                )
                self.chart = out(gr.Plot(plot(charts.compare_chart([])), elem_id="cmp-chart", show_label=False))
                self.tree_chart = gr.Plot(plot(tree_compare_chart([])), elem_id="cmp-tree-chart", show_label=False)
        gr.HTML(render.render_legend())
        self.outputs_html = out(gr.HTML("", elem_id="cmp-outputs"))
        out(self.tree_chart)  # registered last: the API's output positions of the components above stay

    def wire(self) -> None:
        self.run_btn.click(
            self.on_compare,
            {*self.c.inputs, self.strategies},
            self.out.all,
            api_name="compare",
            **on_models(self.status),
        )
        self.stop_btn.click(stopper(self.visitors), None, None, queue=False, api_name=False)
        self.shortcut.input(
            pick_pair, self.shortcut, self.strategies, queue=False, api_name=False, show_progress="hidden"
        )

    def on_compare(self, data: dict[Block, Any], request: gr.Request) -> Iterator[Update]:
        yield from guarded(self._compare(data, request), self.status)

    @gpu_task
    def _compare(self, data: dict[Block, Any], request: gr.Request | None) -> Iterator[Update]:
        stop = self.visitors.fresh_stop(request)
        strategies = [s for s in (data[self.strategies] or []) if s != "plain"]
        if not strategies:
            raise ConfigError("pick at least one strategy to compare")
        req = self.c.request(data, strategy=strategies[0])
        greedy = req.cfg.rule == "greedy"
        plan = [*strategies, "plain"]
        shown, cols = -1, ""  # columns drawn so far (-1: none yet, not even the empty row) and their HTML
        for state in stream_run(self.manager, req, stop, plan=plan, labels=plan, min_interval=0.25):
            if state.phase in ("loading", "error"):
                yield {self.status: status_for(state)}
                continue
            done = sum(t.summary is not None for t in state.tracks)
            state.fraction = done / len(plan) if state.phase == "running" else None
            base = state.baseline.summary if state.baseline else None
            rows = tables.compare_rows(state.tracks, base, greedy=greedy)
            up = {
                self.status: status_for(state),
                self.table: pd.DataFrame(rows, columns=tables.COMPARE_COLUMNS),
                self.chart: plot(charts.compare_chart(rows)),
                self.tree_chart: plot(tree_compare_chart(state.tracks)),
            }
            # runs end in plan order, so the finished ones are a prefix; at the end every run gets its column
            ready = len(state.tracks) if state.phase in ("done", "stopped") else done
            if ready > shown:
                cols, shown = render.render_side_by_side(state.tracks[:ready], req.cfg.rule, closed=False), ready
            # sent in every update, changed or not: Gradio diffs an output against its last value, so an unchanged
            # one costs nothing and a grown one only its new columns (left out once, it would be resent whole)
            up[self.outputs_html] = cols
            yield up
