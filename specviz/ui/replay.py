"""Replays of recorded runs for the Run tab: a checked trace turned back into the RunState snapshots its live run drew
(so the live drawing code draws them, identically), the schedule of when each step shows at a chosen speed, a
visitor's player (position, speed, play and pause) and the gallery of recorded runs in presets/traces. No gradio, no
model: a replay never waits for the models or their queue."""

from __future__ import annotations

import bisect
import json
import math
import os
import re
import threading
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from specviz.core.config import MAX_NEW_TOKENS, ConfigError
from specviz.core.events import DRAFT_ORIGINS, EMITTED_ORIGINS, RunSummary, StepEvent, TokenEvent, TreeNode
from specviz.core.presets import TRACES_DIR, model_presets, prompt_suites
from specviz.core.trace import Trace, read_trace, read_trace_file
from specviz.ui.session import RunRequest, RunState, Track, done_message

GALLERY_DIR = Path(os.environ.get("SPECVIZ_GALLERY") or TRACES_DIR)  # an operator may point at a gallery of their own
GALLERY_INDEX = "index.json"
DEFAULT_ENTRY = ("code", "draft", "greedy")  # what the page opens on
SPEEDS: dict[str, float] = {"0.5x": 0.5, "1x": 1.0, "2x": 2.0, "4x": 4.0, "instant": math.inf}
MAX_GAP_S = 10.0  # the longest wait between two steps at 1x: a hostile trace's huge elapsed_ms cannot stall a replay
MAX_TEXT = 1000  # characters of one token's text
MAX_DETAIL = 64  # tokens of one step-mode detail
ORIGINS = frozenset(("prompt", *DRAFT_ORIGINS, *EMITTED_ORIGINS))
NAME = re.compile(r"[\w.+-]{1,64}")  # a strategy or preset name as a trace may carry it


@dataclass(frozen=True)
class Recording:
    """A recorded run ready to replay: the speculative run's steps and summary, its plain baseline (None: the trace
    has none), what it was run with, and `times`, the second (at 1x) at which each event shows: the speculative
    steps, then the baseline's. The prompt's prefill is not waited out; every later wait is the recorded one (at most
    MAX_GAP_S)."""

    title: str
    request: RunRequest
    steps: list[StepEvent]
    summary: RunSummary
    plain_steps: list[StepEvent] | None
    plain_summary: RunSummary | None
    prompt_shown: str
    chat: bool
    details: dict[int, dict[str, Any]]
    meta: dict[str, Any]
    times: list[float]

    @property
    def n(self) -> int:
        """Speculative steps (the scrubber's range)."""
        return len(self.steps)

    @property
    def events(self) -> int:
        """Everything a replay shows, one event each: the speculative steps, then the baseline's."""
        return len(self.times)

    def position_at(self, t: float) -> int:
        """Events shown `t` seconds (at 1x) into the replay."""
        return bisect.bisect_right(self.times, t)

    def time_of(self, shown: int) -> float:
        """The second (at 1x) at which the `shown`-th event showed (0 for none)."""
        return self.times[shown - 1] if shown > 0 else 0.0

    def state(self, shown: int) -> RunState:
        """The live run's snapshot once `shown` events had come in (clamped to 0..events): the same tracks, summaries,
        prompt and phase as stream_run's RunState had then, so the Run tab's drawing code draws the same page."""
        shown = max(0, min(shown, self.events))
        n, nb = min(shown, self.n), max(0, shown - self.n)
        req = self.request
        base = self.plain_steps
        over = n == self.n and (base is None or nb == len(base))
        # the summary comes with the run's last step; the speedup only once the baseline is measured (_finish)
        summary = self.summary if over else None
        if n == self.n and not over:
            summary = replace(self.summary, speedup=None, plain_tokens_per_s=None)
        tracks = [_track(req.strategy, req.strategy, self.steps[:n], summary)]
        if base is not None:
            done = nb == len(base) and self.plain_summary is not None
            tracks.append(_track("plain", "plain", base[:nb], self.plain_summary if done else None))
        state = RunState("running", "", req, tracks, prompt_shown=self.prompt_shown, chat=self.chat)
        state.details = {k: v for k, v in self.details.items() if k < n}
        state.meta["replay"] = True  # the Run tab then offers no downloads and draws real timings in step view
        if not over:
            last = self.steps[n - 1] if n else None
            state.message = (
                "measuring the plain baseline"
                if summary
                else f"running {req.strategy}: step {n}, {last.total_tokens if last else 0} tokens"
            )
            return state
        b = state.baseline
        if req.cfg.rule == "greedy" and b is not None and b.summary is not None and not b.stopped:
            state.meta["same_as_plain"] = self.summary.output_ids == b.summary.output_ids
        state.phase = "stopped" if any(t.stopped for t in tracks) else "done"
        state.message = done_message(state)
        return state


