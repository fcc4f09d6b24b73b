"""The Gradio page: Run tab (live token stream, charts, classroom step mode, summary and exports) and Compare tab;
handlers are thin: they validate, call session.py and draw with render.py and charts.py."""

from __future__ import annotations

import html
import json
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from gradio.components.plot import PlotData

from specviz.core.config import MAX_GAMMA, ConfigError
from specviz.core.events import trace_to_json
from specviz.core.metrics import summarize
from specviz.core.presets import ASSETS_DIR, model_presets, prompt_suites
from specviz.proposers import STRATEGIES
from specviz.ui import charts, render
from specviz.ui.session import (
    ModelManager,
    RunState,
    StepSession,
    Visitors,
    friendly,
    gpu_task,
    make_request,
    stream_run,
)

MAX_NEW_TOKENS_UI = 2000  # the tiny models hold 2048 positions; larger presets accept more via the CLI
RULE_CHOICES = [("greedy", "greedy"), ("speculative sampling", "sample")]
MODEL_CONCURRENCY = "models"  # every event that uses the shared models queues under this id, one at a time
STREAM_INTERVAL = 0.2  # seconds between redraws of the token stream while a run goes (at most 5 a second)
CHART_INTERVAL = 0.75  # ... and of the charts, which the browser redraws slowly; the final state is always drawn

HEADER = """<div class="sv-header"><h1>specviz <span>see speculative decoding happen</span></h1>
<p>A small <b>draft</b> model guesses a few tokens; the big <b>target</b> model checks all of them in one pass and
keeps the ones it agrees with. Every token below is labelled by what happened to it; hover for p (target), q (draft)
and the verdict.</p></div>"""


# ---------------------------------------------------------------- pieces the tabs reuse


def _plot(fig: charts.Figure) -> PlotData:
    """A Plotly JSON dict as gr.Plot's value (skips building a go.Figure). NaN and infinities, which JSON cannot
    carry, become null (a gap)."""
    return PlotData(type="plotly", plot=json.dumps(_finite(fig)))


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def example_prompts() -> list[tuple[str, str]]:
    """(label, prompt) for the examples dropdown, in file order (the first code prompt first)."""
    return [(f"{suite} / {p['name']}", p["prompt"]) for suite, items in prompt_suites().items() for p in items]


@dataclass
class Controls:
    """The generation controls of one tab; `values` is the input list handlers receive, in make_request's order."""

    prompt: gr.Textbox
    preset: gr.Dropdown
    strategy: gr.Dropdown | None
    gamma: gr.Slider
    rule: gr.Radio
    temperature: gr.Slider
    top_p: gr.Slider
    top_k: gr.Number
    max_new: gr.Slider
    seed: gr.Number

    @property
    def values(self) -> list[gr.components.Component]:
        return [
            self.prompt,
            self.preset,
            self.gamma,
            self.rule,
            self.temperature,
            self.top_p,
            self.top_k,
            self.max_new,
            self.seed,
        ]


def build_controls(prefix: str, preset: str, with_strategy: bool = True) -> Controls:
    """Prompt, examples, preset, strategy, gamma, rule, temperature, top-p, top-k, max new tokens, seed."""
    examples = example_prompts()
    prompt = gr.Textbox(
        label="Prompt",
        value=examples[0][1] if examples else "",
        lines=4,
        max_lines=14,
        elem_id=f"{prefix}-prompt",
        info="Instruct presets apply their chat template; the tiny-random preset continues the text.",
    )
    ex = gr.Dropdown(
        choices=[label for label, _ in examples],
        value=None,
        label="Example prompts",
        elem_id=f"{prefix}-examples",
    )
    by_label = dict(examples)
    ex.change(
        lambda lab: by_label.get(lab, gr.skip()) if lab else gr.skip(), ex, prompt, queue=False, show_progress="hidden"
    )
    presets = model_presets()
    with gr.Row():
        preset_dd = gr.Dropdown(
            choices=[(f"{name}", name) for name in presets],
            value=preset,
            label="Model pair (preset)",
            elem_id=f"{prefix}-preset",
            info=presets.get(preset, {}).get("description", ""),
        )
        strategy = (
            gr.Dropdown(choices=list(STRATEGIES), value=STRATEGIES[0], label="Strategy", elem_id=f"{prefix}-strategy")
            if with_strategy
            else None
        )
    gamma = gr.Slider(1, min(16, MAX_GAMMA), value=4, step=1, label="gamma (draft length)", elem_id=f"{prefix}-gamma")
    rule = gr.Radio(RULE_CHOICES, value="greedy", label="Verification rule", elem_id=f"{prefix}-rule")
    with gr.Row():
        temperature = gr.Slider(
            0, 2, value=1.0, step=0.05, label="temperature", info="sampling rule only", elem_id=f"{prefix}-temperature"
        )
        top_p = gr.Slider(0.05, 1, value=1.0, step=0.01, label="top-p", info="1 = off", elem_id=f"{prefix}-top-p")
    with gr.Row():
        top_k = gr.Number(value=0, precision=0, minimum=0, label="top-k (0 = off)", elem_id=f"{prefix}-top-k")
        seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id=f"{prefix}-seed")
    max_new = gr.Slider(1, MAX_NEW_TOKENS_UI, value=128, step=1, label="max new tokens", elem_id=f"{prefix}-max-new")
    return Controls(prompt, preset_dd, strategy, gamma, rule, temperature, top_p, top_k, max_new, seed)


