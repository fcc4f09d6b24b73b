"""The Theory lab tab: a model-free toy playground, then batch drafts, the quality/speed knob and the cost/gamma
planner with a schedule replay, each measured on the loaded pair through the same model queue as Run and Compare, and
each chart captioned with the result of Yin et al. (2024) or Leviathan et al. (2023) it checks."""

from __future__ import annotations

import html
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from specviz.core.config import ConfigError, GenConfig, check_prompt
from specviz.core.events import trace_from_json
from specviz.core.relaxed import FAMILIES
from specviz.lab import planner, replay
from specviz.lab import playground as pgm
from specviz.lab.tradeoff import relaxed_sweep
from specviz.ui import lab_charts, render
from specviz.ui.app import MODEL_CONCURRENCY, _guarded, _plot, example_prompts
from specviz.ui.session import ModelManager, Visitors, gpu_task

YIN = "Yin, Chen, Huang and Wang, “A Theoretical Perspective for Speculative Decoding Algorithm” (NeurIPS 2024)"
LEVIATHAN = "Leviathan, Kalman and Matias, “Fast Inference from Transformers via Speculative Decoding” (ICML 2023)"

INTRO = f"""### Theory lab
Checks on this machine and the loaded pair what {YIN} and {LEVIATHAN} predict. Their definitions, in this app's
notation (p = the target's next-token distribution, q = the draft's):

- **Decoding as a Markov chain**: the state is the prefix x<sub>1:n-1</sub>; the target moves to x<sub>n</sub> with
  p<sub>n</sub>(· | x<sub>1:n-1</sub>), the draft with q<sub>n</sub>(· | x<sub>1:n-1</sub>).
- **Total variation**: TV(p, q) = ½ Σ<sub>x</sub> |p(x) − q(x)| = 1 − Σ<sub>x</sub> min(p(x), q(x)).
- **Rejection-based algorithm**: a drafted token is accepted or rejected by a rule that sees p and q, and a rejected
  one is replaced by a draw from a correction distribution; it is **unbiased** when its output follows p exactly.
- **Rejections**: the number of drafted tokens rejected over a whole generation.

Results: expected rejections = Σ<sub>n</sub> E[TV(p<sub>n</sub>, q<sub>n</sub>)], and no unbiased rejection-based
algorithm does better; several drafts per step (batch speculative decoding) reject less, with a gain that saturates;
a biased rule with rejection probability R and output P has R + TV(P, p) ≥ TV(p, q), and the optimal trade-off is the
line from (0, TV) to (TV, 0) (their Theorem 5). Leviathan et al.: a step emits (1 − α<sup>γ+1</sup>) / (1 − α)
tokens on average and speeds decoding up by that over γc + 1, which beats 1 for some γ exactly when α > c.
"""

CAPTIONS = {
    "pg_dist": "Bars: p, q and their overlap min(p, q), whose sum is the chance that a drafted token survives, "
    "1 − TV(p, q); diamonds: each token's acceptance if drafted. This is one position of Yin et al.'s rejection "
    "formula: expected rejections = TV(p, q).",
    "pg_hist": "N simulated rounds of draft, test and correct: the histogram of emitted tokens matches p, up to "
    "sampling noise that shrinks like 1/√N. This is the lossless lemma (Leviathan et al.'s correctness proof; the "
    "unbiasedness in Yin et al.); with relax above 0 it follows the rule's exact output (circles) instead.",
    "batch": "Measured rejections per generated token (left: steps where all M drafts were rejected and the target "
    "corrected) and tokens per step (right) as the number of drafts M grows, beside the single draft's expected "
    "rejections, its sum of TV per token: checks Yin et al.'s batch result that more drafts reject less, with a gain "
    "that saturates.",
    "tradeoff": "Each filled point is one relax setting (its label): measured rejections and the exact drift "
    "TV(output, p) summed over checked positions, both over the run's Σ TV; open points use the exact expected "
    "rejections. The dashed line rejections + drift = Σ TV is Yin et al.'s optimal trade-off (Theorem 5): linear and "
    "power land on it, the geometric mix above it, and in expectation nothing goes below.",
    "cost": "What one target pass over k tokens costs on this machine, in one-token passes, and c = draft ms per token "
    "/ target ms per pass: Leviathan et al.'s speedup formula assumes the flat dashed line.",
    "planner": "Left: Leviathan et al.'s predicted speedup against gamma for the measured alpha and c (dotted: their "
    "formula; solid: with the measured pass cost), best gammas starred, measured speedups as diamonds. Right: the "
    "formula's best speedup against alpha passes 1 exactly at alpha = c, their break-even condition.",
    "replay": "The recorded greedy run replayed under other draft-length schedules: tokens per pass are exact (under "
    "greedy, where the draft agrees with the output fixes every accepted length), speedups are predictions from the "
    "measured costs, not timings. It checks what Leviathan et al.'s one fixed gamma leaves to adaptive schedules.",
}


