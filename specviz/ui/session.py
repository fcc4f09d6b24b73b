"""Runs for the page: a visitor's RunRequest (validated controls), the RunState snapshots the page draws, and
stream_run(), which runs strategies and the plain baseline in a Worker thread and yields throttled snapshots. No gradio
here.

Test hook: SPECVIZ_TEST_STEP_DELAY (seconds, default 0) sleeps that long after every verification step of a run, so a
browser test can make a 2,000-token run last long enough to press Stop in it on any machine; nothing else sets it."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from specviz.backends.loading import ModelPair
from specviz.core.config import ConfigError, GenConfig, check_prompt, whole
from specviz.core.engine import run
from specviz.core.events import RunSummary, StepEvent
from specviz.core.metrics import with_plain
from specviz.proposers import STRATEGIES, build_proposer
from specviz.ui.models import ModelManager, friendly
from specviz.ui.worker import Message, Worker, budget_message

log = logging.getLogger("specviz.ui")


def step_delay() -> float:
    """The test hook's pause after each step (SPECVIZ_TEST_STEP_DELAY, seconds; 0 when unset or not a number)."""
    try:
        return max(0.0, min(1.0, float(os.environ.get("SPECVIZ_TEST_STEP_DELAY") or 0)))
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class RunRequest:
    """What a visitor asked for."""

    prompt: str
    preset: str
    strategy: str
    cfg: GenConfig

    def key(self) -> tuple:
        return (self.prompt, self.preset, self.strategy, tuple(sorted(self.cfg.to_dict().items(), key=str)))


def make_request(
    prompt: str | None,
    preset: str,
    strategy: str,
    gamma: Any,
    rule: str,
    temperature: Any,
    top_p: Any,
    top_k: Any,
    max_new_tokens: Any,
    seed: Any,
) -> RunRequest:
    """Validate the controls; ConfigError names the first bad one. Number fields go through `whole` (the page's
    numbers arrive as floats)."""
    text = check_prompt(prompt)
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if temperature is None or top_p is None:
        raise ConfigError("temperature and top-p need a value")
    cfg = GenConfig(
        gamma=whole("gamma", gamma),
        rule=rule,
        temperature=float(temperature),
        top_k=whole("top-k", top_k),
        top_p=float(top_p),
        max_new_tokens=whole("max new tokens", max_new_tokens),
        seed=whole("seed", seed),
    ).validated()
    return RunRequest(text, preset, strategy, cfg)


@dataclass
class Track:
    """One run inside a job: a strategy's run or the plain baseline."""

    label: str
    strategy: str  # "plain" for the baseline
    steps: list[StepEvent] = field(default_factory=list)
    summary: RunSummary | None = None
    stopped: bool = False


@dataclass
class RunState:
    """A snapshot for the page. phase: loading | running | done | stopped | error."""

    phase: str
    message: str
    request: RunRequest | None = None
    tracks: list[Track] = field(default_factory=list)
    fraction: float | None = None
    prompt_shown: str = ""  # the prompt as shown before the output ("" for chat models, whose template is applied)
    chat: bool = False
    details: dict[int, dict[str, Any]] = field(default_factory=dict)
    current: int | None = None  # step mode: the step just taken
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> Track | None:
        return self.tracks[0] if self.tracks else None

    @property
    def baseline(self) -> Track | None:
        return self.tracks[-1] if len(self.tracks) > 1 and self.tracks[-1].strategy == "plain" else None


# ---------------------------------------------------------------- running (a Worker thread, throttled snapshots)


def _plan_job(req: RunRequest, plan: Sequence[str]) -> Callable[[ModelPair, Worker], None]:
    """The Worker's job for `plan`: each strategy in turn (the last may be the plain baseline) on the same prompt,
    every step event and summary reported with its run's index."""

    delay = step_delay()

    def job(pair: ModelPair, w: Worker) -> None:
        ids = pair.codec.encode(req.prompt)
        for i, name in enumerate(plan):
            if w.should_stop():
                break
            r = run(
                pair.target,
                build_proposer(name, pair, req.cfg),
                ids,
                req.cfg,
                eos_ids=pair.codec.eos_ids,
                piece=pair.codec.piece,
                should_stop=w.should_stop,
            )
            for ev in r:
                w.event(i, ev)
                if delay:
                    time.sleep(delay)
            assert r.summary is not None
            r.summary.text = pair.codec.decode(r.summary.output_ids)
            w.summary(i, r.summary)

    return job


def _finish(state: RunState) -> None:
    """Attach speedups against the baseline; note whether greedy output matched plain token for token."""
    base = state.baseline
    if base is None or base.summary is None or base.stopped:
        return
    for t in state.tracks:
        if t.summary is not None and not t.stopped:
            with_plain(t.summary, base.summary)
            t.summary.plain_tokens_per_s = base.summary.tokens_per_s
    spec = state.spec
    if spec and spec.summary and state.request and state.request.cfg.rule == "greedy":
        state.meta["same_as_plain"] = spec.summary.output_ids == base.summary.output_ids


