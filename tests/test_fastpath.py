"""CPU fast paths for the draft: our kernel over bf16 weights (or, without it, the bf16-decode DraftLinear, close to
float32 for few rows and float32 for many), and a draft running either keeps speculative output identical to plain
decoding."""

from __future__ import annotations

import pytest
import torch

from specviz.backends.codecs import CharCodec
from specviz.backends.fastpath import BF16_MAX_ROWS, DraftLinear, draft_fast_path
from specviz.backends.kernels import PackedLinear, kernel
from specviz.backends.lm import LM
from specviz.backends.tiny import perturbed_copy, tiny_model
from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.proposers import DraftModelProposer

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (any x86 torch)")


def test_draft_linear_rows_pick_the_kernel():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    fast = DraftLinear(lin)
    few = torch.randn(1, BF16_MAX_ROWS, 64)  # bf16 weights
    many = torch.randn(1, BF16_MAX_ROWS + 3, 64)  # float32 (oneDNN)
    with torch.no_grad():
        assert fast(few).dtype == torch.float32
        torch.testing.assert_close(fast(few), lin(few), rtol=0.05, atol=0.05)
        assert not torch.equal(fast(few), lin(few))  # it really ran in bf16
        torch.testing.assert_close(fast(many), lin(many), rtol=1e-5, atol=1e-5)
    head = DraftLinear(lin, wide=False)
    assert head.wide is None and head(many).shape == (1, BF16_MAX_ROWS + 3, 96)


def test_draft_fast_path_swaps_every_linear_and_stays_lossless():
    codec = CharCodec()
    target = tiny_model(codec.vocab_size, seed=0, dtype=torch.float32, init=0.2)
    draft, how = draft_fast_path(perturbed_copy(target, noise=0.03, seed=1), min_params=0)
    assert not any(type(m) is torch.nn.Linear for m in draft.modules())
    if kernel()[0] is not None:
        packed = [m for m in draft.modules() if isinstance(m, PackedLinear)]
        assert packed and all(m.packed.dtype == torch.bfloat16 for m in packed) and "bf16" in how
    else:
        assert sum(isinstance(m, DraftLinear) for m in draft.modules()) > 0
    t, d = LM(target, "target"), LM(draft, "draft")
    ids = codec.encode("def add(a, b):\n    return")
    cfg = GenConfig(gamma=4, max_new_tokens=60)
    plain = run(t, None, ids, cfg).run()
    spec = run(t, DraftModelProposer(d, 4), ids, cfg).run()
    assert spec.output_ids == plain.output_ids
    assert spec.accepted > 0 and spec.steps < plain.steps


def test_small_drafts_run_like_a_target_in_float32():
    model = tiny_model(CharCodec().vocab_size, seed=0, dtype=torch.float32)
    out, _ = draft_fast_path(model)  # far below MIN_PARAMS
    assert not any(isinstance(m, DraftLinear) for m in out.modules())
    if kernel()[0] is not None:
        assert all(m.packed.dtype == torch.float32 for m in out.modules() if isinstance(m, PackedLinear))
        assert any(isinstance(m, PackedLinear) for m in out.modules())
