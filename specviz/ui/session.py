"""Runs the engine for the UI: ModelManager loads a preset in the background (progress, friendly errors, swapping
frees the old pair), stream_run() runs strategies and the plain baseline in a worker thread and yields throttled
snapshots, StepSession advances one verification step per call (classroom mode). No gradio here."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from specviz.backends.loading import ModelPair, load_pair
from specviz.core.config import ConfigError, GenConfig, check_prompt
from specviz.core.engine import SpecRun, run
from specviz.core.events import RunSummary, StepEvent
from specviz.core.metrics import with_plain
from specviz.core.presets import model_presets
from specviz.proposers import STRATEGIES, build_proposer

log = logging.getLogger("specviz.ui")
Loader = Callable[..., ModelPair]
DETAIL_TOP = 10  # tokens shown in the step-mode p/q chart

try:  # Hugging Face ZeroGPU: GPU work must run inside spaces.GPU; elsewhere the decorator is a no-op
    import spaces  # type: ignore[import-not-found]

    gpu_task: Callable[[Callable], Callable] = spaces.GPU(duration=120)
except Exception:  # noqa: BLE001 - any import problem means: not on a Space with ZeroGPU

    def gpu_task(fn: Callable) -> Callable:
        return fn


def friendly(e: BaseException) -> str:
    """A one-line message for the page; ConfigError messages are already written for users."""
    if isinstance(e, ConfigError):
        return str(e)
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return (
        f"something went wrong ({type(e).__name__}: {first}). The app is still running: change a setting and try again."
    )


# ---------------------------------------------------------------- model loading


@dataclass(frozen=True)
class LoadState:
    """Where the shared model pair stands: state is idle | loading | ready | error."""

    state: str
    preset: str
    fraction: float = 0.0
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class ModelManager:
    """One loaded model pair shared by all visitors. `lock` is held while a generation uses the models, so a preset
    swap waits for it; loading happens in a background thread with progress."""

    def __init__(self, preset: str, loader: Loader = load_pair, warmup: bool = True) -> None:
        self.loader = loader
        self.warmup = warmup
        self.lock = threading.Lock()
        self.pair: ModelPair | None = None
        self.owner: object | None = None  # the last run that used the KV caches (step sessions replay if not them)
        self._cond = threading.Condition()
        self._gen = 0
        self._state = LoadState("idle", preset)

    @property
    def preset(self) -> str:
        return self._state.preset

    def status(self) -> LoadState:
        with self._cond:
            return self._state

    def _set(self, gen: int, **kw: Any) -> None:
        with self._cond:
            if gen == self._gen:
                self._state = LoadState(**{**self._state.__dict__, **kw})
                self._cond.notify_all()

    def request(self, preset: str) -> LoadState:
        """Make `preset` the loaded pair (no-op when it is loaded or loading); returns the state."""
        with self._cond:
            st = self._state
            if st.preset == preset and st.state in ("loading", "ready"):
                return st
            if preset not in model_presets():
                raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(model_presets())}")
            self._gen += 1
            gen = self._gen
            self._state = LoadState("loading", preset, 0.0, "waiting for the current run to finish")
        threading.Thread(target=self._load, args=(preset, gen), name=f"load-{preset}", daemon=True).start()
        return self.status()

    def _load(self, preset: str, gen: int) -> None:
        with self.lock:  # a running generation finishes before its models go
            old, self.pair, self.owner = self.pair, None, None
        if old is not None:
            old.close()
        self._set(gen, fraction=0.0, message="loading")
        try:
            pair = self.loader(preset, progress=lambda f, m: self._set(gen, fraction=min(f, 0.99), message=m))
            if self.warmup:
                self._set(gen, fraction=0.99, message="warming up")
                _warm(pair)
        except Exception as e:  # noqa: BLE001 - a failed load is shown on the page; the app keeps running
            log.exception("loading preset %s failed", preset)
            self._set(gen, state="error", message=f"could not load preset {preset!r}: {friendly(e)}")
            return
        with self._cond:
            if gen != self._gen:  # superseded by a newer request while loading
                pair.close()
                return
            self.pair = pair
            self._state = LoadState("ready", preset, 1.0, "ready", dict(pair.info))
            self._cond.notify_all()

    def wait(self, preset: str, poll: float = 0.25) -> Iterator[LoadState]:
        """Request `preset` and yield its state every `poll` seconds until it is ready or failed (then yield it last)."""
        st = self.request(preset)
        while st.state not in ("ready", "error") or st.preset != preset:
            yield st
            with self._cond:
                self._cond.wait(poll)
                st = self._state
            if st.preset != preset:  # someone asked for another preset meanwhile: ask again
                st = self.request(preset)
        yield st

    def close(self) -> None:
        with self.lock:
            if self.pair is not None:
                self.pair.close()
            self.pair = None


def _warm(pair: ModelPair) -> None:
    """A few tokens through each model, so the first visitor's timings do not include one-off start-up costs."""
    cfg = GenConfig(gamma=2, max_new_tokens=4)
    ids = pair.codec.encode("Hello")
    for name in ("plain", "draft") if pair.draft is not None else ("plain",):
        run(pair.target, build_proposer(name, pair, cfg), ids, cfg, eos_ids=(), instrument=False).run()


