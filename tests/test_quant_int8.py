"""The quantised kernel's int8 path (quant_int8.h): its layout holds exactly gguf's weights; its outputs follow the
written arithmetic (each row's inputs quantised to 8 bits per 32, integer dots per sub-block, a float epilogue); every
path this CPU runs (AVX-512 VNNI, AVX2, portable) gives the same bits; each row's result is the same alone, among
others and in a long prefill; its outputs stay within a percent or two of the exact path's; SPECVIZ_QUANT=int8 builds
a GGUF model on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specviz.backends.gguf_reader import dequantize
from specviz.backends.kernels import quant as qk

OPS, WHY = qk.quant_kernel()
pytestmark = pytest.mark.skipif(OPS is None, reason=f"quantised kernel unavailable here: {WHY}")
TYPES = {"Q4_K": qk.Q4_K, "Q6_K": qk.Q6_K}
ROWS = (*range(1, 10), 17, 64, 65, 130)  # every tile size of both vector paths, and long passes


def layer(kind: str, n: int, k: int, seed: int, bias: bool = True) -> tuple[np.ndarray, qk.QuantLinear]:
    t = TYPES[kind]
    raw = qk.random_blocks(t, n, k, seed).numpy()
    b = torch.randn(n, generator=torch.Generator().manual_seed(seed)) if bias else None
    return raw, qk.QuantLinear.from_gguf(raw, t, n, k, b, int8=True)


def reference(x: torch.Tensor, raw: np.ndarray, t: int, n: int, k: int, bias: torch.Tensor | None) -> np.ndarray:
    """quant_int8.h's arithmetic in numpy (float64 epilogue, so equal to the kernel within float32 rounding): inputs
    quantised per 32 with round-half-even, the GGUF integers dotted, scaled per sub-block."""
    xs = x.double().numpy()
    g = xs.reshape(len(xs), k // 32, 32)
    amax = np.abs(g).max(-1, keepdims=True).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint((g.astype(np.float32) * inv).astype(np.float32)), -127, 127)
    d = (amax / np.float32(127)).astype(np.float64)
    xq = (q * d).reshape(len(xs), k)  # each input as the kernel sees it
    w = dequantize(raw, t, (n, k)).double().numpy()  # gguf's own weights
    y = xq @ w.T
    return y + (bias.double().numpy() if bias is not None else 0.0)


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("shape", [(37, 256), (100, 1536), (16, 8960)])
def test_the_layout_holds_ggufs_exact_weights(kind, shape):
    n, k = shape
    raw, lin = layer(kind, n, k, seed=n + k)
    assert lin.packed.numel() == -(-n // 16) * int(OPS.lib.sv8_packed_bytes(TYPES[kind], 16, k))
    exact = dequantize(raw, TYPES[kind], (n, k))
    assert torch.equal(lin.weight, exact)
    ids = torch.tensor([[n - 1, 0], [n // 2, n - 1]])
    assert torch.equal(lin.rows(ids), exact[ids])


@pytest.mark.parametrize("kind", TYPES)
def test_outputs_follow_the_written_arithmetic(kind):
    n, k = 75, 1536
    raw, lin = layer(kind, n, k, seed=3)
    x = torch.randn(6, k, generator=torch.Generator().manual_seed(4))
    x[2, 32:64] = 0.0  # a block of zeros quantises to zeros (no division by zero)
    got = lin(x).double().numpy()
    want = reference(x, raw, TYPES[kind], n, k, lin.bias)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("kind", TYPES)
def test_every_path_gives_the_same_bits_and_each_row_is_the_same_alone(kind):
    n, k = 50, 512
    _, lin = layer(kind, n, k, seed=5)
    x = torch.randn(max(ROWS), k, generator=torch.Generator().manual_seed(6))
    alone = {}
    for isa in qk.available_isas():
        with qk.forced_isa(isa):
            rows = torch.cat([lin(x[i : i + 1]) for i in range(len(x))])
            alone[isa] = rows
            for m in ROWS:
                assert torch.equal(lin(x[:m]), rows[:m]), (isa, m)
    first = next(iter(alone.values()))
    assert all(torch.equal(v, first) for v in alone.values()), list(alone)


def test_threads_split_the_work_without_changing_a_bit():
    _, lin = layer("Q4_K", 300, 1536, seed=7)
    x = torch.randn(20, 1536, generator=torch.Generator().manual_seed(8))
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lin(x)
        torch.set_num_threads(max(2, saved))
        assert torch.equal(lin(x), one)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("kind", TYPES)
def test_it_stays_close_to_the_exact_path(kind):
    n, k = 256, 1536
    raw, lin = layer(kind, n, k, seed=9, bias=False)
    exact = qk.QuantLinear.from_gguf(raw, TYPES[kind], n, k, None)
    x = torch.randn(8, k, generator=torch.Generator().manual_seed(10))
    a, b = exact(x), lin(x)
    assert 0 < float((a - b).norm() / a.norm()) < 0.02  # 8-bit inputs: not the same numbers, but close


def test_other_types_and_shapes_are_refused():
    assert qk.takes_int8(qk.Q4_K, 1536) and qk.takes_int8(qk.Q6_K, 256)
    assert not qk.takes_int8(qk.Q5_0, 1536) and not qk.takes_int8(qk.Q8_0, 1536) and not qk.takes_int8(qk.Q4_K, 96)
    raw = qk.random_blocks(qk.Q5_0, 16, 64, seed=1)
    with pytest.raises(ValueError, match="int8 path does not take Q5_0"):
        qk.repack(raw, qk.Q5_0, 16, 64, int8=True)


def test_the_env_var_builds_gguf_layers_on_it(monkeypatch, tmp_path):
    from test_gguf_quant import write_gguf  # a small GGUF file of our own writing

    from specviz.backends.gguf_quant import read_blocks

    path = write_gguf(tmp_path / "m.gguf", tied=False)
    monkeypatch.setenv("SPECVIZ_QUANT", "int8")
    assert qk.int8_mode()
    blocks = read_blocks(path)
    want = {name for name, (_, t, shape) in blocks.packed.items() if qk.takes_int8(t, shape[1])}
    assert want and blocks.int8 == want
    monkeypatch.setenv("SPECVIZ_QUANT", "1")
    assert read_blocks(path).int8 == set()


@pytest.mark.parametrize("strategy", ["draft", "drafttree"])
def test_speculative_greedy_output_is_plain_greedy_on_it(tmp_path, strategy):
    """A tiny GGUF model on the int8 path (its exact twin drafting): a chain of 4 and a token tree verified in one
    pass give plain greedy decoding's tokens, because no row's result depends on the rows beside it."""
    from types import SimpleNamespace

    from test_gguf_quant import config, write_gguf

    from specviz.backends.gguf_quant import build_model, read_blocks
    from specviz.backends.lm import LM
    from specviz.core.config import GenConfig
    from specviz.core.engine import run
    from specviz.proposers import build_proposer

    path = write_gguf(tmp_path / "m.gguf", tied=False)
    on8 = build_model(read_blocks(path, int8=True), config(False))
    assert any(isinstance(m, qk.QuantLinear) and m.int8 for m in on8.modules())
    prompt = list(range(10, 40))
    cfg = GenConfig(max_new_tokens=24, gamma=4)
    plain = run(LM(on8, "target"), None, prompt, cfg).run()
    pair = SimpleNamespace(
        target=LM(on8, "target"), draft=LM(build_model(read_blocks(path), config(False)), "draft", exact=False)
    )
    pair.preset = "tiny-gguf"
    spec = run(pair.target, build_proposer(strategy, pair, cfg), prompt, cfg).run()
    assert spec.output_ids == plain.output_ids
    assert spec.steps < plain.steps  # it did speculate: fewer target passes than tokens