def model_status_html(manager: ModelManager) -> str:
    st = manager.status()
    if st.state == "ready":
        info = st.info
        bits = [f"{info.get('device', '?')}", f"{info.get('dtype', '?')}"]
        if "load_s" in info:
            bits.append(f"loaded in {info['load_s']} s")
        return render.render_status(f"models ready: {st.preset} ({', '.join(bits)})", "ok")
    if st.state == "error":
        return render.render_status(st.message, "error")
    if st.state == "loading":
        return render.render_status(f"loading {st.preset}: {st.message}", "busy", st.fraction)
    return render.render_status(f"{st.preset}: not loaded yet", "info")


def _status_for(state: RunState) -> str:
    kind = {"error": "error", "done": "ok", "stopped": "warn", "loading": "busy", "running": "busy", "step": "info"}
    return render.render_status(state.message, kind.get(state.phase, "info"), state.fraction)


def _write_exports(state: RunState) -> tuple[str | None, str | None]:
    """The full event trace (JSON) and the per-step table (CSV) in a fresh temporary folder."""
    spec, base = state.spec, state.baseline
    if spec is None or not spec.steps:
        return None, None
    folder = Path(tempfile.mkdtemp(prefix="specviz-"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    req = state.request
    meta: dict[str, Any] = {
        "prompt": req.prompt if req else "",
        "preset": req.preset if req else "",
        "strategy": req.strategy if req else "",
        "config": req.cfg.to_dict() if req else {},
        "details": {str(k): v for k, v in state.details.items()},
    }
    if base is not None:
        meta["plain_steps"] = [s.to_dict() for s in base.steps]
        meta["plain_summary"] = base.summary.to_dict() if base.summary else None
    trace = folder / f"specviz-trace-{stamp}.json"
    trace.write_text(trace_to_json(spec.steps, spec.summary, meta), encoding="utf-8")
    table = folder / f"specviz-steps-{stamp}.csv"
    render.steps_table(spec.steps).to_csv(table, index=False)
    return str(trace), str(table)


def live_summary(state: RunState):
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


# ---------------------------------------------------------------- the Run tab


class RunTab:
    """The Run tab's components and its handlers (Run, Step, Stop)."""

    def __init__(self, manager: ModelManager, visitors: Visitors) -> None:
        self.manager, self.visitors = manager, visitors
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320, elem_id="sv-controls"):
                self.c = build_controls("sv", manager.preset)
                with gr.Row(elem_id="sv-buttons"):
                    self.run_btn = gr.Button("Run", variant="primary", elem_id="sv-run", min_width=80)
                    self.step_btn = gr.Button("Step", variant="secondary", elem_id="sv-step", min_width=80)
                    self.stop_btn = gr.Button("Stop", variant="stop", elem_id="sv-stop", min_width=80)
            with gr.Column(scale=8, min_width=360):
                self.status = gr.HTML(
                    render.render_status("ready when the models are: press Run or Step"), elem_id="sv-run-status"
                )
                self.kpis = gr.HTML("", elem_id="sv-kpis")
                gr.HTML(render.render_legend(), elem_id="sv-legend")
                self.stream = gr.HTML(render.EMPTY_STREAM, elem_id="sv-stream", elem_classes=["sv-stream"])
                with gr.Accordion("Output as plain text", open=False):
                    self.text = gr.Code("", language=None, elem_id="sv-text", show_label=False)
        with (
            gr.Accordion("Classroom step mode", open=False, elem_id="sv-stepmode") as self.step_box,
            gr.Row(equal_height=False),
        ):
            self.step_panel = gr.HTML(render.render_step_panel(None, "greedy"), elem_id="sv-step-panel")
            self.step_chart = gr.Plot(_plot(charts.step_detail_chart(None)), elem_id="sv-fig-step", show_label=False)
        with gr.Row(equal_height=False):
            self.fig_tput = gr.Plot(_plot(charts.throughput_chart([])), elem_id="sv-fig-tput", show_label=False)
            self.fig_accept = gr.Plot(_plot(charts.acceptance_chart([])), elem_id="sv-fig-accept", show_label=False)
        with gr.Row(equal_height=False):
            self.fig_hist = gr.Plot(_plot(charts.accepted_hist_chart([], 4)), elem_id="sv-fig-hist", show_label=False)
            self.fig_pos = gr.Plot(_plot(charts.position_chart([])), elem_id="sv-fig-pos", show_label=False)
        with gr.Row(equal_height=False):
            self.fig_theory = gr.Plot(_plot(charts.theory_chart(None)), elem_id="sv-fig-theory", show_label=False)
            self.theory = gr.HTML(render.render_theory(None), elem_id="sv-theory")
        self.summary = gr.Dataframe(
            render.summary_table(None, None),
            label="Summary",
            elem_id="sv-summary",
            interactive=False,
            wrap=True,
        )
        with gr.Row():
            self.dl_trace = gr.DownloadButton(
                "Download event trace (JSON)", interactive=False, elem_id="sv-dl-trace", size="md"
            )
            self.dl_csv = gr.DownloadButton(
                "Download per-step table (CSV)", interactive=False, elem_id="sv-dl-csv", size="md"
            )
        self.outputs = [
            self.status,
            self.kpis,
            self.stream,
            self.text,
            self.step_box,
            self.step_panel,
            self.step_chart,
            self.fig_tput,
            self.fig_accept,
            self.fig_hist,
            self.fig_pos,
            self.fig_theory,
            self.theory,
            self.summary,
            self.dl_trace,
            self.dl_csv,
        ]

    def wire(self) -> None:
        inputs = [*self.c.values, self.c.strategy]
        common = {
            "concurrency_limit": 1,
            "concurrency_id": MODEL_CONCURRENCY,
            "show_progress": "minimal",
            "show_progress_on": [self.status],
        }
        self.run_btn.click(self.on_run, inputs, self.outputs, api_name="run", **common)
        self.step_btn.click(self.on_step, inputs, self.outputs, api_name="step", **common)
        self.stop_btn.click(self.on_stop, None, None, queue=False, api_name=False)

    # -- drawing

    def draw(self, state: RunState, step_mode: bool = False, charts_due: bool = True) -> list[Any]:
        """All outputs for one snapshot. Charts and the plain text only when `charts_due` or the run is over (the
        browser redraws Plotly figures slowly); files and the table once the run is over."""
        req = state.request
        rule = req.cfg.rule if req else "greedy"
        gamma = req.cfg.gamma if req else 4
        spec, base = state.spec, state.baseline
        steps = spec.steps if spec else []
        summary = live_summary(state)
        over = state.phase in ("done", "stopped", "error")
        figs = charts_due or over or step_mode
        alpha = render.per_token_alpha(summary) if summary and summary.drafted else None
        if step_mode:
            tput = _plot(
                charts.throughput_chart(
                    steps, note="step mode: wall time includes your pauses between steps; press Run to measure speed"
                )
            )
            cur = steps[-1] if steps else None
            detail = state.details.get(cur.step) if cur else None
            panel = render.render_step_panel(cur, rule, detail, spec.strategy if spec else "draft", finished=over)
            rej = next((t.id for t in cur.tokens if t.origin == "rejected"), None) if cur else None
            tgt = next((t.id for t in cur.tokens if t.origin in ("resampled", "bonus")), None) if cur else None
            step_fig = _plot(charts.step_detail_chart(detail, rule, cur.step + 1 if cur else None, rej, tgt))
        else:
            speed = spec.summary.speedup if spec and spec.summary else None
            tput = _plot(
                charts.throughput_chart(
                    steps, base.steps if base else (), speed, f"speculative ({spec.label})" if spec else ""
                )
            )
            panel, step_fig = gr.skip(), gr.skip()
        trace = csv = None
        if over and steps:
            trace, csv = _write_exports(state)
        text = spec.summary.text if spec and spec.summary else "".join(t.text for s in steps for t in s.emitted)

        def fig(build: Any, *args: Any) -> Any:
            return _plot(build(*args)) if figs else gr.skip()

        return [
            _status_for(state),
            render.render_kpis(summary, base.summary if base else None)
            + (f'<p class="sv-why-top">{html.escape(render.why(summary))}</p>' if over and summary else ""),
            render.render_stream(
                steps, prompt=state.prompt_shown, rule=rule, current=state.current if step_mode else None
            ),
            text if figs else gr.skip(),
            gr.Accordion(open=True) if step_mode else gr.skip(),
            panel,
            step_fig,
            tput if figs else gr.skip(),
            fig(charts.acceptance_chart, steps),
            fig(charts.accepted_hist_chart, steps, gamma, alpha),
            fig(charts.position_chart, steps),
            fig(charts.theory_chart, summary),
            render.render_theory(summary),
            render.summary_table(spec.summary if spec else None, base.summary if base else None) if over else gr.skip(),
            gr.DownloadButton(value=trace, interactive=True) if trace else gr.skip(),
            gr.DownloadButton(value=csv, interactive=True) if csv else gr.skip(),
        ]

    def only_status(self, html: str) -> list[Any]:
        """An error or note: the status changes, everything the visitor already has stays."""
        return [html] + [gr.skip()] * (len(self.outputs) - 1)

    # -- handlers

    def on_run(
        self, prompt, preset, gamma, rule, temperature, top_p, top_k, max_new, seed, strategy, request: gr.Request
    ):
        values = (prompt, preset, gamma, rule, temperature, top_p, top_k, max_new, seed, strategy)
        yield from _guarded(self._run(*values, request=request), self.only_status)

    @gpu_task
    def _run(self, prompt, preset, gamma, rule, temperature, top_p, top_k, max_new, seed, strategy, *, request):
        v = self.visitors.get(request.session_hash if request else None)
        v.step = None
        v.stop.clear()
        req = make_request(prompt, preset, strategy, gamma, rule, temperature, top_p, top_k, max_new, seed)
        first, last_charts = True, 0.0
        for state in stream_run(self.manager, req, v.stop, min_interval=STREAM_INTERVAL):
            if state.phase in ("loading",) or (state.phase == "error" and first):
                yield self.only_status(_status_for(state))
                continue
            first = False
            due = time.perf_counter() - last_charts >= CHART_INTERVAL
            yield self.draw(state, charts_due=due)
            if due:
                last_charts = time.perf_counter()

    def on_step(
        self, prompt, preset, gamma, rule, temperature, top_p, top_k, max_new, seed, strategy, request: gr.Request
    ):
        values = (prompt, preset, gamma, rule, temperature, top_p, top_k, max_new, seed, strategy)
        yield from _guarded(self._step(*values, request=request), self.only_status)

    @gpu_task
    def _step(self, prompt, preset, gamma, rule, temperature, top_p, top_k, max_new, seed, strategy, *, request):
        v = self.visitors.get(request.session_hash if request else None)
        v.stop.clear()
        req = make_request(prompt, preset, strategy, gamma, rule, temperature, top_p, top_k, max_new, seed)
        for st in self.manager.wait(req.preset):
            if st.state == "error":
                yield self.only_status(render.render_error(st.message))
                return
            if st.state != "ready":
                yield self.only_status(
                    render.render_status(f"waiting for the models: {st.message}", "busy", st.fraction)
                )
        if v.step is None or v.step.req.key() != req.key() or v.step.finished:
            v.step = StepSession(self.manager, req)
        v.step.advance()
        yield self.draw(v.step.state(), step_mode=True)

    def on_stop(self, request: gr.Request) -> None:
        v = self.visitors.get(request.session_hash if request else None)
        v.stop.set()
        v.step = None


def _guarded(gen: Iterator[list[Any]], on_error) -> Iterator[list[Any]]:
    """Run a handler's generator; any exception becomes a friendly message in the page (never a traceback)."""
    try:
        yield from gen
    except ConfigError as e:
        yield on_error(render.render_error(str(e)))
    except Exception as e:  # noqa: BLE001 - the app must never die on a visitor's input
        import logging

        logging.getLogger("specviz.ui").exception("handler failed")
        yield on_error(render.render_error(friendly(e)))


# ---------------------------------------------------------------- the Compare tab


class CompareTab:
    """Several strategies on one prompt, each in turn, plus one plain run on the same loaded models."""

    def __init__(self, manager: ModelManager, visitors: Visitors) -> None:
        self.manager, self.visitors = manager, visitors
        drafting = [s for s in STRATEGIES if s != "plain"]
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                self.c = build_controls("cmp", manager.preset, with_strategy=False)
                self.strategies = gr.CheckboxGroup(
                    choices=drafting, value=drafting[:3], label="Strategies to compare", elem_id="cmp-strategies"
                )
                with gr.Row():
                    self.run_btn = gr.Button("Compare", variant="primary", elem_id="cmp-run")
                    self.stop_btn = gr.Button("Stop", variant="stop", elem_id="cmp-stop")
            with gr.Column(scale=8, min_width=360):
                self.status = gr.HTML(render.render_status("pick strategies and press Compare"), elem_id="cmp-status")
                self.table = gr.Dataframe(
                    render.compare_table([], None),
                    label="Strategies side by side",
                    elem_id="cmp-table",
                    interactive=False,
                    wrap=False,
                )
                self.chart = gr.Plot(_plot(charts.compare_chart([])), elem_id="cmp-chart", show_label=False)
        gr.HTML(render.render_legend())
        self.outputs_html = gr.HTML("", elem_id="cmp-outputs")
        self.outputs = [self.status, self.table, self.chart, self.outputs_html]

    def wire(self) -> None:
        self.run_btn.click(
            self.on_compare,
            [*self.c.values, self.strategies],
            self.outputs,
            api_name="compare",
            concurrency_limit=1,
            concurrency_id=MODEL_CONCURRENCY,
            show_progress="minimal",
            show_progress_on=[self.status],
        )
        self.stop_btn.click(self.on_stop, None, None, queue=False, api_name=False)

    def only_status(self, html: str) -> list[Any]:
        return [html] + [gr.skip()] * (len(self.outputs) - 1)

    def on_compare(
        self, prompt, preset, gamma, rule, temperature, top_p, top_k, max_new, seed, strategies, request: gr.Request
    ):
        values = (prompt, preset, gamma, rule, temperature, top_p, top_k, max_new, seed, strategies)
        yield from _guarded(self._compare(*values, request=request), self.only_status)

    @gpu_task
    def _compare(self, prompt, preset, gamma, rule, temperature, top_p, top_k, max_new, seed, strategies, *, request):
        v = self.visitors.get(request.session_hash if request else None)
        v.stop.clear()
        strategies = [s for s in (strategies or []) if s != "plain"]
        if not strategies:
            raise ConfigError("pick at least one strategy to compare")
        req = make_request(prompt, preset, strategies[0], gamma, rule, temperature, top_p, top_k, max_new, seed)
        plan = [*strategies, "plain"]
        n = len(plan)
        for state in stream_run(self.manager, req, v.stop, plan=plan, labels=[*strategies, "plain"]):
            if state.phase in ("loading", "error"):
                yield self.only_status(_status_for(state))
                continue
            done = sum(t.summary is not None for t in state.tracks)
            state.fraction = done / n if state.phase == "running" else None
            base = state.baseline.summary if state.baseline else None
            rows = render.compare_rows(state.tracks, base, greedy=rule == "greedy")
            yield [
                _status_for(state),
                pd.DataFrame(rows, columns=render.COMPARE_COLUMNS),
                _plot(charts.compare_chart(rows)),
                render.render_side_by_side(state.tracks, rule),
            ]

    def on_stop(self, request: gr.Request) -> None:
        self.visitors.get(request.session_hash if request else None).stop.set()


# ---------------------------------------------------------------- the page


def build_app(manager: ModelManager, visitors: Visitors | None = None) -> gr.Blocks:
    """The Blocks app; call launch(**launch_kwargs()) on it."""
    visitors = visitors or Visitors()
    with gr.Blocks(title="specviz: see speculative decoding", delete_cache=(3600, 7200)) as demo:
        gr.HTML(HEADER)
        model_status = gr.HTML(model_status_html(manager), elem_id="sv-model-status")
        timer = gr.Timer(0.5, active=True)
        with gr.Tabs():
            with gr.Tab("Run", id="run", elem_id="sv-tab-run"):
                run_tab = RunTab(manager, visitors)
            with gr.Tab("Compare", id="compare", elem_id="sv-tab-compare"):
                cmp_tab = CompareTab(manager, visitors)
            with gr.Tab("Theory lab", id="lab", elem_id="sv-tab-lab"):
                from specviz.ui.lab import LabTab  # here, not at the top: lab.py reuses this module's helpers

                lab_tab = LabTab(manager, visitors)
        run_tab.wire()
        cmp_tab.wire()
        lab_tab.wire()

        def tick() -> tuple[str, gr.Timer]:
            return model_status_html(manager), gr.Timer(active=manager.status().state in ("idle", "loading"))

        def switch(preset: str) -> tuple[Any, ...]:
            """Load another pair for everyone (the old one is freed); both tabs' dropdowns follow."""
            try:
                manager.request(preset)
            except ConfigError as e:
                return render.render_error(str(e)), gr.Timer(active=False), gr.skip(), gr.skip()
            info = model_presets().get(preset, {}).get("description", "")
            same = gr.Dropdown(value=preset, info=info)
            return model_status_html(manager), gr.Timer(active=True), same, same

        timer.tick(tick, None, [model_status, timer], queue=False, show_progress="hidden")
        demo.load(tick, None, [model_status, timer], queue=False, show_progress="hidden")
        dropdowns = [run_tab.c.preset, cmp_tab.c.preset]
        for dd in dropdowns:
            dd.input(switch, dd, [model_status, timer, *dropdowns], queue=False, show_progress="hidden")

        def unload(request: gr.Request) -> None:
            visitors.drop(request.session_hash if request else None)

        demo.unload(unload)
    return demo


TOOLTIP_JS = """
() => {
  if (window.__svTip) return;
  const tip = document.createElement('div');
  tip.id = 'sv-tooltip';
  tip.setAttribute('role', 'tooltip');
  document.body.appendChild(tip);
  window.__svTip = tip;
  let current = null;
  const hide = () => { tip.style.display = 'none'; current = null; };
  const show = (el) => {
    current = el;
    tip.textContent = el.getAttribute('data-tip');
    tip.style.display = 'block';
    const r = el.getBoundingClientRect(), t = tip.getBoundingClientRect();
    let top = r.bottom + 6, left = Math.min(r.left, window.innerWidth - t.width - 8);
    if (top + t.height > window.innerHeight - 4) top = r.top - t.height - 6;
    tip.style.top = Math.max(4, top) + 'px';
    tip.style.left = Math.max(4, left) + 'px';
  };
  document.addEventListener('mouseover', (e) => {
    const el = e.target.closest ? e.target.closest('[data-tip]') : null;
    if (el) { if (el !== current) show(el); } else if (current) hide();
  });
  document.addEventListener('focusin', (e) => {
    const el = e.target.closest ? e.target.closest('[data-tip]') : null;
    if (el) show(el);
  });
  // keep the tip on its token while the page scrolls; drop it when a redraw replaced that token
  document.addEventListener('scroll', () => { if (current && current.isConnected) show(current); else hide(); }, true);
  setInterval(() => { if (current && !current.isConnected) hide(); }, 400);
}
"""


def launch_kwargs() -> dict[str, Any]:
    """Theme, stylesheet and the tooltip script (Gradio 6 takes these in launch())."""
    css = (ASSETS_DIR / "style.css").read_text(encoding="utf-8")
    theme = gr.themes.Soft(primary_hue="blue", neutral_hue="slate")
    return {"theme": theme, "css": css, "js": TOOLTIP_JS}
