"""The Theory lab's toy playground: p and q typed or drawn at random, their overlap and one rule's simulated draws,
redrawn on every change without a model."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import gradio as gr
from gradio.blocks import Block

from specviz.core.config import ConfigError
from specviz.core.relaxed import FAMILIES
from specviz.lab import playground as pgm
from specviz.ui import lab_charts, render
from specviz.ui.common import Outputs, Update, caption, plot
from specviz.ui.figures import Figure
from specviz.ui.lab import count, render_playground

DRAWS = 10_000  # the default number of simulated rounds


def playground_view(
    p_text: str, q_text: str, n: Any, seed: Any, relax: Any, family: str | None
) -> tuple[str, Figure, Figure]:
    """The summary HTML and the two figures for one setting; ConfigError names bad input."""
    p, q = pgm.parse_pair(p_text, q_text)
    pg = pgm.playground(p, q, count("draws N", n), count("seed", seed), float(relax or 0.0), family or "linear")
    d = asdict(pg)
    return render_playground(pg), lab_charts.playground_dist_chart(d), lab_charts.playground_hist_chart(d)


class Playground:
    """The playground's components and handlers (they run at once, outside the model queue)."""

    def __init__(self) -> None:
        p0, q0 = (pgm.format_dist(d) for d in pgm.PRESETS["close"])
        summary, dist, hist = playground_view(p0, q0, DRAWS, 0, 0.0, "linear")
        out = self.out = Outputs()
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                self.case = gr.Radio(list(pgm.PRESETS), value="close", label="Cases", elem_id="lab-pg-case")
                self.p = gr.Textbox(
                    p0,
                    label="p (target), 5 to 10 numbers",
                    info="any non-negative weights; they are normalised",
                    elem_id="lab-pg-p",
                )
                self.q = gr.Textbox(q0, label="q (draft)", elem_id="lab-pg-q")
                with gr.Row():
                    self.tokens = gr.Slider(5, 10, value=6, step=1, label="tokens", elem_id="lab-pg-tokens")
                    self.random = gr.Button("Draw a random pair", elem_id="lab-pg-random", size="md")
                self.n = gr.Slider(100, pgm.MAX_DRAWS, value=DRAWS, step=100, label="draws N", elem_id="lab-pg-n")
                self.seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="lab-pg-seed")
                self.relax = gr.Slider(0, 1, value=0, step=0.05, label="relax (0 = lossless)", elem_id="lab-pg-relax")
                self.family = gr.Radio(list(FAMILIES), value="linear", label="relax family", elem_id="lab-pg-family")
            with gr.Column(scale=8, min_width=340):
                self.summary = out(gr.HTML(summary, elem_id="lab-pg-summary"))
                self.fig_dist = out(gr.Plot(plot(dist), elem_id="lab-pg-fig-dist", show_label=False))
                caption("pg_dist")
                self.fig_hist = out(gr.Plot(plot(hist), elem_id="lab-pg-fig-hist", show_label=False))
                caption("pg_hist")

    def wire(self) -> None:
        quick: dict[str, Any] = {
            "queue": False,
            "show_progress": "hidden",
            "api_name": False,
            "trigger_mode": "always_last",
        }
        inputs = {self.p, self.q, self.n, self.seed, self.relax, self.family}
        for comp in inputs:
            comp.change(self.on_change, inputs, self.out.all, **quick)
        self.case.input(self.on_case, self.case, [self.p, self.q], **quick)
        self.random.click(self.on_random, {self.tokens, self.seed}, [self.p, self.q, self.summary], **quick)

    def on_change(self, data: dict[Block, Any]) -> Update:
        """Summary and figures; on bad input a clear message, the figures kept."""
        try:
            summary, dist, hist = playground_view(
                data[self.p], data[self.q], data[self.n], data[self.seed], data[self.relax], data[self.family]
            )
        except ConfigError as e:
            return {self.summary: render.render_error(str(e))}
        return {self.summary: summary, self.fig_dist: plot(dist), self.fig_hist: plot(hist)}

    def on_case(self, name: str) -> Update:
        if name not in pgm.PRESETS:
            return {self.p: gr.skip(), self.q: gr.skip()}  # nothing changes (an empty dict reads as one value)
        p, q = pgm.PRESETS[name]
        return {self.p: pgm.format_dist(p), self.q: pgm.format_dist(q)}

    def on_random(self, data: dict[Block, Any]) -> Update:
        try:
            p, q = pgm.random_pair(count("tokens", data[self.tokens]), count("seed", data[self.seed]))
        except ConfigError as e:
            return {self.summary: render.render_error(str(e))}
        return {self.p: pgm.format_dist(p), self.q: pgm.format_dist(q)}
