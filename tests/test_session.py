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


def test_switching_presets_closes_the_old_pair():
    closed = []

    class Pair:
        def __init__(self, preset):
            self.preset, self.info = preset, {}

        def close(self):
            closed.append(self.preset)

    m = ModelManager("tiny-random", loader=lambda preset, progress=None: Pair(preset), warmup=False)
    assert list(m.wait("tiny-random"))[-1].state == "ready"
    assert list(m.wait("qwen-coder-3b-hub"))[-1].state == "ready"  # the fake loader loads nothing real
    assert closed == ["tiny-random"] and m.pair.preset == "qwen-coder-3b-hub"


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
