"""The UI's session layer on the tiny-random pair: background loading and its errors, preset swaps free the old pair,
runs with a measured plain baseline, Stop within a step, and step mode (also after someone else used the models)."""

from __future__ import annotations

import threading
import time

import pytest

from specviz.core.config import ConfigError
from specviz.core.engine import run
from specviz.proposers import build_proposer
from specviz.ui.models import ModelManager
from specviz.ui.session import make_request, stream_run
from specviz.ui.step_mode import StepSession
from specviz.ui.visitors import Visitors

PROMPT = "def add(a, b):\n    return a + b\n"


def request(**kw):
    args = dict(
        prompt=PROMPT,
        preset="tiny-random",
        strategy="draft",
        gamma=4,
        rule="greedy",
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=40,
        seed=0,
    )
    args.update(kw)
    return make_request(**args)


@pytest.fixture(scope="module")
def manager() -> ModelManager:
    m = ModelManager("tiny-random")
    states = list(m.wait("tiny-random"))
    assert states[-1].state == "ready", states[-1]
    return m


def test_bad_input_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="prompt is empty"):
        request(prompt="  \n")
    with pytest.raises(ConfigError, match="gamma must be between 1"):
        request(gamma=0.0)
    with pytest.raises(ConfigError, match="unknown strategy"):
        request(strategy="telepathy")
    with pytest.raises(ConfigError, match="max new tokens is empty"):
        request(max_new_tokens=None)
    assert request(gamma=3.0, seed=2.0).cfg.gamma == 3  # whole floats from sliders become ints


def test_a_model_that_fails_to_load_reports_and_the_manager_survives():
    def broken(preset, progress=None):
        progress(0.5, "halfway")
        raise OSError("disk on fire")

    m = ModelManager("tiny-random", loader=broken, warmup=False)
    last = list(m.wait("tiny-random"))[-1]
    assert last.state == "error" and "disk on fire" in last.message and "Traceback" not in last.message
    stop = threading.Event()
    states = list(stream_run(m, request(), stop))
    assert states[-1].phase == "error" and "could not load" in states[-1].message


def test_a_run_pressed_before_the_models_are_ready_waits():
    from specviz.backends.loading import load_pair

    def slow(preset, progress=None):
        for i in range(4):
            progress(i / 4, f"part {i}")
            time.sleep(0.2)
        return load_pair(preset, progress=progress)

    m = ModelManager("tiny-random", loader=slow, warmup=False)
    seen = [(s.phase, s.message) for s in stream_run(m, request(max_new_tokens=8), threading.Event())]
    assert seen[0][0] == "loading" and "waiting for the models (tiny-random)" in seen[0][1]
    assert seen[-1][0] == "done"


def test_only_offered_presets_load_and_they_stay_side_by_side():
    loaded = []

    class Pair:
        def __init__(self, preset):
            self.preset, self.info = preset, {}
            loaded.append(preset)

        def close(self):
            raise AssertionError("a visitor's choice must never unload a pair")

    m = ModelManager(
        "tiny-random", loader=lambda preset, progress=None: Pair(preset), warmup=False, allowed=["qwen-coder-3b-hub"]
    )
    assert m.allowed == ("tiny-random", "qwen-coder-3b-hub")
    with pytest.raises(ConfigError, match="'qwen-coder-7b-hub' is not offered here; pick one of: tiny-random"):
        m.request("qwen-coder-7b-hub")
    assert loaded == [] and m.status().state == "idle"  # the refusal changed nothing
    assert list(m.wait("tiny-random"))[-1].state == "ready"
    assert list(m.wait("qwen-coder-3b-hub"))[-1].state == "ready"  # the fake loader loads nothing real
    assert loaded == ["tiny-random", "qwen-coder-3b-hub"]
    assert m.pair.preset == "tiny-random" and m.pair_for("qwen-coder-3b-hub").preset == "qwen-coder-3b-hub"
    with pytest.raises(ConfigError, match="not offered"):
        list(stream_run(m, request(preset="qwen-coder-7b-hub"), threading.Event()))


def test_a_visitor_picking_another_offered_preset_leaves_a_running_run_alone():
    from dataclasses import replace

    from specviz.backends.loading import load_pair

    def loader(preset, progress=None):  # two names for the tiny pair, loaded separately
        return replace(load_pair("tiny-random", progress=progress), preset=preset)

    m = ModelManager("tiny-random", loader=loader, warmup=False, allowed=["qwen-coder-3b-hub"])
    assert list(m.wait("tiny-random"))[-1].state == "ready"
    first = m.pair
    stop = threading.Event()
    run_a = stream_run(m, request(max_new_tokens=300), stop, min_interval=0.01)
    for state in run_a:
        if state.spec and state.spec.steps:
            break  # visitor A's run is under way
    assert list(m.wait("qwen-coder-3b-hub"))[-1].state == "ready"  # visitor B picks the other pair meanwhile
    state = list(run_a)[-1]
    assert state.phase == "done", state.message
    assert state.spec.summary.stop_reason != "stopped" and m.pair is first and first.target is not None
    b = list(stream_run(m, request(preset="qwen-coder-3b-hub", max_new_tokens=12), threading.Event()))[-1]
    assert b.phase == "done" and b.spec.summary.new_tokens == 12