def stream_run(
    manager: ModelManager,
    req: RunRequest,
    stop: threading.Event,
    plan: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    min_interval: float = 0.1,
) -> Iterator[RunState]:
    """Wait for the models (yielding progress), then run `plan` (default: the request's strategy, then the plain
    baseline) and yield snapshots: at most one per `min_interval` seconds, slower when the consumer needs longer to
    draw, and always the final state. The engine runs in a Worker thread, so drawing is not inside its timings (it only
    competes for the CPU). Every snapshot is the same RunState, updated in place: draw it before asking for the next."""
    manager.check(req.preset)  # a preset the operator does not offer: one clear message, nothing loads or changes
    plan = list(plan) if plan is not None else [req.strategy, "plain"]
    labels = list(labels) if labels is not None else [req.strategy] * (len(plan) - 1) + ["plain"]
    state = RunState("loading", "", req, [Track(lab, name) for lab, name in zip(labels, plan)])
    for st in manager.wait(req.preset):
        if st.state == "error":
            state.phase, state.message = "error", st.message
            yield state
            return
        if st.state != "ready":
            state.message = f"waiting for the models ({st.preset}): {st.message}"
            state.fraction = st.fraction
            yield state
    state.fraction = None
    worker = Worker(manager, _plan_job(req, plan), stop, name="specviz-run", preset=req.preset).start()
    state.phase, state.message = "running", f"running {plan[0]}"
    interval, last, ended = min_interval, 0.0, False
    try:
        while not ended:
            msgs = worker.drain(max(0.01, interval - (time.perf_counter() - last)))
            ended = any([_apply(state, m, stop) for m in msgs])
            if ended or time.perf_counter() - last >= interval:
                if ended and state.phase != "error":
                    _finish(state)
                    stopped = stop.is_set() or any(t.stopped for t in state.tracks)
                    state.phase = "stopped" if stopped else "done"
                    state.message = done_message(state)
                    if worker.over_budget:
                        state.meta["over_budget"] = True
                        state.message = f"{state.message.split(';')[0]}: {budget_message(manager.job_seconds)}"
                t0 = time.perf_counter()
                yield state
                last = time.perf_counter()
                interval = max(min_interval, 1.5 * (last - t0))  # the consumer's drawing time sets the pace
    finally:
        if not ended:  # the consumer went away (closed tab, cancelled event): stop the engine at its next step
            stop.set()


def _apply(state: RunState, m: Message, stop: threading.Event) -> bool:
    """Fold one worker message into the snapshot; True for the last one."""
    if m.kind == "event":
        track, ev = state.tracks[m.run], m.value
        track.steps.append(ev)
        state.message = f"running {track.label}: step {ev.step + 1}, {ev.total_tokens} tokens"
    elif m.kind == "summary":
        track = state.tracks[m.run]
        track.summary, track.stopped = m.value, m.value.stop_reason == "stopped"
        if m.run + 1 < len(state.tracks) and not stop.is_set():
            nxt = state.tracks[m.run + 1]
            state.message = "measuring the plain baseline" if nxt.strategy == "plain" else f"running {nxt.label}"
    elif m.kind == "started":  # chat models apply a template, so the prompt is shown only when it is fed as typed
        state.chat = bool(m.value.codec.chat)
        state.prompt_shown = "" if state.chat or state.request is None else state.request.prompt
    elif m.kind == "error":
        if not isinstance(m.value, ConfigError):
            log.error("run failed", exc_info=m.value)
        state.phase, state.message = "error", friendly(m.value)
    return m.last


def done_message(state: RunState) -> str:
    """The status line of a run that is over (done or stopped): tokens, speedup, whether greedy output matched plain."""
    spec = state.spec.summary if state.spec else None
    if state.phase == "stopped":
        n = spec.new_tokens if spec else 0
        if spec is not None and spec.stop_reason != "stopped":
            return f"stopped while measuring the plain baseline (the run itself finished: {n} tokens); no speedup"
        return f"stopped after {n} tokens; press Run to start again"
    if spec is None:
        return "finished"
    msg = f"done: {spec.new_tokens} tokens in {spec.steps} steps"
    if spec.speedup is not None:
        msg += f", {spec.speedup:.2f}x vs plain"
    same = state.meta.get("same_as_plain")
    if same is not None:
        msg += "; greedy output identical to plain decoding" if same else "; WARNING: greedy output differs from plain"
    elif state.request and state.request.cfg.rule == "sample":
        msg += "; sampled: same distribution as plain, different draws"
    return msg