def _caption(key: str) -> gr.Markdown:
    return gr.Markdown(CAPTIONS[key], elem_classes=["sv-lab-caption"], elem_id=f"lab-cap-{key.replace('_', '-')}")


def _numbers(text: str | None, name: str, kind: type, lo: float, hi: float) -> list[Any]:
    """'1, 2, 4' -> [1, 2, 4]; ConfigError names the field and the problem."""
    parts = [x for x in str(text or "").replace(";", ",").replace(" ", ",").split(",") if x]
    if not parts:
        raise ConfigError(f"{name} is empty: give comma-separated numbers")
    out = []
    for x in parts:
        try:
            v = kind(float(x)) if kind is int and float(x).is_integer() else kind(x)
        except ValueError:
            raise ConfigError(f"{name}: {x!r} is not a {'whole number' if kind is int else 'number'}") from None
        if not lo <= v <= hi:
            raise ConfigError(f"{name}: {x} is outside {lo:g}..{hi:g}")
        out.append(v)
    return sorted(set(out))


def _int(v: Any, name: str) -> int:
    if v is None or (isinstance(v, float) and not v.is_integer()):
        raise ConfigError(f"{name} must be a whole number, got {v!r}")
    return int(v)


def _table(rows: list[dict[str, Any]], cols: dict[str, str]) -> pd.DataFrame:
    """Selected columns renamed, floats rounded to 3 places."""
    data = [
        {label: (round(r[k], 3) if isinstance(r.get(k), float) else r.get(k)) for k, label in cols.items()}
        for r in rows
    ]
    return pd.DataFrame(data, columns=list(cols.values()))


def on_pair(
    manager: ModelManager, stop: threading.Event, work: Callable[[Any, Callable[..., None], Callable[[], bool]], Any]
) -> Iterator[tuple[str, Any]]:
    """Wait for the models (yielding ("status", html)), then run work(pair, progress, should_stop) in a worker thread
    that holds the models' lock, as a generation does; yield ("status", html) for its progress and ("done", result)
    last. A consumer that goes away stops the work at its next check."""
    for st in manager.wait(manager.preset):
        if st.state == "error":
            raise ConfigError(st.message)
        if st.state != "ready":
            yield "status", render.render_status(f"waiting for the models: {st.message}", "busy", st.fraction)
    q: queue.Queue = queue.Queue()

    def job() -> None:
        try:
            with manager.lock:
                pair = manager.pair
                if pair is None:
                    raise ConfigError("the models are not loaded (a preset switch may be under way): try again")
                manager.owner = q  # a step-mode session replays its run before going on
                result = work(pair, lambda msg, frac=None: q.put(("progress", msg, frac)), stop.is_set)
            q.put(("done", result))
        except BaseException as e:  # noqa: BLE001 - re-raised in the handler, which shows it
            q.put(("error", e))

    threading.Thread(target=job, name="specviz-lab", daemon=True).start()
    ended = False
    try:
        while True:
            m = q.get()
            if m[0] == "progress":
                yield "status", render.render_status(m[1], "busy", m[2])
                continue
            ended = True
            if m[0] == "error":
                if isinstance(m[1], InterruptedError):
                    raise ConfigError("stopped: press the button to measure again")
                raise m[1]
            yield "done", m[1]
            return
    finally:
        if not ended:
            stop.set()


