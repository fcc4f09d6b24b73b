"""The speed-target benchmarks on the tiny pair: our outputs equal Hugging Face generate() and assisted generation
token for token, and each check reports a ratio with an honest verdict. No timing is asserted."""

from __future__ import annotations

import math

import pytest

from specviz.backends.loading import load_pair
from specviz.bench import targets as tg
from specviz.core.config import GenConfig


@pytest.fixture(scope="module")
def tiny():
    return load_pair("tiny-random")


def test_plain_decoding_equals_hf_generate(tiny):
    ids = tiny.codec.encode("def add(a, b):\n")
    ours = tg.run_strategy(tiny, "plain", ids, GenConfig(max_new_tokens=40))
    theirs, wall = tg.hf_generate(tiny, ids, 40)
    assert ours.output_ids == theirs and len(theirs) == 40 and wall > 0


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_draft_strategy_equals_hf_assisted_generation(tiny, gamma):
    ids = tiny.codec.encode("for i in range(10):\n")
    ours = tg.run_strategy(tiny, "draft", ids, GenConfig(gamma=gamma, max_new_tokens=30))
    before = tiny.draft.model.generation_config.to_dict()
    theirs, _ = tg.hf_generate(tiny, ids, 30, assistant_gamma=gamma)
    assert ours.output_ids == theirs
    assert tiny.draft.model.generation_config.to_dict() == before  # the draft's settings are restored


def test_checks_report_ratios_and_identity(tiny):
    cfg = GenConfig(max_new_tokens=12)
    log: list[str] = []
    rows = [
        tg.check_baseline(tiny, cfg, "code", 1, log.append),
        tg.check_overhead(tiny, cfg, "code", 1, "draft", log.append),
        *tg.check_assisted(tiny, cfg, "code", 1, log.append),
    ]
    assert log and all(math.isfinite(r.ratio) and r.ratio > 0 for r in rows)
    assert all(r.identical is True for r in rows)  # lossless against plain and against HF
    assert [r.target for r in rows[2:]] == ["3 vs HF assisted", "3 (info) loop only", "3 (info) HF settings"]
    table = tg.format_targets(rows)
    assert table.count("\n") == len(rows) + 1 and "fair baseline" in table


def test_a_row_holds_only_within_its_bound_and_with_identical_output():
    row = tg.TargetRow("t", "x / y", 1.04, "<=", 1.05, "")
    assert row.holds
    assert not tg.TargetRow("t", "x / y", 1.06, "<=", 1.05, "").holds
    assert not tg.TargetRow("t", "x / y", 1.2, ">=", 1.5, "").holds
    assert not tg.TargetRow("t", "x / y", 2.0, ">=", 1.5, "", identical=False).holds  # fast but wrong is a failure
    assert tg.TargetRow("t", "x / y", 2.0, ">=", 1.5, "", identical=True).to_dict()["holds"] is True


def test_all_targets_are_those_this_machine_can_measure(monkeypatch):
    monkeypatch.setattr(tg.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(tg.importlib.util, "find_spec", lambda name: None)  # no llama_cpp here
    want = ["baseline", "overhead", "attention", "assisted", "speedups", "quant", "int8", "startup"]
    assert tg.chosen("all") == want
    monkeypatch.setattr(tg.torch.cuda, "is_available", lambda: True)
    assert tg.chosen("all")[-1] == "gpu"
    assert tg.chosen("gpu, baseline") == ["gpu", "baseline"]


def test_the_quant_target_skips_a_pair_not_on_the_quantised_kernel(tiny):
    log: list[str] = []
    assert tg.check_quant(tiny, GenConfig(max_new_tokens=4), "code", 1, log.append) == []
    assert "skipped" in log[0]


def test_the_int8_target_skips_a_pair_not_on_the_quantised_kernel(tiny):
    log: list[str] = []
    assert tg.check_int8(tiny, GenConfig(max_new_tokens=4), "code", 1, log.append) == []
    assert "skipped" in log[0]


def test_the_llamacpp_target_skips_a_pair_without_an_embedded_gguf(tiny):
    from specviz.bench.llamacpp import check_llamacpp

    log: list[str] = []
    assert check_llamacpp(tiny, GenConfig(max_new_tokens=4), "code", 1, log.append) == []
    assert "skipped" in log[0]
