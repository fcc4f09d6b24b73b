"""Replays in the Run tab: a live run on the tiny pair, downloaded and replayed, draws the same stream, charts, KPIs,
theory and table (greedy and sampled); the scrubber lands on the step asked for; the schedule follows the recorded
timings at every speed; hostile traces get one clear message; the queue tells a waiting run its place and wait and
offers a replay; `specviz record` writes a gallery that reads back; the shipped gallery is whole and within 5 MB; and
(slow) 30 visitors at once, 25 replaying and 5 running live, all get what they asked for."""

from __future__ import annotations

import asyncio
import gzip
import html
import json
import math
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from helpers import ARTIFACTS, serve, step, tok

from specviz.cli.main import main as cli_main
from specviz.cli.record import gallery_strategies
from specviz.core.config import ConfigError
from specviz.core.presets import prompt_suites
from specviz.core.trace import MAX_TRACE_BYTES, read_trace_file
from specviz.ui.exports import ExportStore
from specviz.ui.live import parse_mark
from specviz.ui.models import ModelManager
from specviz.ui.replay import (
    DEFAULT_ENTRY,
    GALLERY_DIR,
    MAX_GAP_S,
    Player,
    default_entry,
    gallery,
    load_entry,
    load_recording,
    match,
    schedule,
)
from specviz.ui.replay_panel import REPLAY_MARK
from specviz.ui.run_tab import RunTab
from specviz.ui.visitors import Visitors
from specviz.ui.waitline import WaitLine

PROMPT = "def add(a, b):\n    return a + b\n"
FIGS = ("fig_tput", "fig_accept", "fig_hist", "fig_pos", "fig_theory")
SEP = '<span class="sv-sep"'


@pytest.fixture(scope="module")
def tab(tmp_path_factory) -> RunTab:
    """The Run tab on the tiny pair, wired inside a Blocks (its downloads in a temporary folder)."""
    manager = ModelManager("tiny-random")
    assert list(manager.wait("tiny-random"))[-1].state == "ready"
    with gr.Blocks():
        t = RunTab(manager, Visitors(), ExportStore(tmp_path_factory.mktemp("exports")))
        t.wire()
    return t


def controls(tab: RunTab, **kw: Any) -> dict:
    """The Run tab's input dict, as Gradio hands it to the handler."""
    values = dict(prompt=PROMPT, preset="tiny-random", strategy="draft", gamma=4, rule="greedy", temperature=1.0,
                  top_p=1.0, top_k=0, max_new_tokens=24, seed=0) | kw  # fmt: skip
    return {c: values[name] for name, c in tab.c._components().items()}


def assemble(values: list[str]) -> str:
    """The stream as the browser's DELTA_JS builds it from the delta values (a new run mark starts it over; an
    unchanged value adds nothing), marks left out."""
    out, run, known = "", None, 0
    for v in values:
        mark = parse_mark(v)
        assert mark is not None, v[:80]
        if mark[0] != run:
            out, run, known = "", mark[0], 0
        body = re.sub(r"^<!--sv-live:\w+:\d+-->", "", v)
        if mark[1] == known and body:
            out += body
            known = out.count(SEP)
    return out


def prefix(stream: str, steps: int) -> str:
    """The stream's prompt and first `steps` steps."""
    parts = stream.split(SEP)
    return SEP.join(parts[: steps + 1])


def live_run(tab: RunTab, **kw: Any) -> tuple[list[dict], str]:
    """A real Run through the tab's handler: every update, and the downloaded trace's path."""
    updates = list(tab._run(controls(tab, **kw), None))
    value = updates[-1][tab.dl_trace].value  # Gradio keeps the DownloadButton's file as a FileData dict
    return updates, value["path"] if isinstance(value, dict) else value


async def collect(gen: AsyncIterator[dict]) -> list[dict]:
    return [up async for up in gen]


def replayed(tab: RunTab, trace: str, speed: str = "4x") -> tuple[list[dict], Player]:
    player = tab.visitors.of(None).replay
    player.live = False
    rec = load_recording(trace)
    ups = asyncio.run(collect(tab.replay._play(player, rec, speed, loaded=True)))
    # the page's .then after a playing event: the finished replay's full page, merged as the browser shows it
    ups[-1] = ups[-1] | asyncio.run(tab.replay.on_finish(None))
    return ups, player