class LabTab:
    """The Theory lab's components and handlers."""

    def __init__(self, manager: ModelManager, visitors: Visitors) -> None:
        self.manager, self.visitors = manager, visitors
        gr.Markdown(INTRO, elem_id="lab-intro", elem_classes=["sv-lab-intro"])
        with gr.Accordion("Prompt and settings for parts 1 to 3 (they run on the loaded pair)", open=False):
            examples = example_prompts()
            self.prompt = gr.Textbox(
                label="Prompt", value=examples[0][1] if examples else "", lines=3, elem_id="lab-prompt"
            )
            ex = gr.Dropdown(choices=[lab for lab, _ in examples], value=None, label="Example prompts")
            by_label = dict(examples)
            ex.change(
                lambda lab: by_label.get(lab, gr.skip()) if lab else gr.skip(),
                ex,
                self.prompt,
                queue=False,
                api_name=False,
                show_progress="hidden",
            )
            with gr.Row():
                self.gamma = gr.Slider(1, 16, value=4, step=1, label="gamma", elem_id="lab-gamma")
                self.max_new = gr.Slider(8, 512, value=48, step=1, label="max new tokens", elem_id="lab-max-new")
            with gr.Row():
                self.temperature = gr.Slider(
                    0.05, 2, value=1.0, step=0.05, label="temperature (parts 1, 2)", elem_id="lab-temperature"
                )
                self.seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="lab-seed")
        self.common = [self.prompt, self.gamma, self.max_new, self.temperature, self.seed]
        with gr.Tabs():
            with gr.Tab("Toy playground (no model)", id="lab-playground", elem_id="lab-tab-playground"):
                self._build_playground()
            with gr.Tab("1. Batch drafts", id="lab-batch", elem_id="lab-tab-batch"):
                self._build_batch()
            with gr.Tab("2. Quality/speed knob", id="lab-relax", elem_id="lab-tab-relax"):
                self._build_relax()
            with gr.Tab("3. Costs and gamma planner", id="lab-plan", elem_id="lab-tab-plan"):
                self._build_planner()

    # ------------------------------------------------------------ 4. toy playground

    def _build_playground(self) -> None:
        p0, q0 = pgm.PRESETS["close"]
        first = self.playground_outputs(pgm.format_dist(p0), pgm.format_dist(q0), 10_000, 0, 0.0, "linear")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                self.pg_case = gr.Radio(list(pgm.PRESETS), value="close", label="Cases", elem_id="lab-pg-case")
                self.pg_p = gr.Textbox(
                    pgm.format_dist(p0),
                    label="p (target), 5 to 10 numbers",
                    info="any non-negative weights; they are normalised",
                    elem_id="lab-pg-p",
                )
                self.pg_q = gr.Textbox(pgm.format_dist(q0), label="q (draft)", elem_id="lab-pg-q")
                with gr.Row():
                    self.pg_tokens = gr.Slider(5, 10, value=6, step=1, label="tokens", elem_id="lab-pg-tokens")
                    self.pg_random = gr.Button("Draw a random pair", elem_id="lab-pg-random", size="md")
                self.pg_n = gr.Slider(100, pgm.MAX_DRAWS, value=10_000, step=100, label="draws N", elem_id="lab-pg-n")
                self.pg_seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="lab-pg-seed")
                self.pg_relax = gr.Slider(
                    0, 1, value=0, step=0.05, label="relax (0 = lossless)", elem_id="lab-pg-relax"
                )
                self.pg_family = gr.Radio(list(FAMILIES), value="linear", label="relax family", elem_id="lab-pg-family")
            with gr.Column(scale=8, min_width=340):
                self.pg_summary = gr.HTML(first[0], elem_id="lab-pg-summary")
                self.pg_fig_dist = gr.Plot(first[1], elem_id="lab-pg-fig-dist", show_label=False)
                _caption("pg_dist")
                self.pg_fig_hist = gr.Plot(first[2], elem_id="lab-pg-fig-hist", show_label=False)
                _caption("pg_hist")

    def playground_outputs(self, p_text, q_text, n, seed, relax, family) -> list[Any]:
        """Summary HTML and the two figures; a clear message (figures kept) on bad input."""
        try:
            p, q = pgm.parse_pair(p_text, q_text)
            pg = pgm.playground(p, q, _int(n, "draws N"), _int(seed, "seed"), float(relax or 0.0), family or "linear")
        except ConfigError as e:
            return [render.render_error(str(e)), gr.skip(), gr.skip()]
        d = asdict(pg)
        return [
            render_playground(pg),
            _plot(lab_charts.playground_dist_chart(d)),
            _plot(lab_charts.playground_hist_chart(d)),
        ]

    # ------------------------------------------------------------ 1. batch drafts

    def _build_batch(self) -> None:
        with gr.Row():
            self.batch_ms = gr.Textbox("1, 2, 4, 8", label="drafts per step M", elem_id="lab-batch-ms", scale=3)
            self.batch_btn = gr.Button("Run the batch sweep", variant="primary", elem_id="lab-batch-run", scale=1)
            self.batch_stop = gr.Button("Stop", variant="stop", elem_id="lab-batch-stop", scale=1)
        self.batch_status = gr.HTML(
            render.render_status("speculative sampling with M drafts per step, for each M"), elem_id="lab-batch-status"
        )
        self.batch_fig = gr.Plot(_plot(lab_charts.batch_chart([])), elem_id="lab-batch-fig", show_label=False)
        _caption("batch")
        self.batch_table = gr.Dataframe(interactive=False, elem_id="lab-batch-table", label="measured")

    # ------------------------------------------------------------ 2. the quality/speed knob

    def _build_relax(self) -> None:
        gr.Markdown(
            "Relaxed acceptance, one knob λ from 0 (lossless, the default everywhere else) to 1 (accept every "
            "guess). **linear**: accept with min(1, p/q) + λ(1 − min(1, p/q)), correct from norm(max(0, p − q)): "
            "the lossless rule against (1 − λ)p + λq, rejections (1 − λ)TV, drift λTV. **power**: accept with "
            "min(1, p/q)<sup>1−λ</sup>, same correction. **geometric**: the lossless rule against the normalised "
            "p<sup>1−λ</sup>q<sup>λ</sup> (logit interpolation). The engine records each checked position's exact "
            "drift TV(output, p) from p, q and the rule.",
            elem_classes=["sv-lab-note"],
        )
        with gr.Row():
            self.relax_lams = gr.Textbox("0, 0.25, 0.5, 0.75, 1", label="relax settings", elem_id="lab-relax-lams")
            self.relax_families = gr.CheckboxGroup(
                list(FAMILIES), value=["linear", "geometric"], label="families", elem_id="lab-relax-families"
            )
        with gr.Row():
            self.relax_btn = gr.Button("Run the sweep", variant="primary", elem_id="lab-relax-run")
            self.relax_stop = gr.Button("Stop", variant="stop", elem_id="lab-relax-stop")
        self.relax_status = gr.HTML(
            render.render_status("one sampled run per setting (draft strategy)"), elem_id="lab-relax-status"
        )
        self.relax_fig = gr.Plot(_plot(lab_charts.tradeoff_chart([])), elem_id="lab-relax-fig", show_label=False)
        _caption("tradeoff")
        self.relax_table = gr.Dataframe(interactive=False, elem_id="lab-relax-table", label="measured")

    # ------------------------------------------------------------ 3. costs, planner, replay

    def _build_planner(self) -> None:
        with gr.Row():
            self.plan_gammas = gr.Textbox("1, 2, 4, 8", label="gammas to measure", elem_id="lab-plan-gammas")
            self.plan_repeats = gr.Slider(1, 7, value=3, step=1, label="timing rounds", elem_id="lab-plan-repeats")
            self.plan_conf = gr.Slider(
                0.05, 0.95, value=0.5, step=0.05, label="replay: confidence stop", elem_id="lab-plan-conf"
            )
        with gr.Row():
            self.plan_btn = gr.Button("Measure costs, speedups and replay", variant="primary", elem_id="lab-plan-run")
            self.plan_stop = gr.Button("Stop", variant="stop", elem_id="lab-plan-stop")
        self.plan_status = gr.HTML(
            render.render_status(
                "times target passes of 1..16 tokens and one-token draft passes, then greedy runs at each gamma"
            ),
            elem_id="lab-plan-status",
        )
        self.plan_state = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column():
                self.cost_fig = gr.Plot(_plot(lab_charts.cost_chart(None)), elem_id="lab-cost-fig", show_label=False)
                _caption("cost")
            with gr.Column():
                self.plan_fig = gr.Plot(
                    _plot(lab_charts.planner_chart([], [], None, None)), elem_id="lab-plan-fig", show_label=False
                )
                _caption("planner")
        self.plan_table = gr.Dataframe(interactive=False, elem_id="lab-plan-table", label="measured speedups")
        gr.Markdown("#### Replay: what other draft-length schedules would have done")
        self.replay_fig = gr.Plot(_plot(lab_charts.replay_chart([])), elem_id="lab-replay-fig", show_label=False)
        _caption("replay")
        self.replay_table = gr.Dataframe(interactive=False, elem_id="lab-replay-table", label="replayed")
        with gr.Row():
            self.replay_file = gr.File(
                label="or replay a greedy trace downloaded from the Run tab",
                file_types=[".json"],
                elem_id="lab-replay-file",
            )
            self.replay_btn = gr.Button("Replay the uploaded trace", elem_id="lab-replay-run")

    # ------------------------------------------------------------ wiring

    def wire(self) -> None:
        quick = {"queue": False, "show_progress": "hidden", "api_name": False, "trigger_mode": "always_last"}
        pg_in = [self.pg_p, self.pg_q, self.pg_n, self.pg_seed, self.pg_relax, self.pg_family]
        pg_out = [self.pg_summary, self.pg_fig_dist, self.pg_fig_hist]
        for comp in pg_in:
            comp.change(self.playground_outputs, pg_in, pg_out, **quick)

        def case(name: str) -> tuple[Any, Any]:
            if name not in pgm.PRESETS:
                return gr.skip(), gr.skip()
            p, q = pgm.PRESETS[name]
            return pgm.format_dist(p), pgm.format_dist(q)

        def draw(tokens: Any, seed: Any) -> tuple[Any, ...]:
            try:
                p, q = pgm.random_pair(_int(tokens, "tokens"), _int(seed, "seed"))
            except ConfigError as e:
                return gr.skip(), gr.skip(), render.render_error(str(e))
            return pgm.format_dist(p), pgm.format_dist(q), gr.skip()

        self.pg_case.input(case, self.pg_case, [self.pg_p, self.pg_q], **quick)
        self.pg_random.click(draw, [self.pg_tokens, self.pg_seed], [self.pg_p, self.pg_q, self.pg_summary], **quick)
        models = {
            "concurrency_limit": 1,
            "concurrency_id": MODEL_CONCURRENCY,
            "show_progress": "minimal",
        }
        batch_out = [self.batch_status, self.batch_fig, self.batch_table]
        self.batch_btn.click(
            self.on_batch,
            [*self.common, self.batch_ms],
            batch_out,
            api_name="lab_batch",
            show_progress_on=[self.batch_status],
            **models,
        )
        relax_out = [self.relax_status, self.relax_fig, self.relax_table]
        self.relax_btn.click(
            self.on_relax,
            [*self.common, self.relax_lams, self.relax_families],
            relax_out,
            api_name="lab_relax",
            show_progress_on=[self.relax_status],
            **models,
        )
        plan_out = [
            self.plan_status,
            self.cost_fig,
            self.plan_fig,
            self.plan_table,
            self.replay_fig,
            self.replay_table,
            self.plan_state,
        ]
        self.plan_btn.click(
            self.on_plan,
            [*self.common, self.plan_gammas, self.plan_repeats, self.plan_conf],
            plan_out,
            api_name="lab_planner",
            show_progress_on=[self.plan_status],
            **models,
        )
        self.replay_btn.click(
            self.on_replay,
            [self.replay_file, self.plan_repeats, self.plan_conf, self.plan_state],
            plan_out,
            api_name="lab_replay",
            show_progress_on=[self.plan_status],
            **models,
        )
        for btn in (self.batch_stop, self.relax_stop, self.plan_stop):
            btn.click(self.on_stop, None, None, queue=False, api_name=False)

    def on_stop(self, request: gr.Request) -> None:
        self.visitors.get(request.session_hash if request else None).stop.set()

    def _stop_flag(self, request: gr.Request | None) -> threading.Event:
        v = self.visitors.get(request.session_hash if request else None)
        v.stop.clear()
        return v.stop

    @staticmethod
    def _cfg(gamma: Any, max_new: Any, temperature: Any, seed: Any, rule: str = "sample") -> GenConfig:
        if temperature is None:
            raise ConfigError("temperature needs a value")
        return GenConfig(
            gamma=_int(gamma, "gamma"),
            rule=rule,
            temperature=float(temperature) if rule == "sample" else 1.0,
            max_new_tokens=_int(max_new, "max new tokens"),
            seed=_int(seed, "seed"),
        ).validated()

    # ------------------------------------------------------------ handlers: 1. batch

    def on_batch(self, prompt, gamma, max_new, temperature, seed, ms_text, request: gr.Request):
        n = 3
        yield from _guarded(
            self._batch(prompt, gamma, max_new, temperature, seed, ms_text, request=request),
            lambda h: [h] + [gr.skip()] * (n - 1),
        )

    @gpu_task
    def _batch(self, prompt, gamma, max_new, temperature, seed, ms_text, *, request):
        text = check_prompt(prompt)
        ms = _numbers(ms_text, "drafts per step M", int, 1, 8)
        cfg = self._cfg(gamma, max_new, temperature, seed)
        try:
            from specviz.lab.batch import batch_sweep
        except ImportError:
            raise ConfigError(
                "batch drafts are not available in this build (specviz/lab/batch.py is missing)"
            ) from None
        stop = self._stop_flag(request)

        def work(pair: Any, progress: Callable[..., None], should_stop: Callable[[], bool]) -> Any:
            progress(f"running M = {', '.join(map(str, ms))} on {pair.preset}", None)
            return batch_sweep(pair, pair.codec.encode(text), cfg, tuple(ms))

        for kind, val in on_pair(self.manager, stop, work):
            if kind == "status":
                yield [val, gr.skip(), gr.skip()]
                continue
            rows = list(val)
            cols = {
                "M": "M",
                "steps": "steps",
                "tokens_per_step": "tokens/step",
                "tries": "tries",
                "rejections": "rejected tries",
                "corrections": "rejections (all M rejected)",
                "corrections_per_token": "rejections per token",
                "tv_sum": "Σ TV of the tries",
                "wall_s": "wall s",
            }
            yield [
                render.render_status(f"done: {len(rows)} settings of M measured", "ok"),
                _plot(lab_charts.batch_chart(rows)),
                _table(rows, cols),
            ]

    # ------------------------------------------------------------ handlers: 2. relaxed

    def on_relax(self, prompt, gamma, max_new, temperature, seed, lams_text, families, request: gr.Request):
        yield from _guarded(
            self._relax(prompt, gamma, max_new, temperature, seed, lams_text, families, request=request),
            lambda h: [h, gr.skip(), gr.skip()],
        )

    @gpu_task
    def _relax(self, prompt, gamma, max_new, temperature, seed, lams_text, families, *, request):
        text = check_prompt(prompt)
        lams = _numbers(lams_text, "relax settings", float, 0, 1)
        fams = [f for f in FAMILIES if f in (families or [])]
        if not fams:
            raise ConfigError("pick at least one relax family")
        cfg = self._cfg(gamma, max_new, temperature, seed)
        stop = self._stop_flag(request)

        def work(pair: Any, progress: Callable[..., None], should_stop: Callable[[], bool]) -> Any:
            ids = pair.codec.encode(text)
            return relaxed_sweep(pair, ids, cfg, lams, fams, should_stop=should_stop, progress=progress)

        for kind, val in on_pair(self.manager, stop, work):
            if kind == "status":
                yield [val, gr.skip(), gr.skip()]
                continue
            cols = {
                "family": "family",
                "relax": "relax",
                "steps": "steps",
                "checked": "checked",
                "rejections": "rejections",
                "expected_rejections": "expected rejections",
                "tv_sum": "Σ TV",
                "drift_sum": "Σ drift",
                "rel_rejections": "rejections / Σ TV",
                "rel_drift": "drift / Σ TV",
                "tokens_per_step": "tokens/step",
            }
            note = "stopped: partial results" if stop.is_set() else f"done: {len(val)} settings measured"
            yield [
                render.render_status(note, "warn" if stop.is_set() else "ok"),
                _plot(lab_charts.tradeoff_chart(val)),
                _table(val, cols),
            ]

    # ------------------------------------------------------------ handlers: 3. planner and replay

    def on_plan(self, prompt, gamma, max_new, temperature, seed, gammas_text, repeats, conf, request: gr.Request):
        yield from _guarded(
            self._plan(prompt, gamma, max_new, temperature, seed, gammas_text, repeats, conf, request=request),
            lambda h: [h] + [gr.skip()] * 6,
        )

    @gpu_task
    def _plan(self, prompt, gamma, max_new, temperature, seed, gammas_text, repeats, conf, *, request):
        text = check_prompt(prompt)
        gammas = _numbers(gammas_text, "gammas to measure", int, 1, 15)  # costs are timed up to 16-token passes
        cfg = self._cfg(gamma, max_new, temperature, seed, rule="greedy")
        reps, confidence = _int(repeats, "timing rounds"), float(conf)
        stop = self._stop_flag(request)

        def work(pair: Any, progress: Callable[..., None], should_stop: Callable[[], bool]) -> dict[str, Any]:
            if pair.draft is None:
                raise ConfigError(f"preset {pair.preset!r} has no draft model: the planner needs one")
            ids = pair.codec.encode(text)
            costs = planner.measure_costs(pair, ids, range(1, 17), reps, should_stop, progress)
            measured, plain = planner.measure_speedups(pair, ids, cfg, gammas, "draft", should_stop, progress)
            progress("replaying the recorded run under other schedules", None)
            ag = replay.draft_agreement(pair.draft, ids, plain.output_ids, cfg.top_k, cfg.top_p)
            rows = replay.replay(ag, costs, cfg.gamma, cfg.max_new_tokens, confidence)
            return {"costs": costs.to_dict(), "measured": measured, "replay": rows, "preset": pair.preset}

        for kind, val in on_pair(self.manager, stop, work):
            if kind == "status":
                yield [val] + [gr.skip()] * 6
                continue
            yield self._draw_plan(val, stop.is_set())

    def _draw_plan(self, res: dict[str, Any], stopped: bool) -> list[Any]:
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
        cols = {
            "gamma": "gamma",
            "steps": "steps",
            "tokens_per_step": "tokens/step",
            "alpha": "alpha",
            "speedup": "measured speedup",
            "identical": "same as plain",
        }
        return [
            status,
            _plot(lab_charts.cost_chart(res["costs"])),
            _plot(lab_charts.planner_chart(curve, measured, alpha, c)),
            _table(measured, cols),
            _plot(lab_charts.replay_chart(res["replay"])),
            _table(res["replay"], REPLAY_COLUMNS),
            {"costs": res["costs"], "preset": res["preset"]},
        ]

    def on_replay(self, file, repeats, conf, state, request: gr.Request):
        yield from _guarded(self._replay(file, repeats, conf, state, request=request), lambda h: [h] + [gr.skip()] * 6)

    @gpu_task
    def _replay(self, file, repeats, conf, state, *, request):
        if not file:
            raise ConfigError("upload a trace first (Run tab: 'Download event trace (JSON)', with the greedy rule)")
        path = file if isinstance(file, str) else getattr(file, "name", str(file))
        summary, meta = read_trace(Path(path).read_text(encoding="utf-8", errors="replace"))
        reps, confidence = _int(repeats, "timing rounds"), float(conf)
        stop = self._stop_flag(request)
        config = meta.get("config") or {}

        def work(pair: Any, progress: Callable[..., None], should_stop: Callable[[], bool]) -> dict[str, Any]:
            if meta.get("preset") and meta["preset"] != pair.preset:
                raise ConfigError(
                    f"the trace was recorded with preset {meta['preset']!r} but {pair.preset!r} is loaded: "
                    "switch the preset on the Run tab first"
                )
            if pair.draft is None:
                raise ConfigError(f"preset {pair.preset!r} has no draft model to replay with")
            ids = pair.codec.encode(meta["prompt"])
            if state and state.get("preset") == pair.preset:
                costs = planner.Costs.from_dict(state["costs"])
            else:
                costs = planner.measure_costs(pair, ids, range(1, 17), reps, should_stop, progress)
            progress("replaying the uploaded trace", None)
            ag = replay.draft_agreement(
                pair.draft, ids, summary.output_ids, int(config.get("top_k", 0)), float(config.get("top_p", 1.0))
            )
            gamma = int(config.get("gamma", 4))
            budget = int(config.get("max_new_tokens", len(summary.output_ids)))
            return {
                "costs": costs.to_dict(),
                "rows": replay.replay(ag, costs, gamma, budget, confidence),
                "preset": pair.preset,
            }

        for kind, val in on_pair(self.manager, stop, work):
            if kind == "status":
                yield [val] + [gr.skip()] * 6
                continue
            yield [
                render.render_status(f"replayed the uploaded trace ({len(summary.output_ids)} tokens)", "ok"),
                _plot(lab_charts.cost_chart(val["costs"])),
                gr.skip(),
                gr.skip(),
                _plot(lab_charts.replay_chart(val["rows"])),
                _table(val["rows"], REPLAY_COLUMNS),
                {"costs": val["costs"], "preset": val["preset"]},
            ]