# ---------------------------------------------------------------- requests and snapshots


def _int(name: str, v: Any) -> Any:
    """Gradio numbers arrive as floats; whole ones become ints, anything else is left for validation to name."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if v is None:
        raise ConfigError(f"{name} is empty: enter a number")
    return v


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
    """Validate the controls; ConfigError names the first bad one."""
    text = check_prompt(prompt)
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if temperature is None or top_p is None:
        raise ConfigError("temperature and top-p need a value")
    cfg = GenConfig(
        gamma=_int("gamma", gamma),
        rule=rule,
        temperature=float(temperature),
        top_k=_int("top-k", top_k),
        top_p=float(top_p),
        max_new_tokens=_int("max new tokens", max_new_tokens),
        seed=_int("seed", seed),
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


# ---------------------------------------------------------------- running (worker thread + throttled snapshots)


class _Job:
    """Runs `plan` (strategy names; the last may be the plain baseline) on the shared pair in a worker thread, one
    after another, posting ("step", i, event), ("done", i, summary), ("error", msg) and ("end",) to a queue."""

    def __init__(self, manager: ModelManager, req: RunRequest, plan: Sequence[str], stop: threading.Event) -> None:
        self.manager, self.req, self.plan, self.stop = manager, req, list(plan), stop
        self.q: queue.Queue = queue.Queue()
        self.chat = False
        self.thread = threading.Thread(target=self._work, name="specviz-run", daemon=True)

    def _work(self) -> None:
        try:
            with self.manager.lock:
                pair = self.manager.pair
                if pair is None:
                    raise ConfigError("the models are not loaded (a preset switch may be under way): try again")
                self.manager.owner = self
                ids = pair.codec.encode(self.req.prompt)
                self.q.put(("prompt", not pair.codec.chat))
                for i, name in enumerate(self.plan):
                    if self.stop.is_set():
                        break
                    proposer = build_proposer(name, pair, self.req.cfg)
                    r = run(
                        pair.target,
                        proposer,
                        ids,
                        self.req.cfg,
                        eos_ids=pair.codec.eos_ids,
                        piece=pair.codec.piece,
                        should_stop=self.stop.is_set,
                    )
                    for ev in r:
                        self.q.put(("step", i, ev))
                    assert r.summary is not None
                    r.summary.text = pair.codec.decode(r.summary.output_ids)
                    self.q.put(("done", i, r.summary))
        except Exception as e:  # noqa: BLE001 - shown in the page, never a traceback
            if not isinstance(e, ConfigError):
                log.exception("run failed")
            self.q.put(("error", friendly(e)))
        finally:
            self.q.put(("end",))


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
    draw, and always the final state. The engine runs in its own thread, so drawing is not inside its timings (it only competes for the CPU).
    Every snapshot is the same RunState, updated in place: draw it before asking for the next."""
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
    job = _Job(manager, req, plan, stop)
    job.thread.start()
    state.phase, state.message = "running", f"running {plan[0]}"
    interval, last, ended = min_interval, 0.0, False
    try:
        while not ended:
            msgs = _drain(job.q, max(0.01, interval - (time.perf_counter() - last)))
            ended = any([_apply(state, m, stop) for m in msgs])
            if ended or time.perf_counter() - last >= interval:
                if ended and state.phase != "error":
                    _finish(state)
                    stopped = stop.is_set() or any(t.stopped for t in state.tracks)
                    state.phase = "stopped" if stopped else "done"
                    state.message = _done_message(state)
                t0 = time.perf_counter()
                yield state
                last = time.perf_counter()
                interval = max(min_interval, 1.5 * (last - t0))  # the consumer's drawing time sets the pace
    finally:
        if not ended:  # the consumer went away (closed tab, cancelled event): stop the engine at its next step
            stop.set()