def _track(label: str, strategy: str, steps: list[StepEvent], summary: RunSummary | None) -> Track:
    return Track(
        label, strategy, list(steps), summary, stopped=summary is not None and summary.stop_reason == "stopped"
    )


# ---------------------------------------------------------------- from a trace


def load_recording(source: str | Path | bytes, title: str | None = None) -> Recording:
    """A replayable Recording from a trace file's path (JSON, or gzip-compressed JSON) or its bytes; anything wrong is
    one ConfigError naming it."""
    trace = read_trace(source) if isinstance(source, bytes) else read_trace_file(source)
    return recording(trace, title)


def recording(trace: Trace, title: str | None = None) -> Recording:
    """A Recording from a trace read_trace accepted, after checking what read_trace does not need but a replay draws:
    every step's numbers and tokens, the baseline, the step-mode details."""
    meta = trace.meta
    if not trace.steps:
        raise ConfigError("the trace has no steps to replay")
    check_steps(trace.steps, "the trace's")
    check_record(trace.summary, "the trace's summary")
    strategy = _name(meta.get("strategy", trace.summary.strategy), "strategy")
    preset = _name(meta.get("preset") or "unknown", "preset")
    plain_steps, plain_summary = _baseline(meta)
    chat = meta.get("chat")
    if chat is None:  # an older download: the preset says whether the prompt went through a chat template
        chat = bool(model_presets().get(preset, {}).get("chat", False))
    elif not isinstance(chat, bool):
        raise ConfigError("the trace's chat flag must be true or false")
    details = _details(meta.get("details"), trace.steps)
    req = RunRequest(trace.prompt, preset, strategy, trace.config)
    if title is None:
        title = f"{strategy} on {preset} ({trace.config.rule}, {trace.summary.new_tokens} tokens)"
    return Recording(
        title,
        req,
        trace.steps,
        trace.summary,
        plain_steps,
        plain_summary,
        "" if chat else trace.prompt,
        chat,
        details,
        meta,
        schedule(trace.steps, trace.summary.prefill_ms, plain_steps or []),
    )


def schedule(steps: list[StepEvent], prefill_ms: float, plain: list[StepEvent]) -> list[float]:
    """Seconds (at 1x) at which each speculative step, then each baseline step, shows: the recorded gaps between
    steps' elapsed_ms (the baseline's first gap is its own prefill and first step, as a visitor waited for it live),
    the speculative run's prefill skipped, each gap within 0..MAX_GAP_S."""
    times, t = [], 0.0
    for run, start in ((steps, prefill_ms), (plain, 0.0)):
        prev = start
        for s in run:
            t += min(MAX_GAP_S, max(0.0, (s.elapsed_ms - prev) / 1e3))
            prev = s.elapsed_ms
            times.append(t)
    return times


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ConfigError(
            f"the trace's {what} must be a short name (letters, digits, - _ . +), got {str(value)[:40]!r}"
        )
    return value


def _baseline(meta: dict[str, Any]) -> tuple[list[StepEvent] | None, RunSummary | None]:
    """The plain baseline's steps and summary from a trace's meta (None, None: it has none)."""
    raw, raw_summary = meta.get("plain_steps"), meta.get("plain_summary")
    if raw is None:
        return None, None
    if not isinstance(raw, list) or len(raw) > MAX_NEW_TOKENS:
        raise ConfigError(f"the trace's plain_steps must be a list of at most {MAX_NEW_TOKENS} steps")
    if raw_summary is not None and not isinstance(raw_summary, dict):
        raise ConfigError("the trace's plain_summary must be a record of the baseline's totals")
    try:
        steps = [StepEvent.from_dict(s) for s in raw]
        summary = RunSummary.from_dict(raw_summary) if raw_summary is not None else None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"the trace's plain baseline is malformed ({type(e).__name__}: {e})"[:300]) from None
    check_steps(steps, "the baseline's")
    if summary is not None:
        check_record(summary, "the baseline's summary")
    return steps, summary