@pytest.mark.parametrize("rule", ["greedy", "sample"])
def test_a_replay_draws_exactly_what_the_live_run_drew(tab, rule):
    live, trace = live_run(tab, rule=rule, seed=3)
    replay, _ = replayed(tab, trace)
    live_stream = assemble([u[tab.delta] for u in live if tab.delta in u])
    replay_stream = assemble([u[tab.delta] for u in replay if tab.delta in u])
    assert live_stream.count(SEP) > 3 and replay_stream == live_stream
    end_live, end_replay = live[-1], replay[-1]
    for name in FIGS:
        fig = getattr(tab, name)
        assert end_replay[fig].plot == end_live[fig].plot, name
    for c in (tab.kpis, tab.theory, tab.text):
        assert end_replay[c] == end_live[c]
    assert end_replay[tab.summary].equals(end_live[tab.summary])
    # the replay's own status line says what the live one said at the end, and the live one is left alone
    said = re.search(r'class="sv-msg">([^<]*)<', end_live[tab.status]).group(1)
    assert said in end_replay[tab.replay.rstatus] and tab.status not in end_replay
    assert tab.dl_trace not in end_replay  # no new downloads for a replay


def test_the_scrubber_lands_on_the_step_asked_for(tab):
    live, trace = live_run(tab, max_new_tokens=30)
    stream = assemble([u[tab.delta] for u in live if tab.delta in u])
    player = tab.visitors.of(None).replay
    player.load(load_recording(trace))
    n = player.recording.n
    for k in (0, n // 2, n - 1):
        up = asyncio.run(tab.replay.on_scrub(k + 1, None))
        html_k = up[tab.stream]
        assert html_k.count(SEP) == k + 1 and f'class="sv-step sv-current" data-step="{k + 1}"' in html_k
        assert html_k.startswith(REPLAY_MARK)  # the page's script knows a replay is shown
        shown = html_k.removeprefix(REPLAY_MARK).replace(" sv-current", "")
        assert shown == prefix(stream, k + 1)  # the live stream after k + 1 steps
        assert f'data-step="{k + 1}"' in up[tab.step_panel] and up[tab.replay.scrub] == k + 1
        assert player.shown == k + 1 and not player.playing
    up = asyncio.run(tab.replay.on_next(None))  # from the last step: the end, baseline and all
    assert player.shown == player.recording.events and "done:" in up[tab.replay.rstatus]


def test_the_schedule_follows_the_recorded_timings_at_every_speed():
    steps = [step(i, [tok("a", "accepted", 0)]) for i in range(4)]  # elapsed 10, 20, 30, 40 ms
    steps = [s.__class__(**{**s.__dict__, "elapsed_ms": ms}) for s, ms in zip(steps, (110, 130, 160, 1e9))]
    plain = [steps[0].__class__(**{**steps[0].__dict__, "elapsed_ms": 50.0})]
    times = schedule(steps, 100.0, plain)
    # prefill skipped, then the recorded gaps; a huge gap capped; the baseline's first step after its own 50 ms
    assert times == pytest.approx([0.01, 0.03, 0.06, 0.06 + MAX_GAP_S, 0.11 + MAX_GAP_S])
    player = Player()
    player.recording = type("R", (), {"times": times, "events": 5, "n": 4,
                                      "position_at": lambda self, t: sum(x <= t for x in times),
                                      "time_of": lambda self, k: times[k - 1] if k else 0.0})()  # fmt: skip
    player.begin(now=0.0)
    assert player.due(0.005) == 0 and player.due(0.031) == 2
    player.shown = 2  # the playing loop shows what is due
    assert player.wait(0.031) == pytest.approx(0.029)
    player.speed = 2.0  # re-anchors: the position stays, the clock runs twice as fast from here
    assert player.due(0.031) == 2 and player.due(0.031 + 0.015) == 3
    player.speed = math.inf
    assert player.due(0.05) == 5 and player.wait(0.05) == math.inf


def test_hostile_traces_get_one_clear_message(tab, tmp_path):
    _, trace = live_run(tab, max_new_tokens=12)
    doc = json.loads(Path(trace).read_text())

    def variant(name: str, change) -> Path:
        d = json.loads(json.dumps(doc))
        change(d)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(d))
        return path

    cases = {
        variant("step-string", lambda d: d["steps"][0].update(step="one")): "step must be int",
        variant("nan-time", lambda d: d["steps"][1].update(elapsed_ms=float("nan"))): "elapsed_ms must be float",
        variant("backwards", lambda d: d["steps"][1].update(elapsed_ms=-5)): "before the step ahead",
        variant("origin", lambda d: d["steps"][0]["tokens"][0].update(origin="magic")): "unknown origin",
        variant("renumbered", lambda d: d["steps"][1].update(step=7)): "numbered 7",
        variant("plain-list", lambda d: d["meta"].update(plain_steps="x")): "plain_steps must be a list",
        variant("plain-bad", lambda d: d["meta"]["plain_steps"][0].pop("tokens")): "plain baseline is malformed",
        variant("strategy", lambda d: d["meta"].update(strategy="<script>")): "strategy must be a short name",
        variant("details", lambda d: d["meta"].update(details={"0": {"tokens": ["a"], "p": "x"}})): "p must be 1",
        variant("no-steps", lambda d: d.update(steps=[])): "no steps to replay",
        variant("text", lambda d: d["steps"][0]["tokens"][0].update(text="x" * 5000)): "at most 1000",
    }
    bomb = tmp_path / "bomb.json.gz"
    bomb.write_bytes(gzip.compress(b" " * (MAX_TRACE_BYTES + 10)))
    cases[bomb] = "decompresses to more than 8 MB"
    broken = tmp_path / "broken.json.gz"
    broken.write_bytes(gzip.compress(Path(trace).read_bytes())[:200])
    cases[broken] = "cut short"
    junk = tmp_path / "junk.json"
    junk.write_bytes(b"\x00\xff not a trace")
    cases[junk] = "not JSON"
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_recording(path)
    # through the upload handler: one error line in the replay's status, nothing else changes, no traceback
    ups = asyncio.run(collect(tab.replay.on_upload(str(junk), "1x", None)))
    assert len(ups) == 1 and set(ups[0]) == {tab.replay.rstatus}
    assert "sv-error" in ups[0][tab.replay.rstatus] and "not JSON" in html.unescape(ups[0][tab.replay.rstatus])
    assert "Traceback" not in ups[0][tab.replay.rstatus]
    # a visitor whose upload the server ran before the page's load event: the opening replay leaves their message be
    early = type("Request", (), {"session_hash": "uploads-before-the-load-event"})()
    ups = asyncio.run(collect(tab.replay.on_upload(str(junk), "1x", early)))
    assert "not JSON" in html.unescape(ups[-1][tab.replay.rstatus])
    assert asyncio.run(collect(tab.replay.on_open(early))) == [{tab.replay.rstatus: gr.skip()}]
    # ... while a fresh visitor's page opens on the playing replay
    fresh = type("Request", (), {"session_hash": "a-fresh-page"})()
    opening = tab.replay.on_open(fresh)
    first = asyncio.run(anext(opening))
    assert "replay of" in first[tab.replay.rstatus] and tab.visitors.of(fresh).replay.playing
    asyncio.run(opening.aclose())
    tab.visitors.of(fresh).replay.halt()
    # the compressed download reads as the plain one does
    packed = tmp_path / "packed.json.gz"
    packed.write_bytes(gzip.compress(Path(trace).read_bytes()))
    assert read_trace_file(packed).summary.output_ids == read_trace_file(trace).summary.output_ids


