"""Our kernel over GGUF's quantised blocks: it builds here; each weight it forms is exactly gguf's float32 value; its
outputs are bitwise the float32 packed kernel's over the dequantised weights, on every path this CPU runs (AVX-512,
AVX2, portable), for every pass length; each row's result is the same alone, among 15 others or in a long prefill;
SPECVIZ_KERNEL_ISA forces a path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specviz.backends.gguf_reader import dequantize
from specviz.backends.kernels import kernel
from specviz.backends.kernels import quant as qk

OPS, WHY = qk.quant_kernel()
needs_kernel = pytest.mark.skipif(OPS is None, reason=f"quantised kernel unavailable here: {WHY}")
PACKED = kernel()[0]  # the float32 kernel the outputs must equal
needs_packed = pytest.mark.skipif(PACKED is None, reason="the float32 packed kernel is unavailable here")
TYPES = {"Q4_K": qk.Q4_K, "Q6_K": qk.Q6_K, "Q5_0": qk.Q5_0, "Q8_0": qk.Q8_0}
ROWS = (*range(1, 18), 24, 40, 64, 65, 130)  # every fused size, the scratch tiles, and prefills crossing a sweep


def random_blocks(ggml_type: int, n: int, k: int, seed: int) -> np.ndarray:
    """n rows of k weights as random GGUF blocks: any bytes, but sane (finite, small) f16 scales."""
    return qk.random_blocks(ggml_type, n, k, seed).numpy()


def quant_linear(ggml_type: int, raw: np.ndarray, n: int, k: int, bias: torch.Tensor | None) -> qk.QuantLinear:
    return qk.QuantLinear.from_gguf(raw, ggml_type, n, k, bias)


def test_quant_kernel_builds_on_our_machines():
    """CI runs on x86 machines with a C++ compiler: there it must build and run at least its AVX2 path."""
    if platform_x86() and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert OPS is not None, WHY
        assert {"portable", "avx2"} <= set(qk.available_isas())


def platform_x86() -> bool:
    import platform

    return platform.machine().lower() in ("x86_64", "amd64")


@needs_kernel
@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("shape", [(37, 256), (16, 512), (100, 1536), (1, 768)])
def test_every_weight_is_ggufs_float32_value(kind, shape):
    n, k = shape
    t = TYPES[kind]
    if not qk.supported(t, k):
        pytest.skip(f"{kind} needs rows of a multiple of 256")
    raw = random_blocks(t, n, k, seed=n * k + t)
    layer = quant_linear(t, raw, n, k, None)
    assert layer.packed.numel() == -(-n // 16) * qk.packed_bytes(t, 16, k)
    assert torch.equal(layer.weight, dequantize(raw, t, (n, k)))
    ids = torch.tensor([[n - 1, 0], [n // 2, n - 1]])
    assert torch.equal(layer.rows(ids), dequantize(raw, t, (n, k))[ids])


@needs_kernel
@needs_packed
@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("shape", [(37, 256), (100, 512), (300, 1536)])  # 37, 100, 300: a padded last block
@pytest.mark.parametrize("bias", [True, False])
def test_outputs_are_bitwise_the_float32_kernels_on_every_path(kind, shape, bias):
    n, k = shape
    t = TYPES[kind]
    raw = random_blocks(t, n, k, seed=7 * n + k + t)
    b = torch.randn(n) if bias else None
    layer = quant_linear(t, raw, n, k, b)
    packed = PACKED.pack_weight(dequantize(raw, t, (n, k)))
    x = torch.randn(max(ROWS), k)
    for m in ROWS:
        want = PACKED.packed_linear(x[:m], packed, torch.empty(0) if b is None else b, n)
        for isa in qk.available_isas():
            with qk.forced_isa(isa):
                assert torch.equal(layer(x[:m]), want), (isa, m)


@needs_kernel
@pytest.mark.parametrize("kind", TYPES)
def test_each_row_is_bitwise_the_same_alone_among_others_and_in_a_prefill(kind):
    t = TYPES[kind]
    n, k = 70, 512
    layer = quant_linear(t, random_blocks(t, n, k, seed=t), n, k, torch.randn(n))
    x = torch.randn(130, k)
    for isa in qk.available_isas():
        with qk.forced_isa(isa):
            alone = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])
            assert torch.equal(layer(x[:16]), alone[:16]), isa  # with 15 others
            assert torch.equal(layer(x), alone), isa  # a 130-row prefill
            assert torch.equal(layer(x[5:21])[0], alone[5]), isa  # as another pass's first row
            assert torch.equal(layer(x[None, :3]), alone[None, :3]), isa  # (batch, T, K) inputs


@needs_kernel
def test_threads_split_the_work_without_changing_a_bit():
    """The tests run on one torch thread; here two, for every pass length (the repacking too)."""
    t, n, k = qk.Q4_K, 200, 512
    raw = random_blocks(t, n, k, seed=5)
    x = torch.randn(130, k)
    one = quant_linear(t, raw, n, k, None)
    outs = {m: one(x[:m]) for m in (1, 3, 9, 130)}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = quant_linear(t, raw, n, k, None)
        assert torch.equal(two.packed, one.packed)
        for m, want in outs.items():
            for isa in qk.available_isas():
                with qk.forced_isa(isa):
                    assert torch.equal(two(x[:m]), want), (isa, m)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
def test_paths_agree_bitwise_on_a_wide_layer():
    """The ffn_down shape of the 1.5B target (K 8960, Q6_K): long FMA chains, every path the same bits."""
    t, n, k = qk.Q6_K, 40, 8960
    layer = quant_linear(t, random_blocks(t, n, k, seed=3), n, k, None)
    x = torch.randn(9, k)
    outs = {}
    for isa in qk.available_isas():
        with qk.forced_isa(isa):
            outs[isa] = layer(x)
    assert all(torch.equal(v, outs["portable"]) for v in outs.values()), list(outs)


@needs_kernel
def test_embedding_reads_exact_rows_and_refuses_bad_ids():
    t, n, k = qk.Q5_0, 50, 64
    raw = random_blocks(t, n, k, seed=11)
    emb = qk.QuantEmbedding(quant_linear(t, raw, n, k, None))
    ids = torch.tensor([[3, 49, 0]])
    assert torch.equal(emb(ids), dequantize(raw, t, (n, k))[ids])
    with pytest.raises(IndexError):
        emb(torch.tensor([50]))


@needs_kernel
def test_unsupported_shapes_are_refused():
    assert not qk.supported(qk.Q4_K, 896) and qk.supported(qk.Q5_0, 896) and not qk.supported(2, 256)
    raw = random_blocks(qk.Q8_0, 4, 64, seed=0)
    with pytest.raises(ValueError):
        qk.repack(raw, qk.Q4_K, 4, 96)


@needs_kernel
def test_the_isa_env_var_forces_a_path(monkeypatch):
    def status(value: str) -> str:
        monkeypatch.setenv("SPECVIZ_KERNEL_ISA", value)
        qk._library.cache_clear()
        return qk.quant_kernel()[1]

    try:
        for isa in qk.available_isas():
            assert status(isa) == f"compiled, {isa} (forced)"
            assert qk.isa_name(qk.quant_kernel()[0].isa) == isa
        assert "use one of" in status("sse9") and qk.quant_kernel()[0] is None
        monkeypatch.setenv("SPECVIZ_QUANT", "0")
        assert status("portable") == "off (SPECVIZ_QUANT=0)"
    finally:
        monkeypatch.delenv("SPECVIZ_KERNEL_ISA")
        monkeypatch.delenv("SPECVIZ_QUANT", raising=False)
        qk._library.cache_clear()
    assert qk.quant_kernel()[0] is not None
