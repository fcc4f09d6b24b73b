"""The Run tab's replay controls and handlers: a gallery picker, a trace upload, speed, play, pause, next step and a
scrubber; a replay draws through the Run tab's own drawing code (replay.py rebuilds the live run's RunState) and never
enters the model queue, so it plays while the pair loads. The playing loop is an async generator: a waiting replay
holds no worker thread, so many visitors can watch at once."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Protocol

import gradio as gr
from gradio.blocks import Block

from specviz.core.config import ConfigError
from specviz.ui import render
from specviz.ui.common import Update
from specviz.ui.live import LiveStream
from specviz.ui.models import friendly
from specviz.ui.replay import (
    SPEEDS,
    Player,
    Recording,
    default_entry,
    gallery,
    load_entry,
    load_recording,
    match,
    suite_of,
)
from specviz.ui.session import RunRequest, RunState
from specviz.ui.visitors import Visitors

log = logging.getLogger("specviz.ui")
STREAM_INTERVAL = 0.5  # seconds between a replay's updates: fewer than a live run's (run_tab.STREAM_INTERVAL), so a class of
# visitors replaying at once stays within what one core serves (each update costs the server a few ms in Gradio)
CHART_INTERVAL = 3.0  # ... and between its redraws of the two live charts (run_tab.CHART_INTERVAL)
REPLAY_EVENTS: dict[str, Any] = {"concurrency_limit": None, "show_progress": "hidden"}  # never the models' queue
MAX_UPLOADS = 32  # visitors' uploaded recordings kept in memory at once
REPLAY_RUN = "r"  # a replay's stream deltas carry run ids that start so (a live run's are hex), and its still views
REPLAY_MARK = "<!--sv-replay-->"  # start with this, so the page knows the stream shows a replay
# Run or Step pressed: a replay's stream is over in the browser at once (its late deltas are ignored, its content goes;
# a live run's result stays, so an invalid Run keeps it). live.py's DELTA_JS defines window.__svLiveEnd
TAKE_STREAM_JS = f"""() => {{
  const b = document.querySelector('#sv-stream .prose');
  const replay = (window.__svLiveRun || '').startsWith('{REPLAY_RUN}') || (b && b.innerHTML.startsWith('{REPLAY_MARK}'));
  if (replay && window.__svLiveEnd) window.__svLiveEnd();
  if (replay && b) b.innerHTML = '';
}}"""


class Canvas(Protocol):
    """What the replay draws with: the Run tab's components and drawing methods."""

    status: Block
    stream: Block
    delta: Block
    live_outputs: list[Block]
    live_charts: list[Block]

    def draw(self, state: RunState, step_mode: bool = False) -> Update: ...

    def draw_live(self, state: RunState, live: LiveStream, charts_due: bool) -> Update: ...

    def blank_step(self) -> Update: ...

    def blank_summary(self) -> Update: ...