def test_the_job_budget_stops_a_long_run_and_frees_the_models(manager):
    manager.job_seconds = 0.5
    try:
        t0 = time.perf_counter()
        final = list(
            stream_run(manager, request(max_new_tokens=1500, strategy="layerskip", gamma=16), threading.Event())
        )
        assert time.perf_counter() - t0 < 10
    finally:
        manager.job_seconds = 180.0
    last = final[-1]
    assert last.phase == "stopped" and "time budget of 0.5 s" in last.message, last.message
    assert last.spec.summary.new_tokens < 1500 and last.meta["over_budget"]
    after = list(stream_run(manager, request(max_new_tokens=10), threading.Event()))[-1]
    assert after.phase == "done", after.message  # the next job runs


def test_run_measures_the_plain_baseline(manager):
    stop = threading.Event()
    states = list(stream_run(manager, request(max_new_tokens=60), stop, min_interval=0.05))
    final = states[-1]
    assert final.phase == "done", final.message
    spec, base = final.spec, final.baseline
    assert spec.strategy == "draft" and base.strategy == "plain"
    assert spec.summary.new_tokens == base.summary.new_tokens == len(spec.summary.output_ids)
    assert spec.summary.speedup == pytest.approx(spec.summary.tokens_per_s / base.summary.tokens_per_s)
    assert final.meta["same_as_plain"] is True  # greedy speculative decoding is lossless
    assert [s.step for s in spec.steps] == list(range(spec.summary.steps))
    assert final.prompt_shown == PROMPT  # the tiny pair has no chat template, so the prompt is shown
    assert "vs plain" in final.message


def test_stop_ends_the_run_within_a_step(manager):
    stop = threading.Event()
    seen = 0
    for state in stream_run(manager, request(max_new_tokens=1500), stop, min_interval=0.01):
        if state.spec and state.spec.steps and not stop.is_set():
            stop.set()
            seen = len(state.spec.steps)
    assert state.phase == "stopped" and "stopped after" in state.message
    assert state.spec.summary.stop_reason == "stopped"
    assert seen and state.spec.summary.new_tokens < 1500  # the engine checks the flag before every step
    assert not state.baseline.steps  # no baseline after a stop
    # the manager is free again
    assert manager.lock.acquire(timeout=5)
    manager.lock.release()


def test_step_mode_matches_a_full_run_even_when_others_run_in_between(manager):
    req = request(rule="sample", seed=0)
    pair = manager.pair
    full = list(
        run(
            pair.target,
            build_proposer("draft", pair, req.cfg),
            pair.codec.encode(PROMPT),
            req.cfg,
            eos_ids=pair.codec.eos_ids,
            piece=pair.codec.piece,
        )
    )
    session = StepSession(manager, req)
    for _ in range(2):
        session.advance()
    # another visitor's run uses the shared caches; the session replays and carries on identically
    list(stream_run(manager, request(max_new_tokens=10), threading.Event()))
    session.advance()
    got = [[t.id for t in s.tokens] for s in session.steps]
    assert got == [[t.id for t in s.tokens] for s in full[:3]]
    state = session.state()
    assert state.phase == "step" and state.current == 2 and len(state.tracks[0].steps) == 3
    for s in session.steps:  # every step carries the engine's top-N p and q where the target spoke
        d = state.details[s.step]
        assert len(d["tokens"]) == len(d["p"]) > 0
    while session.advance() is not None:
        pass
    assert session.finished and session.summary is not None
    assert len(session.steps) == len(full)


def test_visitors_are_kept_apart_and_bounded():
    v = Visitors(capacity=2)
    a = v.get("a")
    a.stop.set()
    assert not v.get("b").stop.is_set() and v.get("a") is a
    v.get("c")
    v.get("d")
    assert v.get("a") is not a  # the oldest was dropped
    v.drop("a")


def test_throttle_bounds_redraws(manager):
    t0 = time.perf_counter()
    states = list(stream_run(manager, request(max_new_tokens=200), threading.Event(), min_interval=0.25))
    wall = time.perf_counter() - t0
    assert len(states) <= wall / 0.25 + 3  # at most one snapshot per interval, plus the final one
    assert states[-1].phase == "done"


def test_a_lab_job_past_its_budget_is_stopped_with_a_message(manager):
    from specviz.ui.common import run_on_pair

    def work(pair, w):  # a measurement that checks should_stop() between its parts, as the lab's do
        while not w.should_stop():
            time.sleep(0.01)
        return "partial"

    manager.job_seconds = 0.3
    try:
        with pytest.raises(ConfigError, match=r"^stopped: this job reached its time budget of 0.3 s"):
            list(run_on_pair(manager, threading.Event(), "status", work))
    finally:
        manager.job_seconds = 180.0
    assert manager.lock.acquire(timeout=5)  # the models are free again
    manager.lock.release()