def test_the_queue_tells_a_waiting_run_its_place_and_wait():
    line = WaitLine()
    a, b, c = line.join("p", 100), line.join("p", 50), line.join("q", 10)
    assert line.turn(a, now=0.0) and not line.turn(b) and not line.turn(c)
    assert line.place(c, now=1.0).eta_s is None and "estimated once a run here has finished" in line.place(c).text()
    line.record("p", 400, 10.0)  # 40 tokens/s
    line.record("q", 20, 1.0)  # 20 tokens/s
    place = line.place(c, now=1.0)
    # a: 2 x 100 tokens at 40/s = 5 s, 1 s of it gone; b: 2 x 50 at 40/s = 2.5 s
    assert (place.ahead, place.waiting) == (2, 2) and place.eta_s == pytest.approx(4.0 + 2.5)
    assert place.text().startswith("queue: 2/2: 2 live runs ahead of yours, estimated wait about 6 s")
    line.leave(a)
    assert line.turn(b) and line.place(c).ahead == 1


def test_a_run_waiting_its_turn_shows_its_place_and_offers_a_replay(tab):
    entries = tab.replay.entries
    if not entries:
        pytest.fail("the shipped gallery is empty: python -m specviz record")
    blocker = tab.line.join("tiny-random", 64)  # another visitor's run holds the turn
    assert tab.line.turn(blocker)

    async def first_updates() -> list[dict]:
        gen = tab.on_run(controls(tab, prompt=prompt_suites()["code"][0]["prompt"]), None)
        ups = [await gen.__anext__(), await gen.__anext__()]
        tab.line.leave(blocker)
        ups += [up async for up in gen]
        return ups

    try:
        ups = asyncio.run(first_updates())
    finally:
        tab.line.leave(blocker)
    first = ups[0]
    assert "queue: 1/1" in html.unescape(first[tab.status])
    offer = first[tab.replay.offer]
    assert offer["visible"] and "code · draft · greedy" in offer["value"]
    assert tab.visitors.of(None).replay.offer == match(entries, "code", "draft", "greedy").key
    assert any(tab.replay.offer in u and not u[tab.replay.offer]["visible"] for u in ups)  # gone once the run draws
    assert "done:" in ups[-1][tab.status] and len(tab.line) == 0
    assert tab.line.rate("tiny-random") > 0  # the finished run was measured for the next estimates