def check_steps(steps: list[StepEvent], whose: str) -> None:
    """Every step numbered in order, with numbers where numbers go, known token origins, texts of bounded length and
    finite, non-decreasing times: what the stream, the charts and the schedule read."""
    prev = 0.0
    for i, s in enumerate(steps):
        what = f"{whose} step {i + 1}"
        if not isinstance(s.tokens, list):
            raise ConfigError(f"{what} has no list of tokens")
        check_record(s, what)
        if s.step != i:
            raise ConfigError(f"{what} is numbered {s.step}: steps must be numbered 0, 1, 2, ... in order")
        if s.elapsed_ms < prev:
            raise ConfigError(f"{what} ends at {s.elapsed_ms} ms, before the step ahead of it")
        prev = s.elapsed_ms
        for t in s.tokens:
            if not isinstance(t, TokenEvent):
                raise ConfigError(f"{what} has a token that is not a token record")
            check_record(t, f"a token of {what}")
            if t.origin not in ORIGINS:
                raise ConfigError(f"{what} has a token of unknown origin {str(t.origin)[:20]!r}")
            if len(t.text) > MAX_TEXT:
                raise ConfigError(f"{what} has a token of {len(t.text)} characters; at most {MAX_TEXT}")
        if s.detail is not None:
            _check_detail(s.detail, what)
        for node in s.tree or []:
            if not isinstance(node, TreeNode):
                raise ConfigError(f"{what} has a tree node that is not a node record")
            check_record(node, f"a tree node of {what}")


def check_record(obj: Any, what: str) -> None:
    """The scalar fields of an event dataclass hold what their annotations say (int, float, str, bool; None where
    allowed); floats finite. JSON could carry anything there, and the drawing code would fail on it later."""
    for f in fields(obj):
        value, ann = getattr(obj, f.name), str(f.type)
        if value is None and "None" in ann:
            continue
        kind = ann.split("|")[0].strip()
        number = isinstance(value, int | float) and not isinstance(value, bool)
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": number and math.isfinite(value),
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "Origin": isinstance(value, str),
            "list[int]": isinstance(value, list) and all(type(v) is int for v in value),
        }.get(kind, True)
        if not ok:
            raise ConfigError(f"{what}: {f.name} must be {kind}, got {str(value)[:40]!r}")


def _check_detail(d: Any, what: str) -> None:
    """A step-mode detail (the p/q chart's data): position, tokens and equally long p, q and residual lists."""
    bad = f"{what} has a malformed step-mode detail"
    if not isinstance(d, dict) or not isinstance(d.get("tokens"), list) or len(d["tokens"]) > MAX_DETAIL:
        raise ConfigError(f"{bad}: it needs a list of at most {MAX_DETAIL} tokens")
    n = len(d["tokens"])
    if not all(isinstance(t, str) and len(t) <= MAX_TEXT for t in d["tokens"]):
        raise ConfigError(f"{bad}: its tokens must be texts")
    if type(d.get("position", 0)) is not int:
        raise ConfigError(f"{bad}: its position must be a whole number")
    for key in ("p", "q", "residual", "token_ids"):
        v = d.get(key)
        if v is None and key != "p":
            continue
        numbers = isinstance(v, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        if not numbers or len(v) != n or not all(math.isfinite(x) for x in v):
            raise ConfigError(f"{bad}: {key} must be {n} finite numbers")


def _details(raw: Any, steps: list[StepEvent]) -> dict[int, dict[str, Any]]:
    """Step-mode details by step: the meta's (the Run tab's step mode) and those the steps carry (`specviz record`)."""
    out: dict[int, dict[str, Any]] = {s.step: s.detail for s in steps if s.detail is not None}
    if raw in (None, {}):
        return out
    if not isinstance(raw, dict) or len(raw) > len(steps):
        raise ConfigError("the trace's details must map step numbers to step-mode details")
    for k, v in raw.items():
        if not (isinstance(k, str) and k.isdigit() and int(k) < len(steps)):
            raise ConfigError(f"the trace's details name step {str(k)[:20]!r}, which the trace does not have")
        _check_detail(v, f"step {int(k) + 1}")
        out[int(k)] = v
    return out


# ---------------------------------------------------------------- a visitor's player


@dataclass
class Player:
    """One visitor's replay: the recording, how many of its events are shown, the speed, and an epoch that every
    play, pause, step or scrub moves on, so a playing loop that sees another epoch stops before drawing again.
    `live`: the visitor's own live run is drawing in the stream now (a replay then waits for it); `offer`: the gallery
    entry offered while their live run waits in the queue."""

    recording: Recording | None = None
    shown: int = 0
    speed: float = 1.0
    epoch: int = 0
    playing: bool = False
    live: bool = False
    offer: str | None = None
    _anchor: tuple[float, float, float] = field(default=(0.0, 0.0, 1.0), repr=False)  # (replay s, wall s, speed)

    def load(self, rec: Recording) -> None:
        """A new recording, from its start, paused."""
        self.halt()
        self.recording, self.shown = rec, 0

    def begin(self, now: float) -> int:
        """Start playing from the current position (from the start when it is at the end); returns the epoch."""
        self.epoch += 1
        self.playing = True
        if self.recording is not None and self.shown >= self.recording.events:
            self.shown = 0
        self._anchor = (self.recording.time_of(self.shown) if self.recording else 0.0, now, self.speed)
        return self.epoch

    def halt(self) -> None:
        """Stop any playing loop (it sees the new epoch) and stay where it is."""
        self.epoch += 1
        self.playing = False

    def due(self, now: float) -> int:
        """Events that should be shown by wall time `now` at the current speed (a speed change keeps the position:
        the clock re-anchors where it is)."""
        rec = self.recording
        if rec is None:
            return 0
        if self.speed == math.inf:
            return rec.events
        t0, w0, speed = self._anchor
        if speed != self.speed:
            t0 = t0 + (now - w0) * speed if speed != math.inf else rec.time_of(self.shown)
            self._anchor = (t0, now, self.speed)
            w0, speed = now, self.speed
        return max(self.shown, rec.position_at(t0 + (now - w0) * speed))

    def wait(self, now: float) -> float:
        """Wall seconds until the next event is due (inf at the end or at instant speed)."""
        rec = self.recording
        if rec is None or self.shown >= rec.events or self.speed == math.inf:
            return math.inf
        self.due(now)  # re-anchor after a speed change
        t0, w0, speed = self._anchor
        return max(0.0, (rec.times[self.shown] - (t0 + (now - w0) * speed)) / speed)


# ---------------------------------------------------------------- the gallery


@dataclass(frozen=True)
class GalleryEntry:
    """One recorded run of the gallery: its file in GALLERY_DIR and what it shows."""

    key: str  # the file's name without .json.gz
    suite: str
    strategy: str
    rule: str
    label: str


def gallery(folder: Path = GALLERY_DIR) -> list[GalleryEntry]:
    """The gallery's entries from its index.json (written by `specviz record`), in its order; [] when there is none.
    Names are checked: an entry can only name a file inside the folder."""
    return list(_gallery(str(folder)))


@lru_cache(maxsize=4)
def _gallery(folder: str) -> tuple[GalleryEntry, ...]:
    path = Path(folder) / GALLERY_INDEX
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    out = []
    for e in doc.get("entries", []) if isinstance(doc, dict) else []:
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) for k in ("file", "suite", "strategy", "rule")):
            continue
        key = e["file"].removesuffix(".json.gz")
        if not NAME.fullmatch(key) or not (Path(folder) / e["file"]).is_file():
            continue
        speed = e.get("speedup")
        shown = f", {speed:.2f}x" if isinstance(speed, int | float) else ""
        label = f"{e['suite']} · {e['strategy']} · {'sampled' if e['rule'] == 'sample' else e['rule']}{shown}"
        out.append(GalleryEntry(key, e["suite"], e["strategy"], e["rule"], label))
    return tuple(out)


