"""Shared fixtures: tiny random models built from configs (no downloads), in float64 so rounding cannot flip a greedy choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CHROMIUM, CHROMIUM_ARGS

from specviz.backends.codecs import CharCodec
from specviz.backends.lm import LM
from specviz.backends.tiny import perturbed_copy, tiny_model
from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.core.events import RunSummary

# Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's waiting made the sampling
# tests several times slower (one of them: 184 s with 2 threads, 31 s with 1). Tests marked slow run the 1.5B pair:
# they get torch's default, one thread per core, from before their fixtures are set up (the model loads included).
CORE_THREADS = torch.get_num_threads()
torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    torch.set_num_threads(CORE_THREADS if item.get_closest_marker("slow") else 1)


@pytest.fixture(scope="session")
def codec() -> CharCodec:
    return CharCodec()


@pytest.fixture(scope="session")
def tiny_pair(codec):
    """(target, draft) LMs: the draft is the target plus noise, so it agrees often but not always."""
    target = tiny_model(codec.vocab_size, seed=0, dtype=torch.float64, init=0.2)
    draft = perturbed_copy(target, noise=0.03, seed=1)
    return LM(target, "target"), LM(draft, "draft")


@pytest.fixture(scope="session")
def plain_greedy(tiny_pair):
    """plain_greedy(ids, max_new_tokens): the tiny target's plain greedy run, computed once per session (it depends on
    nothing else: gamma and the strategy options do not touch plain decoding), for the many tests that compare
    speculative output with it."""
    cache: dict[tuple[tuple[int, ...], int], RunSummary] = {}

    def get(ids: list[int], max_new_tokens: int) -> RunSummary:
        key = (tuple(ids), max_new_tokens)
        if key not in cache:
            cache[key] = run(tiny_pair[0], None, list(ids), GenConfig(max_new_tokens=max_new_tokens)).run()
        return cache[key]

    return get


@pytest.fixture(scope="session")
def small_vocab_pair():
    """A target and draft over 8 tokens, cheap enough to enumerate exact sequence probabilities."""
    target = tiny_model(8, seed=3, dtype=torch.float64, init=0.3, hidden=32)
    draft = perturbed_copy(target, noise=0.3, seed=4)
    return LM(target, "target"), LM(draft, "draft")


@pytest.fixture(scope="session")
def prompts(codec) -> list[list[int]]:
    texts = ["def add(a, b):\n    return", "The quick brown fox", "x", "for i in range(10):\n"]
    return [codec.encode(t) for t in texts]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium; missing chromium or Playwright is a failure, never a skip."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium not found at {CHROMIUM}: install it (apt-get install chromium) or set SPECVIZ_CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"the playwright Python package is missing ({e}): pip install playwright")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
