"""Our few-row float32 linear kernel: it builds here, matches torch's linear, gives each row bitwise the same result
whatever rows come with it, hands long passes to BLAS, and keeps a model's greedy output unchanged."""

from __future__ import annotations

import pytest
import torch

from specviz.config import GenConfig
from specviz.engine import run
from specviz.fastpath import target_fast_path
from specviz.kernels import MAX_ROWS, SmallLinear, small_linear_op, swap_linears
from specviz.models import LM, CharCodec, tiny_model
from specviz.proposers import NgramProposer

OP, WHY = small_linear_op()
needs_kernel = pytest.mark.skipif(OP is None, reason=f"kernel unavailable here: {WHY}")


def test_kernel_builds_on_our_machines():
    """CI runs on AVX2 machines with a C++ compiler: there the kernel must build (else the speed claims lapse)."""
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert OP is not None, WHY


@needs_kernel
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(96, 64), (37, 200), (300, 13)])
def test_matches_torch_linear_for_every_row_count(bias, shape):
    n, k = shape
    torch.manual_seed(n + k)
    w, b = torch.randn(n, k), torch.randn(n) if bias else torch.empty(0)
    x = torch.randn(MAX_ROWS, k, dtype=torch.float64).float()
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double() if bias else None)
    for m in range(1, MAX_ROWS + 1):
        y = OP(x[:m], w, b)
        torch.testing.assert_close(y.double(), ref[:m], rtol=1e-5, atol=1e-4)


@needs_kernel
def test_each_row_is_bitwise_the_same_in_any_batch():
    torch.manual_seed(0)
    w, b = torch.randn(200, 136), torch.randn(200)
    x = torch.randn(MAX_ROWS, 136)
    alone = torch.cat([OP(x[i : i + 1], w, b) for i in range(MAX_ROWS)])
    for m in range(2, MAX_ROWS + 1):
        assert torch.equal(OP(x[:m], w, b), alone[:m]), m
        assert torch.equal(OP(x[m - 1 :], w, b)[0], alone[m - 1])  # also as the first row of another batch


def test_small_linear_module_shares_weights_and_falls_back_for_long_passes():
    torch.manual_seed(1)
    lin = torch.nn.Linear(48, 40)
    fast = SmallLinear(lin)
    assert fast.weight.data_ptr() == lin.weight.data_ptr()  # no second copy
    with torch.no_grad():
        for rows in (1, 5, MAX_ROWS, MAX_ROWS + 1, 70):
            x = torch.randn(1, rows, 48)
            torch.testing.assert_close(fast(x), lin(x), rtol=1e-5, atol=1e-5)
            assert fast(x).shape == (1, rows, 40)


def test_fast_target_keeps_greedy_output_identical():
    codec = CharCodec()
    model = tiny_model(codec.vocab_size, seed=0, init=0.2)
    ids = codec.encode("def add(a, b):\n    return a + b\n\ndef add(a, b):\n")
    cfg = GenConfig(gamma=6, max_new_tokens=60)
    plain = run(LM(model, "t"), None, ids, cfg).run()
    fast, how = target_fast_path(tiny_model(codec.vocab_size, seed=0, init=0.2))
    assert ("kernel" in how) == (OP is not None)
    lm = LM(fast, "fast")
    assert run(lm, None, ids, cfg).run().output_ids == plain.output_ids
    spec = run(lm, NgramProposer(6), ids, cfg).run()
    assert spec.output_ids == plain.output_ids and spec.accepted > 0


def test_swap_leaves_named_layers_alone():
    model = tiny_model(CharCodec().vocab_size, seed=0)
    swap_linears(model, skip=("lm_head",))
    assert type(model.lm_head) is torch.nn.Linear
    assert not any(type(m) is torch.nn.Linear for m in model.model.modules())
