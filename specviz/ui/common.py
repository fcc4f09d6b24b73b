"""What every tab shares: the model queue id, figures as Plot values, example prompts, lab captions, an output
registry, the error guard around handlers and the wait-then-run helper that puts a handler's work on the shared pair
in a Worker."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

import gradio as gr
from gradio.blocks import Block
from gradio.components.plot import PlotData

from specviz.backends.loading import ModelPair
from specviz.core.config import ConfigError
from specviz.core.presets import prompt_suites
from specviz.ui import render
from specviz.ui.figures import Figure
from specviz.ui.lab import CAPTIONS
from specviz.ui.models import ModelManager, friendly
from specviz.ui.session import RunState
from specviz.ui.visitors import Visitors
from specviz.ui.worker import Worker, budget_message

log = logging.getLogger("specviz.ui")
MODEL_CONCURRENCY = "models"  # every event that uses the shared models queues under this id, one at a time
Update = dict[Block, Any]  # what a handler returns or yields: new values by component; the rest stay as they are
B = TypeVar("B", bound=Block)
T = TypeVar("T")


def plot(fig: Figure) -> PlotData:
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


def example_picker(prompt: gr.Textbox, elem_id: str | None = None) -> gr.Dropdown:
    """A dropdown of the example prompts that fills `prompt` when one is picked."""
    examples = dict(example_prompts())
    picker = gr.Dropdown(choices=list(examples), value=None, label="Example prompts", elem_id=elem_id)
    picker.change(
        lambda label: examples.get(label, gr.skip()) if label else gr.skip(),
        picker,
        prompt,
        queue=False,
        api_name=False,
        show_progress="hidden",
    )
    return picker


def caption(key: str) -> gr.Markdown:
    """The sentence under a Theory lab chart that names the result it checks (lab.CAPTIONS)."""
    return gr.Markdown(CAPTIONS[key], elem_classes=["sv-lab-caption"], elem_id=f"lab-cap-{key.replace('_', '-')}")


class Outputs:
    """The components a tab's handlers may update: `out(component)` registers one and returns it, `out.all` is the
    outputs list to wire (handlers return dicts, so its order does not matter)."""

    def __init__(self) -> None:
        self.all: list[Block] = []

    def __call__(self, component: B) -> B:
        self.all.append(component)
        return component


def on_models(status: Block) -> dict[str, Any]:
    """Event options for a handler that uses the shared models: one at a time across all tabs, progress on `status`."""
    return {
        "concurrency_limit": 1,
        "concurrency_id": MODEL_CONCURRENCY,
        "show_progress": "minimal",
        "show_progress_on": [status],
    }


def stopper(visitors: Visitors) -> Callable[[gr.Request], None]:
    """A Stop button's handler: it sets the visitor's Stop flag, which the running job checks before every step."""

    def stop(request: gr.Request) -> None:
        visitors.of(request).stop.set()

    return stop


def status_for(state: RunState) -> str:
    """A run snapshot's status line."""
    kind = {"error": "error", "done": "ok", "stopped": "warn", "loading": "busy", "running": "busy", "step": "info"}
    return render.render_status(state.message, kind.get(state.phase, "info"), state.fraction)


def guarded(gen: Iterator[Update], status: Block) -> Iterator[Update]:
    """Run a handler's generator; any exception becomes a friendly message in `status` (never a traceback), and
    everything else the visitor has stays."""
    try:
        yield from gen
    except ConfigError as e:
        yield {status: render.render_error(str(e))}
    except Exception as e:  # noqa: BLE001 - the app must never die on a visitor's input
        log.exception("handler failed")
        yield {status: render.render_error(friendly(e))}


def run_on_pair(
    manager: ModelManager,
    stop: threading.Event,
    status: Block,
    work: Callable[[ModelPair, Worker], T],
    preset: str | None = None,
) -> Generator[Update, None, T]:
    """Wait for `preset`'s models (default: the manager's default preset), then run work(pair, worker) in a Worker as
    a generation runs (the models' lock held, within the job budget), yielding `status` updates for the wait and the
    work's progress; returns what the work returned. Use it as `result = yield from run_on_pair(...)`; a consumer that
    goes away stops the work at its next check. A job stopped by its budget is a ConfigError saying so."""
    preset = manager.check(preset or manager.preset)
    for st in manager.wait(preset):
        if st.state == "error":
            raise ConfigError(st.message)
        if st.state != "ready":
            yield {status: render.render_status(f"waiting for the models: {st.message}", "busy", st.fraction)}
    worker = Worker(manager, work, stop, name="specviz-lab", preset=preset).start()
    for m in worker.messages(waiting=1.0):
        if m.kind == "waiting":  # a job outside the models' queue (a trace replay) waits for the lock here
            yield {status: render.render_status("waiting for another visitor's job to finish", "busy")}
        elif m.kind == "progress":
            yield {status: render.render_status(m.value, "busy", m.fraction)}
        elif m.kind == "error":
            if worker.over_budget:
                raise ConfigError(f"stopped: {budget_message(manager.job_seconds)}")
            if isinstance(m.value, InterruptedError):  # the lab's measurements raise it when Stop is pressed
                raise ConfigError("stopped: press the button to measure again")
            raise m.value
        elif m.kind == "result":
            if worker.over_budget:  # partial results are not shown as if they were whole
                raise ConfigError(f"stopped: {budget_message(manager.job_seconds)}")
            return m.value
    raise AssertionError("the worker ended without a result")  # messages() always ends with a result or an error