def test_record_writes_a_gallery_that_reads_back(tmp_path, capsys):
    args = ["record", "--preset", "tiny-random", "--suites", "code,story", "--strategies", "draft,ngram"]
    assert cli_main([*args, "--max-new-tokens", "8", "--out", str(tmp_path)]) == 0
    index = json.loads((tmp_path / "index.json").read_text())
    files = sorted(e["file"] for e in index["entries"])
    want = sorted(f"{s}-{g}-{r}.json.gz" for s in ("code", "story") for g in ("draft", "ngram") for r in ("greedy", "sample"))
    assert files == want == sorted(p.name for p in tmp_path.glob("*.json.gz"))
    rec = load_entry("story-ngram-sample", tmp_path)
    assert rec.request.strategy == "ngram" and rec.request.cfg.rule == "sample" and rec.plain_steps
    assert rec.summary.speedup is not None and rec.meta["suite"] == "story"
    assert {"machine", "date", "commit", "specviz_version"} <= set(rec.meta)
    assert rec.details  # the step-mode p/q data rides along
    assert cli_main(["record", "--strategies", "telepathy"]) == 2
    assert "unknown strategy 'telepathy'" in capsys.readouterr().err


def test_the_shipped_gallery_is_whole_and_small():
    entries = gallery()
    files = list(GALLERY_DIR.glob("*.json.gz"))
    assert entries and len(files) == len(entries), "index.json and the files disagree"
    total = sum(f.stat().st_size for f in GALLERY_DIR.iterdir())
    assert total <= 5 * 2**20, f"the gallery is {total / 2**20:.2f} MB"
    have = {(e.suite, e.strategy, e.rule) for e in entries}
    for suite in prompt_suites():
        for strategy in gallery_strategies():  # the main strategies and the token trees
            for rule in ("greedy", "sample"):
                assert (suite, strategy, rule) in have, (suite, strategy, rule)
    for e in entries:
        rec = load_entry(e.key)  # through read_trace: sampled ones too
        assert rec.plain_steps and rec.summary.speedup is not None and rec.plain_summary is not None
        machine = rec.meta.get("machine") or {}
        assert machine.get("cpu") and machine.get("cores") and rec.meta.get("date") and rec.meta.get("commit")
        assert rec.request.preset == "qwen-coder-1.5b" and rec.chat and rec.prompt_shown == ""
    opening = default_entry(entries)
    assert opening is not None and (opening.suite, opening.strategy, opening.rule) == DEFAULT_ENTRY


# ---------------------------------------------------------------- 30 visitors at once (slow: serves the app)


