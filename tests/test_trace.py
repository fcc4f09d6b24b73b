"""Hostile or broken trace files: each is one clear ConfigError, read in bounded time and memory; a sound trace reads."""

from __future__ import annotations

import contextlib
import json
import time

import pytest

from specviz.backends.loading import load_pair
from specviz.core.config import ConfigError, GenConfig
from specviz.core.engine import run
from specviz.core.events import trace_to_json
from specviz.core.trace import MAX_TRACE_BYTES, read_trace, read_trace_file
from specviz.proposers import build_proposer


@pytest.fixture(scope="module")
def recorded() -> tuple[dict, int]:
    """A real greedy trace of the tiny pair, as the Run tab downloads it, and the vocabulary size."""
    pair = load_pair("tiny-random")
    cfg = GenConfig(gamma=3, max_new_tokens=16)
    prompt = "def add(a, b):"
    r = run(pair.target, build_proposer("draft", pair, cfg), pair.codec.encode(prompt), cfg, piece=pair.codec.piece)
    steps = list(r)
    text = trace_to_json(steps, r.summary, {"prompt": prompt, "preset": pair.preset, "config": cfg.to_dict()})
    return json.loads(text), pair.target.vocab_size


def changed(doc: dict, path: str, value) -> str:
    d = json.loads(json.dumps(doc))
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    node[last] = value
    return json.dumps(d)


def test_a_sound_trace_reads_with_its_config(recorded):
    doc, vocab = recorded
    t = read_trace(json.dumps(doc), vocab, greedy=True)
    assert t.config.gamma == 3 and t.summary.output_ids == doc["summary"]["output_ids"]
    assert len(t.steps) == len(doc["steps"]) and t.prompt == "def add(a, b):"


HOSTILE = {
    "gamma -1": ("meta.config.gamma", -1, "gamma must be between 1 and 32"),
    "gamma 10**9": ("meta.config.gamma", 10**9, "gamma must be between"),
    "NaN top-p": ("meta.config.top_p", float("nan"), "top_p = nan"),
    "negative max-new-tokens": ("meta.config.max_new_tokens", -3, "max_new_tokens must be between"),
    "config a list": ("meta.config", [1, 2], "not a mapping"),
    "20,000 output ids": ("summary.output_ids", [1] * 20_000, "more than its max_new_tokens"),
    "negative id": ("summary.output_ids", [3, -1], "whole numbers from 0"),
    "id a string": ("summary.output_ids", [3, "x"], "whole numbers from 0"),
    "id a list": ("summary.output_ids", [[3]], "whole numbers from 0"),
    "no summary": ("summary", None, "no finished run"),
    "no prompt": ("meta.prompt", "", "does not record its prompt"),
    "steps not a list": ("steps", {"a": 1}, "no list of steps"),
    "sampled run": ("meta.config.rule", "sample", "replay needs a greedy run"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_trace_is_one_clear_error(recorded, case):
    doc, vocab = recorded
    path, value, message = HOSTILE[case]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_trace(changed(doc, path, value), vocab, greedy=True)


def test_out_of_vocabulary_ids_are_refused(recorded):
    doc, vocab = recorded
    with pytest.raises(ConfigError, match="outside this model's vocabulary"):
        read_trace(changed(doc, "summary.output_ids", [vocab]), vocab)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("not json", "not a specviz event trace: not JSON"),
        ("[1, 2]", "no list of steps"),
        ('{"steps": [], "meta": {}, "summary": {"output_ids": [1]}}', "does not record its prompt"),
    ],
)
def test_shapes_that_are_not_traces(text, message):
    with pytest.raises(ConfigError, match=message):
        read_trace(text)


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_TRACE_BYTES + 1)  # sparse: nothing is written, and nothing may be read
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="at most 8 MB"):
        read_trace_file(big)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(ConfigError, match="could not read the trace"):
        read_trace_file(tmp_path / "missing.json")


def test_random_json_shapes_never_escape_as_another_error(recorded):
    """A fuzz of random edits: every outcome is a Trace or a ConfigError, never a crash or a hang."""
    import random

    doc, vocab = recorded
    rng = random.Random(0)
    values = [None, -1, 0, 1.5, float("inf"), "x", [], {}, [None], {"a": []}, True, 2**70]
    paths = ["meta", "meta.config", "meta.config.gamma", "meta.config.top_k", "meta.config.temperature",
             "meta.config.options", "meta.prompt", "summary", "summary.output_ids", "summary.steps", "steps"]  # fmt: skip
    for _ in range(300):
        text = changed(doc, rng.choice(paths), rng.choice(values))
        with contextlib.suppress(ConfigError):
            read_trace(text, vocab)
