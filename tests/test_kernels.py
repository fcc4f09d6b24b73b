"""Our packed linear kernel (float32 or bf16 weights): it builds here, matches torch's linear for every pass length
(decode, verification, prefill), gives each row bitwise the same result whatever rows come with it, packs and unpacks
weights exactly (a tied input embedding reads the packed LM head), and keeps a model's greedy output unchanged."""

from __future__ import annotations

import pytest
import torch

from specviz.backends import cache_reader
from specviz.backends.codecs import CharCodec
from specviz.backends.fastpath import target_fast_path
from specviz.backends.kernels import PackedEmbedding, PackedLinear, kernel, swap_linears, unpack_rows
from specviz.backends.lm import LM
from specviz.backends.tiny import tiny_config, tiny_model
from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.proposers import NgramProposer

OPS, WHY = kernel()
needs_kernel = pytest.mark.skipif(OPS is None, reason=f"kernel unavailable here: {WHY}")
ROWS = (*range(1, 15), 19, 40)  # every tile shape: 1..6 rows, 7..12 rows, and longer passes in 6-row tiles


def test_kernel_builds_on_our_machines():
    """CI runs on AVX2 machines with a C++ compiler: there the kernel must build (else the speed claims lapse)."""
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert OPS is not None, WHY


@needs_kernel
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(96, 64), (37, 200), (300, 13), (16, 1)])
def test_matches_torch_linear_for_every_row_count(bias, shape):
    n, k = shape  # 37 and 300 are not multiples of 16: the last block is padded
    torch.manual_seed(n + k)
    w, b = torch.randn(n, k), torch.randn(n) if bias else torch.empty(0)
    packed = OPS.pack_weight(w)
    assert packed.shape == ((n + 15) // 16, k, 16)
    x = torch.randn(max(ROWS), k, dtype=torch.float64).float()
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double() if bias else None)
    for m in ROWS:
        y = OPS.packed_linear(x[:m], packed, b, n)
        torch.testing.assert_close(y.double(), ref[:m], rtol=1e-5, atol=1e-4)


@needs_kernel
def test_each_row_is_bitwise_the_same_in_any_batch():
    torch.manual_seed(0)
    w, b = torch.randn(200, 136), torch.randn(200)
    packed = OPS.pack_weight(w)
    x = torch.randn(max(ROWS), 136)
    alone = torch.cat([OPS.packed_linear(x[i : i + 1], packed, b, 200) for i in range(max(ROWS))])
    for m in ROWS[1:]:
        assert torch.equal(OPS.packed_linear(x[:m], packed, b, 200), alone[:m]), m
        assert torch.equal(OPS.packed_linear(x[m - 1 :], packed, b, 200)[0], alone[m - 1])  # as another batch's first


@needs_kernel
def test_bf16_weights_are_widened_exactly_and_batch_invariant():
    """The draft's bf16 packed weights: float32 arithmetic on the exactly widened weights, any batch."""
    torch.manual_seed(2)
    w, b = torch.randn(70, 96), torch.randn(70)
    w16 = w.to(torch.bfloat16)
    packed = OPS.pack_weight(w16)
    assert packed.dtype == torch.bfloat16 and torch.equal(unpack_rows(packed, torch.arange(70)), w16)
    x = torch.randn(max(ROWS), 96)
    ref = torch.nn.functional.linear(x.double(), w16.double(), b.double())
    alone = torch.cat([OPS.packed_linear(x[i : i + 1], packed, b, 70) for i in range(max(ROWS))])
    torch.testing.assert_close(alone.double(), ref, rtol=1e-5, atol=1e-4)
    for m in ROWS:
        assert torch.equal(OPS.packed_linear(x[:m], packed, b, 70), alone[:m]), m


@needs_kernel
def test_wrong_shapes_are_clear_errors():
    packed = OPS.pack_weight(torch.randn(40, 24))
    with pytest.raises(RuntimeError, match="input width 23"):
        OPS.packed_linear(torch.randn(2, 23), packed, torch.empty(0), 40)
    with pytest.raises(RuntimeError, match="N=60"):
        OPS.packed_linear(torch.randn(2, 24), packed, torch.empty(0), 60)


