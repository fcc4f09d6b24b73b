"""The embedded pair on the quantised kernel (the CPU default): logits bitwise the float32 path's, real layers of every
block type bitwise the float32 kernel's on every path this CPU runs, and greedy output identical to plain decoding for
every strategy."""

from __future__ import annotations

import pytest
import torch

from specviz.backends.gguf_quant import MODEL_FILE
from specviz.backends.gguf_reader import GGUFFile
from specviz.backends.kernels import PackedLinear, kernel
from specviz.backends.kernels import quant as qk
from specviz.backends.loading import float32_twin, load_pair
from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.proposers import STRATEGIES, build_proposer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(qk.quant_kernel()[0] is None or kernel()[0] is None, reason="needs both CPU kernels"),
]
PROMPT = "Write a Python function `is_prime(n)` that returns True when n is a prime number."


@pytest.fixture(scope="module")
def pair():
    p = load_pair("qwen-coder-1.5b")  # builds the GGUF cache on first use (seconds), then reads it
    assert "quantised kernel" in p.info["linear"] and "quantised kernel" in p.info["draft_linear"], p.info
    yield p
    p.close()


def _passes(lm, ids: list[int], more: list[int]) -> list[torch.Tensor]:
    """Logits of a prompt's prefill, three one-token passes and a five-token verification pass."""
    lm.reset()
    out = [lm.forward(ids)]
    for t in more[:3]:
        out.append(lm.forward([t]))
    out.append(lm.forward(more[3:8]))
    return out


@pytest.mark.parametrize("role", ["draft", "target"])
def test_logits_are_bitwise_the_float32_paths(pair, role):
    """Same prompt, same passes: the quantised model and the float32 path's model (every weight dequantised, the
    float32 packed kernel) give the same logits, bit for bit."""
    lm = pair.target if role == "target" else pair.draft
    ids = pair.codec.encode(PROMPT)
    more = pair.codec.encode(" def is_prime(n):\n    if n < 2:\n        return False")[-8:]
    ours = _passes(lm, ids, more)
    twin = float32_twin(pair, role)
    theirs = _passes(twin, ids, more)
    del twin
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.equal(a, b), (role, i, (a - b).abs().max().item())


def test_real_layers_of_every_type_are_bitwise_the_float32_kernels_on_every_path(pair):
    """A layer of each block type the pair holds (Q4_K, Q6_K from the target; Q5_0, Q8_0 from the draft): its weights
    are gguf's dequantised values, and every path gives the float32 kernel's bits for 1, 5 and 100 rows."""
    picks = {"target": ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"], "draft": ["blk.3.ffn_up.weight"]}
    picks["draft"].append("output.weight")  # Q8_0: 151936 x 896
    seen = set()
    for role, names in picks.items():
        g = GGUFFile(embedded(pair, role) / MODEL_FILE)
        try:
            for name in names:
                t = g.tensors[name]
                n, k = t.shape
                layer = qk.QuantLinear.from_gguf(g.raw(name), t.ggml_type, n, k)
                w = g.tensor(name)
                assert torch.equal(layer.weight, w), name
                lin = torch.nn.Linear(k, n, bias=False)
                lin.weight = torch.nn.Parameter(w)
                ref = PackedLinear(lin)
                x = torch.randn(100, k) * 0.5
                with torch.inference_mode():
                    for m in (1, 5, 100):
                        want = ref(x[:m])
                        for isa in qk.available_isas():
                            if isa == "portable" and n * m > 2_000_000:  # scalar fma calls: minutes on the head
                                continue
                            with qk.forced_isa(isa):
                                assert torch.equal(layer(x[:m]), want), (name, isa, m)
                seen.add(qk.TYPES[t.ggml_type])
        finally:
            g.close()
    assert seen == {"Q4_K", "Q6_K", "Q5_0", "Q8_0"}


def embedded(pair, role: str):
    from pathlib import Path

    return Path(pair.info[role]["path"])


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "plain"])
def test_every_strategy_is_greedy_identical_to_plain(pair, strategy):
    ids = pair.codec.encode(PROMPT)
    cfg = GenConfig(gamma=4, max_new_tokens=24)
    kw = dict(eos_ids=pair.codec.eos_ids, piece=pair.codec.piece)
    plain = run(pair.target, None, ids, cfg, **kw).run()
    spec = run(pair.target, build_proposer(strategy, pair, cfg), ids, cfg, **kw).run()
    assert spec.output_ids == plain.output_ids, strategy


@pytest.fixture(scope="module")
def on8(pair):
    """The pair on the int8 path (SPECVIZ_QUANT=int8), rebuilt from the same GGUFs."""
    from specviz.backends.loading import int8_twin

    twin = int8_twin(pair)
    assert "int8 path" in twin.info["linear"], twin.info
    yield twin


@pytest.mark.parametrize("strategy", ["draft", "ngram", "drafttree", "multidraft"])
def test_on_the_int8_path_speculation_is_greedy_identical_to_plain(on8, strategy):
    """Not the float32 numbers, but still batch-invariant: each strategy's greedy output is the int8 path's own plain
    greedy output (chains, a token tree and several cache rows among them)."""
    ids = on8.codec.encode(PROMPT)
    cfg = GenConfig(gamma=4, max_new_tokens=24)
    kw = dict(eos_ids=on8.codec.eos_ids, piece=on8.codec.piece)
    plain = run(on8.target, None, ids, cfg, **kw).run()
    spec = run(on8.target, build_proposer(strategy, on8, cfg), ids, cfg, **kw).run()
    assert spec.output_ids == plain.output_ids, strategy


def test_the_int8_paths_logits_stay_close_to_the_exact_ones(pair, on8):
    ids = pair.codec.encode(PROMPT)
    exact, ours = _passes(pair.target, ids, ids[-8:]), _passes(on8.target, ids, ids[-8:])
    for a, b in zip(exact, ours, strict=True):
        assert not torch.equal(a, b)  # 8-bit inputs: other numbers ...
        assert float((a - b).norm() / a.norm()) < 0.05  # ... but close
        assert float((a.argmax(-1) == b.argmax(-1)).float().mean()) >= 0.9