class ReplayPanel:
    """The replay controls (built where the Run tab constructs the panel; the offer button where it calls
    build_offer()) and their handlers, drawing on the canvas that wire() is given."""

    def __init__(self, visitors: Visitors) -> None:
        self.visitors = visitors
        self._uploads: OrderedDict[int, Player] = OrderedDict()  # players holding an uploaded recording, newest last
        self.entries = gallery()
        first = default_entry(self.entries)
        self.default_key = first.key if first else None
        self.opening = self._opening()
        with gr.Group(elem_id="sv-replay"):
            with gr.Row(equal_height=True):
                self.picker = gr.Dropdown(
                    choices=[(e.label, e.key) for e in self.entries],
                    value=self.default_key,
                    label="Replay a recorded run (no model needed)",
                    elem_id="sv-gallery",
                    scale=5,
                )
                self.speed = gr.Radio(
                    list(SPEEDS), value="1x", label="Replay speed", elem_id="sv-replay-speed", scale=4
                )
            with gr.Row(equal_height=True, elem_id="sv-replay-buttons"):
                with gr.Column(scale=3, min_width=260):
                    with gr.Row():
                        self.play_btn = gr.Button("Play", variant="primary", elem_id="sv-replay-play", min_width=60)
                        self.pause_btn = gr.Button("Pause", elem_id="sv-replay-pause", min_width=60)
                        self.next_btn = gr.Button("Next step", elem_id="sv-replay-next", min_width=80)
                    self.upload = gr.UploadButton(
                        "Open a trace file (.json, .json.gz)", elem_id="sv-replay-upload", size="sm", type="filepath"
                    )
                top = max(2, self.opening.n) if self.opening else 2
                self.scrub = gr.Slider(
                    1, top, value=1, step=1, label="Replay step", elem_id="sv-scrub", interactive=True, scale=4
                )
            # each recording sets the range in the browser, but Gradio checks a value against the range the component
            # was built with: the handler takes the number as it comes and clamps it to the recording's own steps
            self.scrub.preprocess = lambda payload: payload  # type: ignore[method-assign]
            self.rstatus = gr.HTML(self._opening_status(), elem_id="sv-replay-status")
        self.canvas: Canvas | None = None

    def _opening(self) -> Recording | None:
        """The opening replay, read at start (a broken gallery file only costs the opening, never the page)."""
        if self.default_key is None:
            return None
        try:
            return load_entry(self.default_key)
        except ConfigError:
            log.exception("the gallery's opening run %s does not read", self.default_key)
            return None

    def opening_stream(self) -> str | None:
        """The page's first stream: the opening replay's first step, so the page shows tokens as soon as it is drawn
        (the load event then plays on from there)."""
        rec = self.opening
        if rec is None:
            return None
        return REPLAY_MARK + render.render_stream(rec.steps[:1], prompt=rec.prompt_shown, rule=rec.request.cfg.rule)

    def _opening_status(self) -> str:
        rec = self.opening
        if rec is None:
            return render.render_status("pick a recorded run to replay it")
        return render.render_status(f"replay of {rec.title}{recorded_on(rec.meta)}: step 1 of {rec.n}", "busy")

    def _hold_upload(self, player: Player) -> None:
        """An uploaded recording (up to 8 MB of trace each) is held by at most MAX_UPLOADS visitors at once: the
        oldest other holder lets go of theirs (their next Play plays the opening run)."""
        self._uploads.pop(id(player), None)
        self._uploads[id(player)] = player
        while len(self._uploads) > MAX_UPLOADS:
            _, oldest = self._uploads.popitem(last=False)
            oldest.halt()
            oldest.recording, oldest.shown = None, 0

    def build_offer(self) -> gr.Button:
        """The button a live run shows while it waits in the queue: the matching gallery replay."""
        self.offer = gr.Button("", visible=False, elem_id="sv-replay-offer", variant="secondary", size="sm")
        return self.offer

    @property
    def own(self) -> list[Block]:
        """The panel's components that its handlers update."""
        return [self.picker, self.scrub, self.rstatus, self.offer]

    def wire(self, canvas: Canvas, outputs: list[Block], page: gr.Blocks | None = None) -> None:
        """Connect the controls; `outputs` holds the Run tab's components and the panel's own. `page`: the Blocks
        whose load event starts the opening replay."""
        self.canvas = canvas
        # a playing event lists only what each of its frames draws: Gradio rebuilds every output an update leaves
        # out or skips (a component and its config, about 1 ms each, per output per frame, for each visitor: most of
        # a frame's cost), so the full page at the end comes from a .then, the picker follows an offer by an event
        # of its own, and the run's status line (a live run's) is not among them
        frames = self.frame_outputs = [
            *(c for c in canvas.live_outputs if c is not canvas.status),
            self.scrub,
            self.rstatus,
        ]
        self.offer.click(self.offer_picked, None, self.picker, queue=False, api_name=False, show_progress="hidden")
        for event, fn, inputs, api in (
            (self.picker.input, self.on_pick, [self.picker, self.speed], "replay"),
            (self.upload.upload, self.on_upload, [self.upload, self.speed], "replay_file"),
            (self.play_btn.click, self.on_play, self.speed, "replay_play"),
            (self.offer.click, self.on_offer, self.speed, False),
        ):
            self.then_finish(event(fn, inputs, frames, api_name=api, **REPLAY_EVENTS), outputs)
        self.pause_btn.click(self.on_pause, None, outputs, api_name="replay_pause", **REPLAY_EVENTS)
        self.next_btn.click(self.on_next, None, outputs, api_name="replay_next", **REPLAY_EVENTS)
        self.scrub.release(self.on_scrub, self.scrub, outputs, api_name="replay_scrub", **REPLAY_EVENTS)
        self.speed.input(self.on_speed, self.speed, None, queue=False, api_name=False, show_progress="hidden")
        if page is not None:
            self.then_finish(page.load(self.on_open, None, frames, api_name=False, **REPLAY_EVENTS), outputs)

    def then_finish(self, event: Any, outputs: list[Block]) -> None:
        """After a playing event: the full page of a replay that played to its end (nothing otherwise)."""
        event.then(self.on_finish, None, outputs, api_name=False, **REPLAY_EVENTS)

    async def on_finish(self, request: gr.Request) -> Update:
        """The finished replay's full page (charts, text, table, tree), unless the visitor moved on: paused, scrubbed,
        picked another or started a live run."""
        player = self.visitors.of(request).replay
        rec = player.recording
        if rec is None or player.playing or player.live or player.shown < rec.events or self.canvas is None:
            return {self.rstatus: gr.skip()}  # nothing changes (an empty dict would read as one output's value)
        return self._over(self.canvas.draw(rec.state(rec.events)), player)

    # -- handlers

    async def on_open(self, request: gr.Request) -> AsyncIterator[Update]:
        """The page's first sight: the opening gallery replay plays at 1x, unless the visitor got there first (an
        upload, a pick or a Run before a busy server ran the load event): what they asked for stays."""
        async for up in self._guard(self._play_entry(self.default_key, "1x", request, opening=True), request):
            yield up

    async def on_pick(self, key: str | None, speed: str, request: gr.Request) -> AsyncIterator[Update]:
        async for up in self._guard(self._play_entry(key, speed, request), request):
            yield up

    async def on_offer(self, speed: str, request: gr.Request) -> AsyncIterator[Update]:
        async for up in self._guard(self._play_entry(self.visitors.of(request).replay.offer, speed, request), request):
            yield up

    def offer_picked(self, request: gr.Request) -> Update:
        """The picker on the offered gallery entry (its replay plays by the offer's other event)."""
        key = self.visitors.of(request).replay.offer
        return gr.update(value=key) if key else gr.skip()

    async def on_upload(self, path: str | None, speed: str, request: gr.Request) -> AsyncIterator[Update]:
        async def gen() -> AsyncIterator[Update]:
            if not path:
                raise ConfigError("no file came with the upload")
            rec = await asyncio.to_thread(load_recording, path)
            player = self.visitors.of(request).replay
            self._hold_upload(player)
            async for up in self._play(player, rec, speed, loaded=True):
                yield up

        async for up in self._guard(gen(), request):
            yield up

    async def play(self, request: gr.Request, rec: Recording, speed: str) -> AsyncIterator[Update]:
        """Play a recording made elsewhere (a vLLM server's run) for this visitor, as an uploaded trace plays."""
        player = self.visitors.of(request).replay
        self._hold_upload(player)
        async for up in self._guard(self._play(player, rec, speed, loaded=True), request):
            yield up

    async def on_play(self, speed: str, request: gr.Request) -> AsyncIterator[Update]:
        player = self.visitors.of(request).replay
        if player.recording is None:
            gen = self._play_entry(self.default_key, speed, request)
        else:
            gen = self._play(player, player.recording, speed)
        async for up in self._guard(gen, request):
            yield up

    # pause, next and scrub are async too: every change to a player happens on the event loop, where the playing
    # loop runs, so it can never draw a frame between another handler's change and that handler's own drawing

    async def on_pause(self, request: gr.Request) -> Update:
        player = self.visitors.of(request).replay
        return self._still(player, player.shown)

    async def on_next(self, request: gr.Request) -> Update:
        """One step on (past the last speculative step: the end, baseline and all; from the end: step 1)."""
        player = self.visitors.of(request).replay
        rec = player.recording
        if rec is None:
            return {self.rstatus: render.render_status("pick a recorded run first", "info")}
        if player.shown >= rec.events:
            return self._still(player, 1)
        return self._still(player, player.shown + 1 if player.shown < rec.n else rec.events)

    async def on_scrub(self, step: float | None, request: gr.Request) -> Update:
        """Jump to step `step` (1-based) and show it as step mode does."""
        player = self.visitors.of(request).replay
        if player.recording is None:
            return {self.rstatus: render.render_status("pick a recorded run first", "info")}
        if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step):
            return {self.rstatus: render.render_error(f"the step to jump to must be a number, got {str(step)[:40]!r}")}
        return self._still(player, max(1, min(player.recording.n, int(step))))

    def on_speed(self, speed: str, request: gr.Request) -> None:
        self.visitors.of(request).replay.speed = SPEEDS.get(speed, 1.0)

    # -- what they do

    async def _guard(self, gen: AsyncIterator[Update], request: gr.Request | None) -> AsyncIterator[Update]:
        """Errors become one line in the replay's status (never a traceback); what is shown stays, paused, so the
        line stays too."""
        try:
            async for up in gen:
                yield up
        except ConfigError as e:
            self.visitors.of(request).replay.halt()
            yield {self.rstatus: render.render_error(str(e))}
        except Exception as e:  # noqa: BLE001 - a replay must never take the page down
            log.exception("replay failed")
            self.visitors.of(request).replay.halt()
            yield {self.rstatus: render.render_error(friendly(e))}

    async def _play_entry(
        self, key: str | None, speed: str, request: gr.Request, opening: bool = False
    ) -> AsyncIterator[Update]:
        """Play gallery entry `key`. `opening`: the page's first sight, quietly nothing without a gallery, and
        nothing once the visitor's player has moved (every play, pause, upload or error moves its epoch)."""
        player = self.visitors.of(request).replay
        if not key:
            if opening:  # a page without a gallery opens as before
                return
            if self.entries:
                raise ConfigError("pick a recorded run to replay it")
            raise ConfigError("the gallery is empty: record it with python -m specviz record")
        if opening and (player.epoch or player.live):
            yield {self.rstatus: gr.skip()}
            return
        rec = await asyncio.to_thread(load_entry, key)  # the first read of an entry parses its file
        if opening and (player.epoch or player.live):  # the visitor acted while the entry was read
            yield {self.rstatus: gr.skip()}
            return
        async for up in self._play(player, rec, speed, loaded=True):
            yield up

    async def _play(
        self,
        player: Player,
        rec: Recording,
        speed: str,
        loaded: bool = False,
        start: int = 1,
    ) -> AsyncIterator[Update]:
        """Play `rec` from the player's position (from `start` when `loaded` is a new one: step 1 shows at once, so a
        replay starts the moment it is asked for, not after its first recorded step's wait) at `speed`: updates at most
        every STREAM_INTERVAL, the stream's new steps through a fresh LiveStream as a live run sends them (its first
        delta starts the browser's stream over, so the stream component itself is never sent), the two live charts
        redrawn every CHART_INTERVAL and sent unchanged between (Gradio sends a playing event's frames as diffs, so
        an unchanged chart costs nothing to send or draw, while a left-out one costs a rebuild), the full page at the
        end. Stops, without drawing again, once another play, pause, step,
        scrub, Run or Step moves the player's epoch on."""
        assert self.canvas is not None
        canvas = self.canvas
        if player.live:
            raise ConfigError("your live run is drawing in the stream: the replay can start once it ends (or Stop it)")
        if loaded:
            player.load(rec)
            player.shown = start
        player.speed = SPEEDS.get(speed, 1.0)
        epoch = player.begin(time.monotonic())
        live = LiveStream(rec.request.cfg.rule, prefix=REPLAY_RUN)
        first = self._loaded(rec) if loaded else {}
        charts: Update = {}  # the live charts as last drawn
        last_charts, shown = -math.inf, -1
        while player.epoch == epoch:
            now = time.monotonic()
            due = player.due(now)
            if due != shown and due > 0:  # before the first step is due there is nothing to draw
                shown = player.shown = due
                state = rec.state(due)
                if due >= rec.events:
                    player.playing = False
                    yield first | charts | self._frame(canvas, player, state, live, redraw=False)
                    yield {k: v for k, v in self._over(canvas.draw(state), player).items() if k in self.frame_outputs}
                    return
                redraw = now - last_charts >= CHART_INTERVAL
                up = self._frame(canvas, player, state, live, redraw)
                if redraw:
                    charts, last_charts = {c: up[c] for c in canvas.live_charts}, time.monotonic()
                yield first | charts | up
                first = {}
            await asyncio.sleep(min(STREAM_INTERVAL, max(STREAM_INTERVAL / 4, player.wait(time.monotonic()))))
        # superseded: end on an update that changes nothing. Gradio's end-of-event message repeats the event's last
        # output, and the page applies it when it lands, so a frame from before the pause, scrub or upload would
        # otherwise come back over what that handler drew (say, an upload's error line)
        yield {self.rstatus: gr.skip()}

    def _frame(self, canvas: Canvas, player: Player, state: RunState, live: LiveStream, redraw: bool) -> Update:
        up = canvas.draw_live(state, live, redraw)
        up.pop(canvas.status, None)  # the run's status line stays the live run's
        return up | {self.rstatus: self._status(player), self.scrub: self._scrub_value(player)}

    def _over(self, up: Update, player: Player) -> Update:
        up.pop(self.canvas.status if self.canvas else None, None)
        return up | {self.rstatus: self._status(player), self.scrub: self._scrub_value(player)}

    def _still(self, player: Player, shown: int) -> Update:
        """Stop playing and show `shown` events as step mode does: the stream with the step highlighted, the step's
        captions and p/q chart, every chart at full resolution."""
        assert self.canvas is not None
        rec = player.recording
        player.halt()
        if rec is None:
            return {self.rstatus: render.render_status("pick a recorded run first", "info")}
        player.shown = max(1, min(shown, rec.events))
        state = rec.state(player.shown)
        state.current = min(player.shown, rec.n) - 1
        if state.phase == "running":
            state.phase = "step"  # a still view of a replay, not a finished run
        up = self.canvas.draw(state, step_mode=True)
        up[self.canvas.stream] = REPLAY_MARK + up[self.canvas.stream]
        if state.phase == "step":  # short of the end: no finished run's table
            up |= self.canvas.blank_summary()
        return self._over(up, player)

    def _loaded(self, rec: Recording) -> Update:
        """A new recording: the scrubber's range."""
        # gr.update, not gr.Slider(...): building a component per update costs far more, for each of many visitors
        return {self.scrub: gr.update(maximum=max(2, rec.n), value=max(1, min(rec.n, 1)))}

    def _scrub_value(self, player: Player) -> int:
        rec = player.recording
        return max(1, min(player.shown, rec.n if rec else 1))

    def _status(self, player: Player) -> str:
        """The replay's own status line: what it is, where it was recorded, where it stands."""
        rec = player.recording
        if rec is None:
            return render.render_status("pick a recorded run to replay it")
        where = recorded_on(rec.meta)
        speed = next((k for k, v in SPEEDS.items() if v == player.speed), f"{player.speed:g}x")
        n = min(player.shown, rec.n)
        if player.shown >= rec.events:
            msg, kind = f"replay of {rec.title}{where}: {rec.state(rec.events).message}", "ok"
        elif player.shown > rec.n:
            base = len(rec.plain_steps or [])
            msg, kind = (
                f"replay of {rec.title}{where}: the plain baseline, {player.shown - rec.n} of {base} steps",
                "busy",
            )
        else:
            msg, kind = f"replay of {rec.title}{where}: step {n} of {rec.n}", "busy"
        if not player.playing and player.shown < rec.events:
            msg, kind = f"{msg} (paused: Play goes on from here)", "info"
        elif player.playing:
            msg += f" at {speed}"
        return render.render_status(msg, kind, player.shown / rec.events if rec.events else None)

    # -- for the Run tab's live runs

    def offer_for(self, request: gr.Request, req: RunRequest) -> Update:
        """While a live run waits: the button that plays the matching gallery replay (nothing without a gallery)."""
        entry = match(self.entries, suite_of(req.prompt), req.strategy, req.cfg.rule)
        player = self.visitors.of(request).replay
        if entry is None:
            return {}
        player.offer = entry.key
        return {self.offer: gr.update(value=f"While you wait: watch the recorded {entry.label} run", visible=True)}

    def take_stream(self, request: gr.Request | None) -> Update:
        """A live run starts drawing: the visitor's replay stops and its offer goes, and so does a replay's step
        view (its captions were of the replayed run)."""
        player = self.visitors.of(request).replay
        player.halt()
        player.live = True
        up: Update = {self.offer: gr.update(visible=False)}
        if player.recording is not None and self.canvas is not None:
            up |= self.canvas.blank_step()
        return up

    def give_back(self, request: gr.Request | None) -> None:
        """The live run is over: replays may draw again."""
        self.visitors.of(request).replay.live = False

    def no_offer(self) -> Update:
        """The offer button hidden (the run it was offered for has gone)."""
        return {self.offer: gr.update(visible=False)}


def recorded_on(meta: dict[str, Any]) -> str:
    """', recorded on <cpu> (<n> cores), <date>' from a gallery trace's meta ('' for a trace without them), and a
    warning when the machine was busier than its cores (its load average then): its timings, and so its speedup, are
    those of a shared machine."""
    machine = meta.get("machine")
    date = meta.get("date")
    bits = []
    busy = ""
    if isinstance(machine, dict) and isinstance(machine.get("cpu"), str):
        cores = machine.get("cores")
        bits.append(machine["cpu"][:60] + (f" ({cores} cores)" if isinstance(cores, int) else ""))
        load = machine.get("load_avg_1m")
        if isinstance(cores, int) and isinstance(load, int | float) and not isinstance(load, bool) and load > cores:
            busy = f" (a busy machine: load {load:.1f} on {cores} cores, so its timings and speedup are noisy)"
    if isinstance(date, str):
        bits.append(date[:10])
    return f", recorded on {', '.join(bits)}{busy}" if bits else ""