@needs_kernel
def test_packed_linear_module_matches_and_unpacks_exactly():
    torch.manual_seed(1)
    lin = torch.nn.Linear(48, 40)
    fast = PackedLinear(lin)
    assert torch.equal(fast.weight, lin.weight)  # packing loses nothing
    assert not any(p.data_ptr() == lin.weight.data_ptr() for p in fast.parameters())
    ids = torch.tensor([[0, 17], [39, 16]])
    assert torch.equal(unpack_rows(fast.packed, ids), lin.weight[ids])
    with torch.no_grad():
        for rows in (1, 5, 16, 70):
            x = torch.randn(1, rows, 48)
            torch.testing.assert_close(fast(x), lin(x), rtol=1e-5, atol=1e-5)
            assert fast(x).shape == (1, rows, 40)


@needs_kernel
def test_tied_embedding_reads_the_packed_head_and_output_is_unchanged():
    from transformers import AutoModelForCausalLM

    codec = CharCodec()
    cfg = tiny_config(codec.vocab_size, init=0.2)
    cfg.tie_word_embeddings = True
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    ids = codec.encode("for i in range(10):\n    print(i)\n")
    before = run(LM(model, "t"), None, ids, GenConfig(max_new_tokens=40)).run().output_ids
    table = model.get_input_embeddings().weight.detach().clone()
    swap_linears(model)
    emb = model.get_input_embeddings()
    assert isinstance(emb, PackedEmbedding) and emb.head[0] is model.get_output_embeddings()
    assert torch.equal(emb(torch.arange(codec.vocab_size)), table)
    assert run(LM(model, "t"), None, ids, GenConfig(max_new_tokens=40)).run().output_ids == before


def test_fast_target_keeps_greedy_output_identical():
    codec = CharCodec()
    model = tiny_model(codec.vocab_size, seed=0, init=0.2)
    ids = codec.encode("def add(a, b):\n    return a + b\n\ndef add(a, b):\n")
    cfg = GenConfig(gamma=6, max_new_tokens=60)
    plain = run(LM(model, "t"), None, ids, cfg).run()
    fast, how = target_fast_path(tiny_model(codec.vocab_size, seed=0, init=0.2))
    assert ("kernel" in how) == (OPS is not None)
    lm = LM(fast, "fast")
    assert run(lm, None, ids, cfg).run().output_ids == plain.output_ids
    spec = run(lm, NgramProposer(6), ids, cfg).run()
    assert spec.output_ids == plain.output_ids and spec.accepted > 0


@needs_kernel
def test_swap_leaves_named_layers_alone():
    model = tiny_model(CharCodec().vocab_size, seed=0)
    swap_linears(model, skip=("lm_head",))
    assert type(model.lm_head) is torch.nn.Linear
    assert not any(type(m) is torch.nn.Linear for m in model.model.modules())


@needs_kernel
@pytest.mark.parametrize("wide", [True, False])
def test_packed_weights_saved_once_load_as_they_were(tmp_path, monkeypatch, wide):
    """The packed cache of a warm start: a packed model saved beside its float32 cache and loaded back through the
    background reader (built on the meta device, no packing pass) gives bitwise the same logits, float32 (target)
    and bf16 (draft) weights alike; packed weights that cannot be used fall back to the float32 cache; a corrupted
    file is not trusted."""
    from specviz.backends import loading, weights
    from specviz.backends.fastpath import draft_fast_path

    codec = CharCodec()
    model = tiny_model(codec.vocab_size, seed=3, init=0.2)
    model.save_pretrained(tmp_path)  # the float32 cache folder
    fp32 = loading.from_folder(tmp_path, torch.float32)  # as a start without the packed cache loads it
    packed = target_fast_path(fp32)[0] if wide else draft_fast_path(fp32, 0)[0]
    file = weights.save_packed(packed, tmp_path)
    assert file is not None and weights.packed_ok(file)
    assert file.name.startswith("float32-" if wide else "bfloat16-")
    assert not any(k.endswith(".packed") for k in weights.read_folder(tmp_path))  # the float32 read skips them
    loaded = loading.from_folder(tmp_path, torch.float32, cache_reader.CacheReader([file]))
    assert weights.packed_dtype(loaded) == (torch.float32 if wide else torch.bfloat16)
    ids = torch.tensor([codec.encode("def f(x): return x + 1")])
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, packed(ids).logits)

    def broken(*a):
        raise RuntimeError("a module layout this code does not know")

    monkeypatch.setattr(loading, "from_packed", broken)  # unusable packed weights: the float32 cache is loaded
    assert weights.packed_dtype(loading.from_folder(tmp_path, torch.float32, cache_reader.CacheReader([file]))) is None
    with open(file, "r+b") as f:  # corrupt the last MiB: the fingerprint no longer matches
        f.seek(-8, 2)
        f.write(b"\xff" * 8)
    assert not weights.packed_ok(file)
