"""The Compare tab: several strategies on one prompt, each in turn, plus one plain run on the same loaded models, as a
table, charts (one puts each chain beside the tree of the same proposer; a shortcut picks such pairs) and the outputs
side by side. While it runs, updates stay small: the status, the table and charts (one row per strategy), and each
run's column once, when that run ends (sent as an append). With app.py --vllm, the vLLM server's run of the same prompt
follows as one more row, labelled with its engine and version."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import gradio as gr
import pandas as pd
from gradio.blocks import Block

from specviz.core.config import ConfigError
from specviz.core.events import RunSummary
from specviz.proposers import STRATEGIES
from specviz.ui import charts, render, tables
from specviz.ui.common import Outputs, Update, guarded, on_models, plot, status_for, stopper
from specviz.ui.controls import build_controls
from specviz.ui.models import ModelManager, gpu_task
from specviz.ui.session import Track, stream_run
from specviz.ui.tree_charts import CHAIN_VS_TREE, tree_compare_chart
from specviz.ui.visitors import Visitors
from specviz.ui.vllm_panel import VLLM_EVENTS, VllmTarget, ask
from specviz.ui.vllm_source import source_label

log = logging.getLogger("specviz.ui")
MAX_KEPT = 64  # visitors whose last Compare rows are kept for a vLLM row


def pick_pair(name: str | None) -> Any:
    """A shortcut's strategies into the checkboxes (an unknown name changes nothing)."""
    return gr.CheckboxGroup(value=CHAIN_VS_TREE[name]) if name in CHAIN_VS_TREE else gr.skip()


class CompareTab:
    """The Compare tab's components and its handlers (Compare, Stop)."""

    def __init__(self, manager: ModelManager, visitors: Visitors, vllm: VllmTarget | None = None) -> None:
        """vllm: the operator's vLLM servers (app.py --vllm): a switch then adds the server's run on the same prompt
        as one more row, labelled with its engine and version."""
        self.manager, self.visitors, self.vllm = manager, visitors, vllm
        self._last: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()  # each visitor's last rows, for that row
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
                self.with_vllm = gr.Checkbox(
                    False,
                    label=f"and the vLLM server at {vllm.url} (its own baseline server measures its speedup)"
                    if vllm
                    else "and a vLLM server (start the app with --vllm URL)",
                    interactive=vllm is not None,
                    elem_id="cmp-vllm",
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
        ours = self.run_btn.click(
            self.on_compare,
            {*self.c.inputs, self.strategies},
            self.out.all,
            api_name="compare",
            **on_models(self.status),
        )
        # the vLLM row after ours, outside the models' queue: a slow server never holds the models from others
        ours.success(
            self.on_vllm,
            {*self.c.inputs, self.with_vllm},
            [self.status, self.table, self.chart],
            api_name="compare_vllm",
            **VLLM_EVENTS,
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
        self._last.pop(request.session_hash if request else "", None)  # a Compare that fails adds no vLLM row
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
            if state.phase in ("done", "stopped") and request is not None:
                self._keep(request.session_hash, rows)
            yield up

    def _keep(self, session: str | None, rows: list[dict[str, Any]]) -> None:
        """A visitor's finished rows, for the vLLM row that may follow (the last MAX_KEPT visitors' only)."""
        self._last.pop(session or "", None)
        self._last[session or ""] = rows
        while len(self._last) > MAX_KEPT:
            self._last.popitem(last=False)

    async def on_vllm(self, data: dict[Block, Any], request: gr.Request) -> Update:
        """The same prompt and settings on the vLLM server, as one more row of the table and chart."""
        rows = self._last.get(request.session_hash or "")
        if self.vllm is None or not data[self.with_vllm] or rows is None:
            return {self.status: gr.skip()}  # nothing changes
        try:
            req = self.c.request(data, strategy="plain")  # the prompt and settings; the server has its own proposer
            run = await asyncio.to_thread(ask, self.vllm, req)
        except ConfigError as e:
            return {self.status: render.render_error(f"vLLM row: {e}")}
        except Exception as e:  # noqa: BLE001 - a server that misbehaves is one message, never the page
            log.exception("the vLLM row failed")
            return {
                self.status: render.render_error(f"vLLM row: the server did not answer usably ({type(e).__name__})")
            }
        plain = run.meta.get("plain_summary")
        track = Track(source_label(run.meta), run.summary.strategy, run.steps, run.summary)
        greedy = req.cfg.rule == "greedy"
        mine = tables.compare_rows([track], RunSummary.from_dict(plain) if plain else None, greedy=greedy)
        if plain is None and greedy:
            mine[0]["same as plain"] = "- (no baseline server)"
        table = [*rows, *mine]
        done = render.render_status(f"done, and the vLLM server's run: {source_label(run.meta)}", "ok")
        return {
            self.status: done,
            self.table: pd.DataFrame(table, columns=tables.COMPARE_COLUMNS),
            self.chart: plot(charts.compare_chart(table)),
        }
