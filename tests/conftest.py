"""Shared fixtures: tiny random models built from configs (no downloads), in float64 so rounding cannot flip a greedy choice."""

from __future__ import annotations

import pytest
import torch

from specviz.backends.codecs import CharCodec  # noqa: E402
from specviz.backends.lm import LM  # noqa: E402
from specviz.backends.tiny import perturbed_copy, tiny_model  # noqa: E402

torch.set_num_threads(2)


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
def small_vocab_pair():
    """A target and draft over 8 tokens, cheap enough to enumerate exact sequence probabilities."""
    target = tiny_model(8, seed=3, dtype=torch.float64, init=0.3, hidden=32)
    draft = perturbed_copy(target, noise=0.3, seed=4)
    return LM(target, "target"), LM(draft, "draft")


@pytest.fixture(scope="session")
def prompts(codec) -> list[list[int]]:
    texts = ["def add(a, b):\n    return", "The quick brown fox", "x", "for i in range(10):\n"]
    return [codec.encode(t) for t in texts]