@pytest.mark.slow
def test_thirty_visitors_25_replaying_and_5_live_all_get_theirs():
    from gradio_client import Client

    keys = [e.key for e in gallery()]
    assert len(keys) >= 5

    def replay(i: int) -> tuple[str, float, str]:
        """A replay at 4x: seconds until its first step arrived, and its final replay status."""
        c = clients[i]
        t0 = time.time()
        job = c.submit(keys[i % len(keys)], "4x", api_name="/replay")
        first = None
        while not job.done():
            outs = job.outputs()
            if first is None and any(_has_steps(o) for o in outs):
                first = time.time() - t0
            time.sleep(0.05)
        outs = job.outputs()
        if first is None and any(_has_steps(o) for o in outs):
            first = time.time() - t0
        return keys[i % len(keys)], first if first is not None else math.inf, html.unescape(str(job.result()))

    def live(i: int) -> tuple[int, str, str]:
        c = clients[25 + i]
        args = [f"visitor {i} asks:", "tiny-random", "draft", 4, "greedy", 1.0, 1.0, 0, i, 10]
        result = c.predict(*args, api_name="/run")
        return i, html.unescape(result[0]), result[4]

    def arrive(_: int) -> Client:
        """A visitor with the page open: the client reads the app's config and API, and its session starts with a
        first call, as a browser's does with the page's load event (Gradio builds a session's state from all ~200
        components, 35 ms each on our VM, on its first call; a page pays that when it opens, not when Play is
        pressed). (Plain http on loopback: ssl_verify=False spares each request loading the CA bundle, which 30
        visitors in one test process otherwise pay in turn, under one GIL.)"""
        client = Client(url, verbose=False, download_files=False, ssl_verify=False)
        assert "pick a recorded run first" in html.unescape(str(client.predict(api_name="/replay_pause")))
        return client

    with serve(log_name="app-replay.log") as url, ThreadPoolExecutor(30) as pool:
        # the 30 visitors arrive first, a few at a time (30 at once time out on a busy 2-core machine before
        # anything of ours runs), then all act at once
        with ThreadPoolExecutor(4) as arriving:
            clients = list(arriving.map(arrive, range(30)))
        replays = [pool.submit(replay, i) for i in range(25)]
        lives = [pool.submit(live, i) for i in range(5)]
        r_results = [f.result(timeout=300) for f in replays]
        l_results = [f.result(timeout=300) for f in lives]
        alone = Client(url, verbose=False, download_files=False)
        solo = {i: alone.predict(f"visitor {i} asks:", "tiny-random", "draft", 4, "greedy", 1.0, 1.0, 0, i, 10,
                                 api_name="/run")[4] for i in (0, 4)}  # fmt: skip
    firsts = sorted(first for _, first, _ in r_results)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "thirty-visitors.json").write_text(json.dumps({"replay_first_step_s": firsts}) + "\n")
    print(f"replays' first steps after {firsts[0]:.2f} .. {firsts[-1]:.2f} s")
    for key, first, status in r_results:
        # every replay starts within 2 s of its visitor pressing it, 30 visitors at once (0.6-0.8 s seen on our
        # 2-core VM, with the five live runs going and the test's 30 clients in one process beside the server)
        assert first <= 2.0, f"replay {key} showed its first step {first:.2f} s after it was asked for ({firsts})"
        assert "done:" in status or "stopped" in status, (key, status[-300:])
    texts = {}
    for i, status, text in l_results:
        assert re.search(r"done: \d+ tokens", status), (i, status)
        texts[i] = text
    assert len(set(texts.values())) == 5  # distinct prompts and seeds, each its own output
    assert all(texts[i] == solo[i] for i in solo)  # and each the output of its own prompt


def _has_steps(outputs: Any) -> bool:
    """Whether a /replay update holds a delta with at least one step of the stream."""
    return any(isinstance(v, str) and v.startswith("<!--sv-live:") and 'data-step="' in v for v in outputs or ())


def test_a_replay_says_where_it_was_recorded_and_whether_that_machine_was_busy():
    from specviz.ui.replay_panel import recorded_on

    quiet = {"machine": {"cpu": "Some CPU", "cores": 2, "load_avg_1m": 1.4}, "date": "2026-12-01T16:00:00+0000"}
    assert recorded_on(quiet) == ", recorded on Some CPU (2 cores), 2026-12-01"
    busy = quiet | {"machine": quiet["machine"] | {"load_avg_1m": 6.5}}
    assert "a busy machine: load 6.5 on 2 cores" in recorded_on(busy)
    assert recorded_on({}) == ""
    assert recorded_on({"machine": {"cpu": "X", "cores": 2, "load_avg_1m": "high"}}) == ", recorded on X (2 cores)"
