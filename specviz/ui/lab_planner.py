"""The Theory lab's part 3 on the loaded pair: what target passes cost, Leviathan et al.'s gamma planner beside measured
speedups, and the recorded (or an uploaded) greedy run replayed under other draft-length schedules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
from gradio.blocks import Block

from specviz.backends.loading import ModelPair
from specviz.core.config import ConfigError, parse_numbers
from specviz.core.trace import read_trace_file
from specviz.lab import planner, replay
from specviz.ui import plan_charts, render
from specviz.ui.common import Outputs, Update, caption, guarded, on_models, plot, run_on_pair, stopper
from specviz.ui.controls import LabControls
from specviz.ui.lab import PLAN_COLUMNS, REPLAY_COLUMNS, count, table
from specviz.ui.models import ModelManager, gpu_task
from specviz.ui.visitors import Visitors
from specviz.ui.worker import Worker

PASS_SIZES = range(1, 17)  # target passes over 1..16 tokens are timed, so gammas up to 15 can be planned
UPLOADS = "uploads"  # the queue of trace replays: their files are read there, before they wait for the models


class PlannerPart:
    """3. Costs, the gamma planner and the schedule replay."""

    def __init__(self, manager: ModelManager, visitors: Visitors, settings: LabControls) -> None:
        self.manager, self.visitors, self.settings = manager, visitors, settings
        out = self.out = Outputs()
        with gr.Row():
            self.gammas = gr.Textbox("1, 2, 4, 8", label="gammas to measure", elem_id="lab-plan-gammas")
            self.repeats = gr.Slider(1, 7, value=3, step=1, label="timing rounds", elem_id="lab-plan-repeats")
            self.conf = gr.Slider(
                0.05, 0.95, value=0.5, step=0.05, label="replay: confidence stop", elem_id="lab-plan-conf"
            )
        with gr.Row():
            self.run_btn = gr.Button("Measure costs, speedups and replay", variant="primary", elem_id="lab-plan-run")
            self.stop_btn = gr.Button("Stop", variant="stop", elem_id="lab-plan-stop")
        intro = "times target passes of 1..16 tokens and one-token draft passes, then greedy runs at each gamma"
        self.status = out(gr.HTML(render.render_status(intro), elem_id="lab-plan-status"))
        self.state = out(gr.State(None))  # the last measured costs and their preset, reused by an upload's replay
        with gr.Row(equal_height=False):
            with gr.Column():
                cost = plot(plan_charts.cost_chart(None))
                self.cost_fig = out(gr.Plot(cost, elem_id="lab-cost-fig", show_label=False))
                caption("cost")
            with gr.Column():
                plan = plot(plan_charts.planner_chart([], [], None, None))
                self.plan_fig = out(gr.Plot(plan, elem_id="lab-plan-fig", show_label=False))
                caption("planner")
        self.plan_table = out(gr.Dataframe(interactive=False, elem_id="lab-plan-table", label="measured speedups"))
        gr.Markdown("#### Replay: what other draft-length schedules would have done")
        replayed = plot(plan_charts.replay_chart([]))
        self.replay_fig = out(gr.Plot(replayed, elem_id="lab-replay-fig", show_label=False))
        caption("replay")
        self.replay_table = out(gr.Dataframe(interactive=False, elem_id="lab-replay-table", label="replayed"))
        with gr.Row():
            self.file = gr.File(
                label="or replay a greedy trace downloaded from the Run tab",
                file_types=[".json"],
                elem_id="lab-replay-file",
            )
            self.replay_btn = gr.Button("Replay the uploaded trace", elem_id="lab-replay-run")

    def wire(self) -> None:
        plan_in = {*self.settings.inputs, self.gammas, self.repeats, self.conf}
        replay_in = {self.file, self.repeats, self.conf, self.state}
        self.run_btn.click(self.on_plan, plan_in, self.out.all, api_name="lab_planner", **on_models(self.status))
        # an upload is read and checked outside the models' queue (its own, two at a time), so a hostile file never
        # holds up anyone's run; the replay then waits for the models' lock like any job
        self.replay_btn.click(
            self.on_replay,
            replay_in,
            self.out.all,
            api_name="lab_replay",
            concurrency_limit=2,
            concurrency_id=UPLOADS,
            show_progress="minimal",
            show_progress_on=[self.status],
        )
        self.stop_btn.click(stopper(self.visitors), None, None, queue=False, api_name=False)

    # -- measure costs and speedups, then replay the plain run

    def on_plan(self, data: dict[Block, Any], request: gr.Request) -> Iterator[Update]:
        yield from guarded(self._plan(data, request), self.status)

    @gpu_task
    def _plan(self, data: dict[Block, Any], request: gr.Request | None) -> Iterator[Update]:
        text = self.settings.text(data)
        gammas = parse_numbers(data[self.gammas], "gammas to measure", int, 1, PASS_SIZES[-1] - 1)
        cfg = self.settings.config(data, rule="greedy")
        reps, confidence = count("timing rounds", data[self.repeats]), float(data[self.conf])
        stop = self.visitors.fresh_stop(request)

        def work(pair: ModelPair, w: Worker) -> dict[str, Any]:
            if pair.draft is None:
                raise ConfigError(f"preset {pair.preset!r} has no draft model: the planner needs one")
            ids = pair.codec.encode(text)
            costs = planner.measure_costs(pair, ids, PASS_SIZES, reps, w.should_stop, w.progress)
            measured, plain = planner.measure_speedups(pair, ids, cfg, gammas, "draft", w.should_stop, w.progress)
            w.progress("replaying the recorded run under other schedules")
            ag = replay.draft_agreement(pair.draft, ids, plain.output_ids, cfg.top_k, cfg.top_p)
            rows = replay.replay(ag, costs, cfg.gamma, cfg.max_new_tokens, confidence)
            return {"costs": costs.to_dict(), "measured": measured, "replay": rows, "preset": pair.preset}

        res = yield from run_on_pair(self.manager, stop, self.status, work)
        yield self.draw_plan(res, stop.is_set())

    def draw_plan(self, res: dict[str, Any], stopped: bool) -> Update:
        costs = planner.Costs.from_dict(res["costs"])
        measured = res["measured"]
        alpha = planner.pooled_alpha(measured) if measured else None
        c = costs.c
        curve = planner.speedup_curve(alpha, costs) if alpha is not None and c is not None else []
        if stopped:
            status = render.render_status("stopped: partial results", "warn")
        elif curve:
            status = render.render_status(
                f"done: alpha = {alpha:.2f}, c = {c:.3f}; best gamma {planner.best_gamma(curve, 'classic')} by "
                f"Leviathan's formula, {planner.best_gamma(curve)} with the measured pass cost",
                "ok",
            )
        else:
            status = render.render_status("done (no drafting run measured)", "ok")
        return {
            self.status: status,
            self.cost_fig: plot(plan_charts.cost_chart(res["costs"])),
            self.plan_fig: plot(plan_charts.planner_chart(curve, measured, alpha, c)),
            self.plan_table: table(measured, PLAN_COLUMNS),
            self.replay_fig: plot(plan_charts.replay_chart(res["replay"])),
            self.replay_table: table(res["replay"], REPLAY_COLUMNS),
            self.state: {"costs": res["costs"], "preset": res["preset"]},
        }

    # -- replay an uploaded trace

    def on_replay(self, data: dict[Block, Any], request: gr.Request) -> Iterator[Update]:
        yield from guarded(self._replay(data, request), self.status)

    @gpu_task
    def _replay(self, data: dict[Block, Any], request: gr.Request | None) -> Iterator[Update]:
        file, state = data[self.file], data[self.state]
        if not file:
            raise ConfigError("upload a trace first (Run tab: 'Download event trace (JSON)', with the greedy rule)")
        path = file if isinstance(file, str) else getattr(file, "name", str(file))
        trace = read_trace_file(path, greedy=True)
        summary, meta, config = trace.summary, trace.meta, trace.config
        reps, confidence = count("timing rounds", data[self.repeats]), float(data[self.conf])
        recorded = meta.get("preset") or self.manager.preset
        if not isinstance(recorded, str) or recorded not in self.manager.allowed:
            raise ConfigError(
                f"the trace was recorded with preset {str(recorded)[:80]!r}, which this app does not offer "
                f"(offered: {', '.join(self.manager.allowed)})"
            )
        stop = self.visitors.fresh_stop(request)

        def work(pair: ModelPair, w: Worker) -> dict[str, Any]:
            if pair.draft is None:
                raise ConfigError(f"preset {pair.preset!r} has no draft model to replay with")
            trace.check_vocab(pair.target.vocab_size)
            ids = pair.codec.encode(trace.prompt)
            context = min(pair.target.max_positions, pair.draft.max_positions)
            if len(ids) + len(summary.output_ids) > context:
                raise ConfigError(
                    f"the trace's prompt and output are {len(ids) + len(summary.output_ids)} tokens; this model's "
                    f"context holds {context}"
                )
            if state and state.get("preset") == pair.preset:  # the costs measured last time still hold
                costs = planner.Costs.from_dict(state["costs"])
            else:
                costs = planner.measure_costs(pair, ids, PASS_SIZES, reps, w.should_stop, w.progress)
            w.progress("replaying the uploaded trace")
            ag = replay.draft_agreement(pair.draft, ids, summary.output_ids, config.top_k, config.top_p)
            rows = replay.replay(ag, costs, config.gamma, config.max_new_tokens, confidence)
            return {"costs": costs.to_dict(), "rows": rows, "preset": pair.preset}

        res = yield from run_on_pair(self.manager, stop, self.status, work, preset=recorded)
        yield {
            self.status: render.render_status(f"replayed the uploaded trace ({len(summary.output_ids)} tokens)", "ok"),
            self.cost_fig: plot(plan_charts.cost_chart(res["costs"])),
            self.replay_fig: plot(plan_charts.replay_chart(res["rows"])),
            self.replay_table: table(res["rows"], REPLAY_COLUMNS),
            self.state: {"costs": res["costs"], "preset": res["preset"]},
        }