def _drain(q: queue.Queue, timeout: float) -> list[tuple]:
    """Everything waiting in the queue, waiting up to `timeout` for the first item."""
    try:
        msgs = [q.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            msgs.append(q.get_nowait())
        except queue.Empty:
            return msgs


def _apply(state: RunState, m: tuple, stop: threading.Event) -> bool:
    """Fold one worker message into the snapshot; True for the last one."""
    kind = m[0]
    if kind == "step":
        track, ev = state.tracks[m[1]], m[2]
        track.steps.append(ev)
        state.message = f"running {track.label}: step {ev.step + 1}, {ev.total_tokens} tokens"
    elif kind == "done":
        track = state.tracks[m[1]]
        track.summary, track.stopped = m[2], m[2].stop_reason == "stopped"
        if m[1] + 1 < len(state.tracks) and not stop.is_set():
            nxt = state.tracks[m[1] + 1]
            state.message = "measuring the plain baseline" if nxt.strategy == "plain" else f"running {nxt.label}"
    elif kind == "prompt":  # m[1]: whether the prompt is shown as typed (no chat template)
        state.prompt_shown = state.request.prompt if m[1] and state.request else ""
        state.chat = not m[1]
    elif kind == "error":
        state.phase, state.message = "error", m[1]
    return kind == "end"


def _done_message(state: RunState) -> str:
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


# ---------------------------------------------------------------- step mode


class StepSession:
    """A visitor's generation in step mode: advance() runs exactly one more verification step. The shared models'
    KV caches may have been used by someone else in between; then the run is replayed (same seed, same events) up to
    where it was before going on."""

    def __init__(self, manager: ModelManager, req: RunRequest) -> None:
        self.manager, self.req = manager, req
        self.steps: list[StepEvent] = []
        self.details: dict[int, dict[str, Any]] = {}
        self.finished = False
        self.summary: RunSummary | None = None
        self.chat = False
        self._it: Iterator[StepEvent] | None = None
        self._run: SpecRun | None = None

    def _start(self, pair: ModelPair) -> None:
        cfg = self.req.cfg
        proposer = build_proposer(self.req.strategy, pair, cfg)
        ids = pair.codec.encode(self.req.prompt)
        self.chat = pair.codec.chat
        self._run = run(
            pair.target, proposer, ids, cfg, eos_ids=pair.codec.eos_ids, piece=pair.codec.piece, detail_top=DETAIL_TOP
        )
        self._it = iter(self._run)
        for old in self.steps:  # replay to where we were; seeded, so the events repeat
            ev = next(self._it)
            if [t.id for t in ev.tokens] != [t.id for t in old.tokens]:
                raise ConfigError("the replayed run diverged from the one shown: press Step to start over")
        self.manager.owner = self

    def advance(self) -> StepEvent | None:
        """One more verification step (None when the run is over)."""
        if self.finished:
            return None
        with self.manager.lock:
            pair = self.manager.pair
            if pair is None or pair.preset != self.req.preset:
                raise ConfigError("the models changed since this step-by-step run began: press Step to start over")
            if self._it is None or self.manager.owner is not self:
                self._start(pair)
            assert self._it is not None
            try:
                ev = next(self._it)
            except StopIteration:
                ev = None
            if ev is not None:
                detail = getattr(ev, "detail", None)  # the engine's top-N p, q and residual where the target spoke
                if detail is not None:
                    self.details[ev.step] = detail
                self.steps.append(ev)
            if ev is None or ev.finished:
                for _ in self._it:  # let the engine build its summary
                    pass
                self.finished = True
                assert self._run is not None
                self.summary = self._run.summary
                if self.summary is not None:
                    self.summary.text = pair.codec.decode(self.summary.output_ids)
            return ev

    def state(self) -> RunState:
        tr = Track(self.req.strategy, self.req.strategy, list(self.steps), self.summary)
        last = self.steps[-1] if self.steps else None
        if self.finished:
            msg = f"step mode finished: {last.total_tokens if last else 0} tokens in {len(self.steps)} steps"
        else:
            msg = f"step mode: step {len(self.steps)} shown; press Step for the next"
        return RunState(
            "done" if self.finished else "step",
            msg,
            self.req,
            [tr],
            prompt_shown="" if self.chat else self.req.prompt,
            chat=self.chat,
            details=dict(self.details),
            current=last.step if last else None,
        )


# ---------------------------------------------------------------- visitors


@dataclass
class Visitor:
    """Per-visitor server state: the Stop flag and a step-mode session."""

    stop: threading.Event = field(default_factory=threading.Event)
    step: StepSession | None = None


class Visitors:
    """Visitor state by Gradio session id, oldest dropped beyond `capacity`."""

    def __init__(self, capacity: int = 500) -> None:
        self._d: OrderedDict[str, Visitor] = OrderedDict()
        self._lock = threading.Lock()
        self.capacity = capacity

    def get(self, sid: str | None) -> Visitor:
        sid = sid or "anonymous"
        with self._lock:
            v = self._d.pop(sid, None) or Visitor()
            self._d[sid] = v
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)
            return v

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._d.pop(sid or "anonymous", None)
