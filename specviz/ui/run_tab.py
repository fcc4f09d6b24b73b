"""The Run tab: the live token stream, charts, classroom step mode, summary and exports, with its Run, Step and Stop
handlers (thin: they validate, call session.py or step_mode.py and draw with render.py and charts.py). While a run
goes, each update carries only what changed: the stream's new steps through the delta component (live.py), small
status lines and, every CHART_INTERVAL, two charts of at most charts.LIVE_POINTS steps; the full charts, text,
tables and files come once at the end. Replays of recorded runs (replay_panel.py) draw with the same methods; live runs
wait their turn in a first-come queue (waitline.py) that tells each its place and estimated wait."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import anyio
import gradio as gr
from gradio.blocks import Block
from gradio.context import Context

from specviz.core.config import ConfigError
from specviz.core.events import RunSummary
from specviz.core.metrics import summarize
from specviz.core.theory import per_token_alpha, why
from specviz.ui import charts, render, tables
from specviz.ui.common import Outputs, Update, guarded, on_models, plot, status_for
from specviz.ui.controls import build_controls
from specviz.ui.exports import ExportStore
from specviz.ui.figures import Figure
from specviz.ui.live import DELTA_JS, LiveStream
from specviz.ui.models import ModelManager, gpu_task
from specviz.ui.replay_panel import TAKE_STREAM_JS, ReplayPanel
from specviz.ui.session import RunState, stream_run
from specviz.ui.step_mode import StepSession
from specviz.ui.step_panel import render_step_panel
from specviz.ui.tree_panel import TreePanel
from specviz.ui.visitors import Visitors
from specviz.ui.vllm_panel import VllmPanel, VllmTarget
from specviz.ui.waitline import WaitLine

STREAM_INTERVAL = 0.2  # seconds between updates of the token stream while a run goes (at most 5 a second)
CHART_INTERVAL = 3.0  # ... and of the thinned charts, which the browser redraws slowly; the final state is always drawn
STEP_NOTE = "step mode: wall time includes your pauses between steps; press Run to measure speed"
QUEUE_POLL = 0.5  # seconds between a waiting run's looks at its place in the queue
T = TypeVar("T")


def live_summary(state: RunState) -> RunSummary | None:
    """The finished summary, or one computed from the steps so far (theory and KPIs update live)."""
    spec = state.spec
    if spec is None or not spec.steps:
        return None
    if spec.summary is not None:
        return spec.summary
    req = state.request
    return summarize(
        spec.steps,
        strategy=spec.strategy,
        rule=req.cfg.rule if req else "greedy",
        gamma=req.cfg.gamma if req else spec.steps[0].gamma,
        wall_s=spec.steps[-1].elapsed_ms / 1e3,
    )


class RunTab:
    """The Run tab's components and its handlers (Run, Step, Stop)."""

    def __init__(
        self,
        manager: ModelManager,
        visitors: Visitors,
        exports: ExportStore | None = None,
        vllm: VllmTarget | None = None,
    ) -> None:
        """vllm: the operator's vLLM servers, for the 'Watch a vLLM server' panel (None: the panel says how)."""
        self.manager, self.visitors = manager, visitors
        self.exports = exports or ExportStore()
        self.line = WaitLine()
        out = self.out = Outputs()
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320, elem_id="sv-controls"):
                self.c = build_controls("sv", manager.preset, presets=manager.allowed)
                with gr.Row(elem_id="sv-buttons"):
                    self.run_btn = gr.Button("Run", variant="primary", elem_id="sv-run", min_width=80)
                    self.step_btn = gr.Button("Step", variant="secondary", elem_id="sv-step", min_width=80)
                    self.stop_btn = gr.Button("Stop", variant="stop", elem_id="sv-stop", min_width=80)
                self.vllm = VllmPanel(vllm)
            with gr.Column(scale=8, min_width=360):
                self.replay = ReplayPanel(visitors)
                self.status = out(
                    gr.HTML(
                        render.render_status("ready when the models are: press Run or Step"), elem_id="sv-run-status"
                    )
                )
                self.replay.build_offer()
                self.kpis = out(gr.HTML("", elem_id="sv-kpis"))
                gr.HTML(render.render_legend(), elem_id="sv-legend")
                first = self.replay.opening_stream() or render.EMPTY_STREAM  # the opening replay's first step
                self.stream = out(gr.HTML(first, elem_id="sv-stream", elem_classes=["sv-stream"]))
                # the live stream's carrier: never shown; DELTA_JS appends each of its values into #sv-stream
                delta = gr.HTML("", html_template="", js_on_load=DELTA_JS, visible="hidden", elem_id="sv-delta")
                self.delta = out(delta)
                with gr.Accordion("Output as plain text", open=False):
                    self.text = out(gr.Code("", language=None, elem_id="sv-text", show_label=False))
        self.step_box = out(gr.Accordion("Classroom step mode", open=False, elem_id="sv-stepmode"))
        with self.step_box, gr.Row(equal_height=False):
            self.step_panel = out(gr.HTML(render_step_panel(None, "greedy"), elem_id="sv-step-panel"))
            self.step_chart = out(self._fig(charts.step_detail_chart(None), "sv-fig-step"))
        self.trees = TreePanel(out)  # the token tree of a step, picked by a slider; redrawn by every draw()
        with gr.Row(equal_height=False):
            self.fig_tput = out(self._fig(charts.throughput_chart([]), "sv-fig-tput"))
            self.fig_accept = out(self._fig(charts.acceptance_chart([]), "sv-fig-accept"))
        with gr.Row(equal_height=False):
            self.fig_hist = out(self._fig(charts.accepted_hist_chart([], 4), "sv-fig-hist"))
            self.fig_pos = out(self._fig(charts.position_chart([]), "sv-fig-pos"))
        with gr.Row(equal_height=False):
            self.fig_theory = out(self._fig(charts.theory_chart(None), "sv-fig-theory"))
            self.theory = out(gr.HTML(render.render_theory(None), elem_id="sv-theory"))
        self.summary = out(
            gr.Dataframe(
                tables.summary_table(None, None), label="Summary", elem_id="sv-summary", interactive=False, wrap=True
            )
        )
        with gr.Row():
            self.dl_trace = out(
                gr.DownloadButton("Download event trace (JSON)", interactive=False, elem_id="sv-dl-trace", size="md")
            )
            self.dl_csv = out(
                gr.DownloadButton("Download per-step table (CSV)", interactive=False, elem_id="sv-dl-csv", size="md")
            )
        for c in [*self.replay.own, self.vllm.notes]:  # registered last: the API's output positions above stay
            out(c)

    @staticmethod
    def _fig(fig: Figure, elem_id: str) -> gr.Plot:
        return gr.Plot(plot(fig), elem_id=elem_id, show_label=False)

    def wire(self) -> None:
        # a replay in the stream gives way at once: the page drops it before Run or Step is even sent (Gradio runs a
        # button's listeners in the order they were added, each after the one before it, so this comes first)
        for btn in (self.run_btn, self.step_btn):
            btn.click(None, None, None, js=TAKE_STREAM_JS, queue=False, api_name=False)
        # Run waits in our own queue (self.line), not Gradio's: a waiting run can then say where it stands
        run_opts = on_models(self.status) | {"concurrency_limit": None, "concurrency_id": "runs"}
        self.run_btn.click(self.on_run, self.c.inputs, self.out.all, api_name="run", **run_opts)
        self.step_btn.click(self.on_step, self.c.inputs, self.out.all, api_name="step", **on_models(self.status))
        self.stop_btn.click(self.on_stop, None, None, queue=False, api_name=False)
        self.replay.wire(self, self.out.all, page=Context.root_block)  # the page's load starts the opening replay
        self.vllm.wire(self.c, self.replay, self.out.all)

    # -- drawing

    def draw(self, state: RunState, step_mode: bool = False) -> Update:
        """The outputs for a finished run or a step-mode snapshot: everything at full resolution (the stream in step
        mode; a run's came in deltas); the summary table and the files once the run is over."""
        req = state.request
        rule = req.cfg.rule if req else "greedy"
        spec, base = state.spec, state.baseline
        steps = spec.steps if spec else []
        over = state.phase in ("done", "stopped", "error")
        up = self._numbers(state, over)
        if step_mode:  # the stream whole: the highlighted step moves
            up[self.stream] = render.render_stream(steps, prompt=state.prompt_shown, rule=rule, current=state.current)
            up |= self._draw_step(state, rule, over)
        up |= self._charts(state, step_mode=step_mode)
        up |= self.trees.draw(state)
        text = spec.summary.text if spec and spec.summary else "".join(t.text for s in steps for t in s.emitted)
        up[self.text] = text
        if over:
            up[self.summary] = tables.summary_table(spec.summary if spec else None, base.summary if base else None)
            replay = state.meta.get("replay")  # a replay's trace is a file already: no new downloads
            trace, csv = self.exports.write(state) if steps and not replay else (None, None)
            if trace:
                up[self.dl_trace] = gr.DownloadButton(value=trace, interactive=True)
            if csv:
                up[self.dl_csv] = gr.DownloadButton(value=csv, interactive=True)
        return up

    def draw_live(self, state: RunState, live: LiveStream, charts_due: bool) -> Update:
        """A running snapshot: status, KPIs and theory (small), the stream's new steps through the delta, and every
        CHART_INTERVAL the charts over at most charts.LIVE_POINTS steps."""
        up = self._numbers(state, over=False)
        up[self.delta] = live.update(state.spec.steps if state.spec else [], state.prompt_shown)
        if charts_due:
            up |= self._charts(state, live=True)
        return up

    @property
    def live_outputs(self) -> list[Block]:
        """What draw_live updates (a replay's playing frames draw only these)."""
        return [self.status, self.kpis, self.theory, self.delta, *self.live_charts]

    @property
    def live_charts(self) -> list[Block]:
        """The charts draw_live draws when they are due."""
        return [self.fig_tput, self.fig_accept]

    def blank_step(self) -> Update:
        """Step mode's panel and chart as before any step."""
        return {
            self.step_panel: render_step_panel(None, "greedy"),
            self.step_chart: plot(charts.step_detail_chart(None)),
        }

    def blank_summary(self) -> Update:
        """The summary table as before any run."""
        return {self.summary: tables.summary_table(None, None)}

    def _numbers(self, state: RunState, over: bool) -> Update:
        """Status, KPIs and the theory card."""
        summary = live_summary(state)
        base = state.baseline
        kpis = render.render_kpis(summary, base.summary if base else None)
        if over and summary:
            kpis += f'<p class="sv-why-top">{html.escape(why(summary))}</p>'
        return {self.status: status_for(state), self.kpis: kpis, self.theory: render.render_theory(summary)}

    def _charts(self, state: RunState, step_mode: bool = False, live: bool = False) -> Update:
        """The five charts; `live`: only the two per-step ones, over an evenly thinned set of steps (a fixed size,
        however long the run)."""
        req = state.request
        gamma = req.cfg.gamma if req else 4
        spec, base = state.spec, state.baseline
        summary = live_summary(state)
        steps = spec.steps if spec else []
        shown = charts.thin(steps) if live else steps
        base_steps = (charts.thin(base.steps) if live else base.steps) if base else []
        alpha = per_token_alpha(summary) if summary and summary.drafted else None
        if step_mode and not state.meta.get("replay"):  # a replay's timings are the recorded run's, pauses aside
            tput = charts.throughput_chart(shown, note=STEP_NOTE)
        else:
            speed = spec.summary.speedup if spec and spec.summary else None
            label = f"speculative ({spec.label})" if spec else ""
            tput = charts.throughput_chart(shown, base_steps, speed, label)
        up = {self.fig_tput: plot(tput), self.fig_accept: plot(charts.acceptance_chart(shown))}
        if live:  # Plotly's redraws are the browser's costliest work while a run goes: the other three wait for the end
            return up
        return up | {
            self.fig_hist: plot(charts.accepted_hist_chart(steps, gamma, alpha)),
            self.fig_pos: plot(charts.position_chart(steps)),
            self.fig_theory: plot(charts.theory_chart(summary)),
        }

    def _draw_step(self, state: RunState, rule: str, over: bool) -> Update:
        """Step mode: the panel on the step just taken and its p/q chart, in the opened accordion."""
        spec = state.spec
        cur = spec.steps[-1] if spec and spec.steps else None
        detail = state.details.get(cur.step) if cur else None
        panel = render_step_panel(cur, rule, detail, spec.strategy if spec else "draft", finished=over)
        rej = next((t.id for t in cur.tokens if t.origin == "rejected"), None) if cur else None
        tgt = next((t.id for t in cur.tokens if t.origin in ("resampled", "bonus")), None) if cur else None
        chart = charts.step_detail_chart(detail, rule, cur.step + 1 if cur else None, rej, tgt)
        return {self.step_box: gr.Accordion(open=True), self.step_panel: panel, self.step_chart: plot(chart)}

    # -- handlers

    async def on_run(self, data: dict[Block, Any], request: gr.Request) -> AsyncIterator[Update]:
        """Queue the run (first come, first served), saying where it stands and offering the matching gallery
        replay while it waits; then run it (in a worker thread, as Gradio would) and stop the replay once the run
        draws."""
        v = self.visitors.of(request)
        v.replay.halt()  # the page has dropped the replay's stream (TAKE_STREAM_JS): its loop stops too
        try:
            req = self.c.request(data)
            self.manager.check(req.preset)
        except ConfigError as e:  # a bad setting never queues
            yield {self.status: render.render_error(str(e))}
            return
        v.stop.clear()
        ticket = self.line.join(req.preset, req.cfg.max_new_tokens)
        offered = drawing = False
        try:
            while not self.line.turn(ticket):
                if v.stop.is_set():
                    left = render.render_status("left the queue: press Run to queue again", "warn")
                    yield {self.status: left} | self.replay.no_offer()
                    return
                up = {self.status: render.render_status(self.line.place(ticket).text(), "busy")}
                if not offered:
                    up |= self.replay.offer_for(request, req)
                    offered = True
                yield up
                await asyncio.sleep(QUEUE_POLL)
            if not offered and self.manager.status(req.preset).state != "ready":
                yield self.replay.offer_for(request, req)  # the models are still loading: a replay meanwhile
                offered = True
            async for up in _in_thread(guarded(self._run(data, request), self.status)):
                if not drawing and (self.stream in up or self.delta in up):
                    up |= self.replay.take_stream(request) | {self.vllm.notes: ""}
                    drawing = True
                yield up
            if offered and not drawing:  # it ended before it drew (an error, Stop): the offer goes with it
                yield self.replay.no_offer()
        finally:
            self.line.leave(ticket)
            self.replay.give_back(request)

    @gpu_task
    def _run(self, data: dict[Block, Any], request: gr.Request | None) -> Iterator[Update]:
        v = self.visitors.of(request)
        v.step = None
        v.stop.clear()
        req = self.c.request(data)
        live, last_charts = None, 0.0
        for state in stream_run(self.manager, req, v.stop, min_interval=STREAM_INTERVAL):
            if state.phase == "loading" or (state.phase == "error" and live is None):
                yield {self.status: status_for(state)}  # whatever the visitor had stays
                continue
            if live is None:  # the run's first drawn snapshot: the stream's container starts empty
                live = LiveStream(req.cfg.rule)
                yield {self.stream: "", self.delta: live.value}
            if state.phase in ("done", "stopped", "error"):
                # the end: first the status and the last steps (a small update, so Stop shows at once), then the full
                # charts, text, table and files. The stream is not sent whole: the page has it, and Gradio's closing
                # message repeats the last update's values, so it would go twice
                yield self.draw_live(state, live, charts_due=False)
                yield self.draw(state)
                self._measured(state)
                return
            due = time.perf_counter() - last_charts >= CHART_INTERVAL
            yield self.draw_live(state, live, charts_due=due)
            if due:
                last_charts = time.perf_counter()

    def _measured(self, state: RunState) -> None:
        """A finished run's tokens and seconds (run and baseline) for the queue's wait estimates."""
        tracks = [t.summary for t in state.tracks if t.summary is not None and not t.stopped]
        if state.phase == "done" and state.request and len(tracks) == len(state.tracks):
            self.line.record(state.request.preset, sum(s.new_tokens for s in tracks), sum(s.wall_s for s in tracks))

    def on_step(self, data: dict[Block, Any], request: gr.Request) -> Iterator[Update]:
        self.visitors.of(request).replay.halt()  # as for Run
        yield from guarded(self._step(data, request), self.status)

    @gpu_task
    def _step(self, data: dict[Block, Any], request: gr.Request | None) -> Iterator[Update]:
        v = self.visitors.of(request)
        v.stop.clear()
        req = self.c.request(data)
        for st in self.manager.wait(req.preset):
            if st.state == "error":
                yield {self.status: render.render_error(st.message)}
                return
            if st.state != "ready":
                waiting = render.render_status(f"waiting for the models: {st.message}", "busy", st.fraction)
                yield {self.status: waiting}
        if v.step is None or v.step.req.key() != req.key() or v.step.finished:
            v.step = StepSession(self.manager, req)
        try:
            v.step.advance()
        except ConfigError:
            v.step = None  # the message says: press Step to start over, and that is what the next press does
            raise
        yield self.draw(v.step.state(), step_mode=True)

    def on_stop(self, request: gr.Request) -> None:
        v = self.visitors.of(request)
        v.stop.set()
        v.step = None
        v.replay.halt()  # a playing replay pauses where it is


async def _in_thread(gen: Iterator[T]) -> AsyncIterator[T]:
    """A blocking generator's items, each next() in a worker thread (the event loop stays free); closed at the end or
    when the consumer goes away, so a run stops at its next step."""
    done = object()
    try:
        while (item := await anyio.to_thread.run_sync(next, gen, done)) is not done:
            yield item  # type: ignore[misc]
    finally:
        gen.close()
