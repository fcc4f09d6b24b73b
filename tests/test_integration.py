"""The embedded pair, offline: greedy speculative output equals plain greedy on real prompts (float32, CPU), token
trees included, whose nodes get bitwise the logits of their chains on the real layers."""

from __future__ import annotations

import pytest
import torch

from specviz.backends.loading import load_pair
from specviz.bench.suite import aggregate, bench_rows
from specviz.bench.tables import format_table
from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.proposers import build_proposer

pytestmark = pytest.mark.slow

PROMPTS = [
    "Write a Python function `is_prime(n)` that returns True when n is a prime number.",
    "Translate into French: The weather will be sunny in the morning.",
    "A shop sells apples at 3 for 2 euros. How much do 27 apples cost?",
]


@pytest.fixture(scope="module")
def pair():
    p = load_pair("qwen-coder-1.5b")  # builds the cache on first use (minutes), then loads in seconds
    yield p
    p.close()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_embedded_pair_greedy_speculative_equals_plain(pair, prompt):
    ids = pair.codec.encode(prompt)
    cfg = GenConfig(gamma=4, max_new_tokens=32)
    kw = dict(eos_ids=pair.codec.eos_ids, piece=pair.codec.piece)
    plain = run(pair.target, None, ids, cfg, **kw).run()
    spec = run(pair.target, build_proposer("draft", pair, cfg), ids, cfg, **kw).run()
    assert spec.output_ids == plain.output_ids
    assert spec.acceptance_rate > 0.3  # the real draft agrees with the real target most of the time
    assert spec.tokens_per_step > 1.5
    assert pair.codec.decode(plain.output_ids).strip()


@pytest.mark.parametrize("strategy", ["drafttree", "medusatree", "ngramtree", "multidraft"])
def test_embedded_pair_token_trees_equal_plain(pair, strategy):
    ids = pair.codec.encode(PROMPTS[0])
    cfg = GenConfig(gamma=4, max_new_tokens=24, options={"tree_nodes": 24})
    kw = dict(eos_ids=pair.codec.eos_ids, piece=pair.codec.piece)
    plain = run(pair.target, None, ids, cfg, **kw).run()
    r = run(pair.target, build_proposer(strategy, pair, cfg), ids, cfg, **kw)
    steps = list(r)
    assert r.summary.output_ids == plain.output_ids
    assert any(st.tree and len(st.tree) > 1 for st in steps) or strategy == "ngramtree"


def test_embedded_tree_pass_is_bitwise_the_chains(pair):
    """On the real target (packed kernel, exact attention): a 3-branch tree's nodes against each chain alone."""
    lm = pair.target
    ids = pair.codec.encode(PROMPTS[1])
    toks = pair.codec.encode(" le la les")[-6:]
    parents = [-1, 0, 1, -1, 3, 0]  # two branches under the root, one forking after the first token
    chains = [[0, 1, 2], [3, 4], [0, 5]]
    lm.reset()
    lm.forward(ids[:-1])
    both = lm.forward_tree([ids[-1]] + toks, [-1] + [p + 1 for p in parents])
    for chain in chains:
        lm.reset()
        lm.forward(ids[:-1])
        alone = lm.forward([ids[-1]] + [toks[i] for i in chain])
        assert torch.equal(both[0], alone[0])
        for j, node in enumerate(chain):
            assert torch.equal(both[node + 1], alone[j + 1]), (chain, node)


def test_chat_template_is_applied(pair):
    ids = pair.codec.encode("hi")
    assert "<|im_start|>assistant" in pair.codec.tok.decode(ids)


def test_bench_table_on_embedded_pair(pair):
    rows = bench_rows(pair, [("code", "is_prime", PROMPTS[0])], ["draft"], GenConfig(gamma=4, max_new_tokens=16))
    table = format_table(aggregate(rows, "suite"))
    assert [r["strategy"] for r in rows] == ["plain", "draft"]
    assert rows[1]["identical"] is True and rows[1]["speedup"] > 0
    assert "| code  | draft" in table