_load_lock = threading.Lock()


def load_entry(key: str, folder: Path = GALLERY_DIR) -> Recording:
    """A gallery entry's Recording (read once, then cached); ConfigError for a key the gallery does not have."""
    entry = next((e for e in gallery(folder) if e.key == key), None)
    if entry is None:
        raise ConfigError(f"the gallery has no recorded run {str(key)[:60]!r}")
    with _load_lock:
        return _load(str(folder), entry)


@lru_cache(maxsize=128)
def _load(folder: str, entry: GalleryEntry) -> Recording:
    return load_recording(Path(folder) / f"{entry.key}.json.gz", title=entry.label)


def suite_of(prompt: str) -> str | None:
    """The prompt suite whose example this prompt is (None for a prompt of the visitor's own)."""
    text = prompt.strip()
    for suite, items in prompt_suites().items():
        if any(text == str(p.get("prompt", "")).strip() for p in items):
            return suite
    return None


def match(entries: list[GalleryEntry], suite: str | None, strategy: str, rule: str) -> GalleryEntry | None:
    """The gallery entry closest to a live run: same suite, strategy and rule; else same suite and strategy; else
    the default suite's, then any suite's, run of that strategy; else the page's opening entry."""
    tries = [
        lambda e: (e.suite, e.strategy, e.rule) == (suite, strategy, rule),
        lambda e: (e.suite, e.strategy) == (suite, strategy),
        lambda e: (e.suite, e.strategy, e.rule) == (DEFAULT_ENTRY[0], strategy, rule),
        lambda e: (e.strategy, e.rule) == (strategy, rule),
        lambda e: (e.suite, e.strategy, e.rule) == DEFAULT_ENTRY,
    ]
    for ok in tries:
        found = next((e for e in entries if ok(e)), None)
        if found is not None:
            return found
    return entries[0] if entries else None


def default_entry(entries: list[GalleryEntry]) -> GalleryEntry | None:
    """The entry the page opens on: the code suite, the draft strategy, greedy."""
    return match(entries, *DEFAULT_ENTRY)
