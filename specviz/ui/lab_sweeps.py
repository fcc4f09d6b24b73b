"""The Theory lab's two sweeps on the loaded pair: 1. batch drafts (M drafts per step, for each M) and 2. the
quality/speed knob (relaxed acceptance, for each family and setting), each with its chart and table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
from gradio.blocks import Block

from specviz.backends.loading import ModelPair
from specviz.core.config import ConfigError, parse_numbers
from specviz.core.relaxed import FAMILIES
from specviz.lab.batch import batch_sweep
from specviz.lab.tradeoff import relaxed_sweep
from specviz.ui import lab_charts, render
from specviz.ui.common import Outputs, Update, caption, guarded, on_models, plot, run_on_pair, stopper
from specviz.ui.controls import LabControls
from specviz.ui.lab import BATCH_COLUMNS, RELAX_COLUMNS, RELAX_NOTE, table
from specviz.ui.models import ModelManager, gpu_task
from specviz.ui.visitors import Visitors
from specviz.ui.worker import Worker


class BatchPart:
    """1. Batch drafts: speculative sampling with M drafts per step, for each M."""

    def __init__(self, manager: ModelManager, visitors: Visitors, settings: LabControls) -> None:
        self.manager, self.visitors, self.settings = manager, visitors, settings
        out = self.out = Outputs()
        with gr.Row():
            self.ms = gr.Textbox("1, 2, 4, 8", label="drafts per step M", elem_id="lab-batch-ms", scale=3)
            self.run_btn = gr.Button("Run the batch sweep", variant="primary", elem_id="lab-batch-run", scale=1)
            self.stop_btn = gr.Button("Stop", variant="stop", elem_id="lab-batch-stop", scale=1)
        intro = render.render_status("speculative sampling with M drafts per step, for each M")
        self.status = out(gr.HTML(intro, elem_id="lab-batch-status"))
        self.fig = out(gr.Plot(plot(lab_charts.batch_chart([])), elem_id="lab-batch-fig", show_label=False))
        caption("batch")
        self.table = out(gr.Dataframe(interactive=False, elem_id="lab-batch-table", label="measured"))

    def wire(self) -> None:
        inputs = {*self.settings.inputs, self.ms}
        self.run_btn.click(self.on_run, inputs, self.out.all, api_name="lab_batch", **on_models(self.status))
        self.stop_btn.click(stopper(self.visitors), None, None, queue=False, api_name=False)

    def on_run(self, data: dict[Block, Any], request: gr.Request) -> Iterator[Update]:
        yield from guarded(self._run(data, request), self.status)

    @gpu_task
    def _run(self, data: dict[Block, Any], request: gr.Request | None) -> Iterator[Update]:
        text = self.settings.text(data)
        ms = parse_numbers(data[self.ms], "drafts per step M", int, 1, 8)
        cfg = self.settings.config(data)
        stop = self.visitors.fresh_stop(request)

        def work(pair: ModelPair, w: Worker) -> list[dict[str, Any]]:
            ids = pair.codec.encode(text)
            rows: list[dict[str, Any]] = []
            for i, m in enumerate(ms):  # one M at a time, so Stop and the job budget act between settings
                if w.should_stop():
                    break
                w.progress(f"running M = {m} on {pair.preset}", i / len(ms))
                rows += batch_sweep(pair, ids, cfg, (m,))
            single = next((r["tv_sum"] for r in rows if r["M"] == 1), None)  # the line every row charts beside
            for r in rows:
                r["single_draft_tv_sum"] = single
            return rows

        rows = yield from run_on_pair(self.manager, stop, self.status, work)
        note = "stopped: partial results" if stop.is_set() else f"done: {len(rows)} settings of M measured"
        yield {
            self.status: render.render_status(note, "warn" if stop.is_set() else "ok"),
            self.fig: plot(lab_charts.batch_chart(rows)),
            self.table: table(rows, BATCH_COLUMNS),
        }


class RelaxPart:
    """2. The quality/speed knob: one sampled run per relax family and setting, against Yin et al.'s optimal line."""

    def __init__(self, manager: ModelManager, visitors: Visitors, settings: LabControls) -> None:
        self.manager, self.visitors, self.settings = manager, visitors, settings
        out = self.out = Outputs()
        gr.Markdown(RELAX_NOTE, elem_classes=["sv-lab-note"])
        with gr.Row():
            self.lams = gr.Textbox("0, 0.25, 0.5, 0.75, 1", label="relax settings", elem_id="lab-relax-lams")
            self.families = gr.CheckboxGroup(
                list(FAMILIES), value=["linear", "geometric"], label="families", elem_id="lab-relax-families"
            )
        with gr.Row():
            self.run_btn = gr.Button("Run the sweep", variant="primary", elem_id="lab-relax-run")
            self.stop_btn = gr.Button("Stop", variant="stop", elem_id="lab-relax-stop")
        intro = render.render_status("one sampled run per setting (draft strategy)")
        self.status = out(gr.HTML(intro, elem_id="lab-relax-status"))
        self.fig = out(gr.Plot(plot(lab_charts.tradeoff_chart([])), elem_id="lab-relax-fig", show_label=False))
        caption("tradeoff")
        self.table = out(gr.Dataframe(interactive=False, elem_id="lab-relax-table", label="measured"))

    def wire(self) -> None:
        inputs = {*self.settings.inputs, self.lams, self.families}
        self.run_btn.click(self.on_run, inputs, self.out.all, api_name="lab_relax", **on_models(self.status))
        self.stop_btn.click(stopper(self.visitors), None, None, queue=False, api_name=False)

    def on_run(self, data: dict[Block, Any], request: gr.Request) -> Iterator[Update]:
        yield from guarded(self._run(data, request), self.status)

    @gpu_task
    def _run(self, data: dict[Block, Any], request: gr.Request | None) -> Iterator[Update]:
        text = self.settings.text(data)
        lams = parse_numbers(data[self.lams], "relax settings", float, 0, 1)
        fams = [f for f in FAMILIES if f in (data[self.families] or [])]
        if not fams:
            raise ConfigError("pick at least one relax family")
        cfg = self.settings.config(data)
        stop = self.visitors.fresh_stop(request)

        def work(pair: ModelPair, w: Worker) -> list[dict[str, Any]]:
            ids = pair.codec.encode(text)
            return relaxed_sweep(pair, ids, cfg, lams, fams, should_stop=w.should_stop, progress=w.progress)

        rows = yield from run_on_pair(self.manager, stop, self.status, work)
        note = "stopped: partial results" if stop.is_set() else f"done: {len(rows)} settings measured"
        yield {
            self.status: render.render_status(note, "warn" if stop.is_set() else "ok"),
            self.fig: plot(lab_charts.tradeoff_chart(rows)),
            self.table: table(rows, RELAX_COLUMNS),
        }