REPLAY_COLUMNS = {
    "label": "schedule",
    "steps": "target passes",
    "tokens_per_step": "tokens/pass",
    "drafted": "drafted",
    "wasted": "wasted drafts",
    "predicted_s": "predicted s",
    "predicted_speedup": "predicted speedup",
}


def read_trace(text: str) -> tuple[Any, dict[str, Any]]:
    """A finished greedy trace from the Run tab's download -> (summary, meta); ConfigError says what is missing."""
    try:
        _, summary, meta = trace_from_json(text)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"that file is not a specviz event trace ({type(e).__name__})") from None
    if summary is None or not summary.output_ids:
        raise ConfigError("the trace has no finished run (its summary is missing): download it after the run ends")
    if not meta.get("prompt"):
        raise ConfigError("the trace does not record its prompt, so the draft cannot be replayed on it")
    if (meta.get("config") or {}).get("rule", "greedy") != "greedy":
        raise ConfigError(
            "replay needs a greedy run: under sampling the accepted lengths depend on the random draws, not only on "
            "where the draft agrees"
        )
    return summary, meta


def render_playground(pg: pgm.Playground) -> str:
    """The playground's numbers: overlap, rejection, drift, sampling check, and a per-token table."""
    relaxed = pg.relax > 0
    head = (
        f'<p class="sv-lab-big" data-overlap="{sum(pg.overlap):.4f}">Overlap Σ min(p, q) = '
        f"<b>{sum(pg.overlap):.3f}</b> = 1 − TV(p, q). Without relaxing, a drafted token is kept with probability "
        f"{1 - pg.tv:.3f} and rejected with probability TV = {pg.tv:.3f}: one position of Yin et al.'s "
        "expected rejections = Σ TV.</p>"
    )
    if relaxed:
        head += (
            f"<p>Relaxed ({html.escape(pg.family)}, λ = {pg.relax:g}): P(reject) = <b>{pg.rejection:.3f}</b>, "
            f"drift TV(output, p) = <b>{pg.drift:.3f}</b>; sum {pg.rejection + pg.drift:.3f} vs TV {pg.tv:.3f} "
            f"({'on' if abs(pg.rejection + pg.drift - pg.tv) < 1e-9 else 'above'} the optimal line).</p>"
        )
    target = "the rule's exact output" if relaxed else "p"
    ref = pg.output if relaxed else pg.p
    tv_ref = 0.5 * sum(abs(c / pg.n - r) for c, r in zip(pg.counts, ref))
    head += (
        f'<p data-sample-tv="{pg.sample_tv:.4f}">{pg.n} simulated draws: {pg.accepted_draws} drafts kept; '
        f"TV(histogram, {target}) = {tv_ref:.4f}, about the sampling noise √(V / 2πN) ≈ {pg.noise:.4f}.</p>"
    )
    rows = "".join(
        f"<tr><th>{lab}</th><td>{p:.3f}</td><td>{q:.3f}</td><td>{o:.3f}</td>"
        f"<td>{'never drafted' if a is None else f'{a:.3f}'}</td><td>{r:.3f}</td><td>{c}</td></tr>"
        for lab, p, q, o, a, r, c in zip(pg.labels, pg.p, pg.q, pg.overlap, pg.accept, pg.residual, pg.counts)
    )
    fix = "correction" if relaxed else "residual"
    table = (
        "<table class='sv-lab-table'><thead><tr><th>token</th><th>p</th><th>q</th><th>min(p, q)</th>"
        f"<th>kept if drafted</th><th>{fix}</th><th>draws</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return f'<div class="sv-lab-summary">{head}{table}</div>'
