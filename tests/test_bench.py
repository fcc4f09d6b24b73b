"""The strategy bench's totals: acceptance over every drafted token (a prompt with drafts and none accepted counts),
speedup as total plain time over total strategy time, and the table formatter."""

from __future__ import annotations

import pytest
from helpers import summary

from specviz.backends.loading import load_pair
from specviz.bench.suite import aggregate, bench_rows, summary_row
from specviz.bench.tables import format_rows, markdown_table
from specviz.core.config import GenConfig
from specviz.core.events import RunSummary


def run_summary(strategy: str, drafted: int, accepted: int, steps: int, wall_s: float) -> RunSummary:
    """The shared hand-made summary with one run's counts and time."""
    tokens = steps + accepted
    return summary(
        strategy=strategy, rule="greedy", new_tokens=tokens, steps=steps, drafted=drafted, accepted=accepted,
        acceptance_rate=accepted / drafted if drafted else 0.0, mean_accepted=accepted / steps,
        tokens_per_step=tokens / steps, wall_s=wall_s, tokens_per_s=tokens / wall_s, cost_ratio=None,
        rejections=steps if accepted < drafted else 0, speedup=None, plain_tokens_per_s=None,
    )  # fmt: skip


def test_a_prompt_whose_drafts_were_all_rejected_counts_in_the_acceptance_rate():
    cfg = GenConfig()
    rows = []
    for name, accepted in (("copies", 8), ("prose", 0)):  # 8 drafted on each prompt
        plain = run_summary("plain", 0, 0, 8, 1.0)
        rows.append(summary_row("edit", name, plain, None, cfg))
        rows.append(summary_row("edit", name, run_summary("ngram", 8, accepted, 2 if accepted else 8, 0.5), plain, cfg))
    (agg,) = [r for r in aggregate(rows, "suite") if r["strategy"] == "ngram"]
    assert agg["acceptance"] == pytest.approx(8 / 16)  # not 8 / 8, as when the 0% prompt dropped out
    assert agg["tokens"] == 10 + 8 and agg["steps"] == 2 + 8
    assert agg["speedup"] == pytest.approx(2.0 / 1.0)  # 2 s of plain against 1 s of ngram


def test_bench_rows_on_the_tiny_pair_sum_to_the_runs_own_counts():
    pair = load_pair("tiny-random")
    prompts = [("code", "a", "def add(a, b):"), ("code", "b", "for i in range(3):")]
    rows = bench_rows(pair, prompts, ["draft", "random"], GenConfig(gamma=3, max_new_tokens=12))
    for strategy in ("draft", "random"):
        runs = [r for r in rows if r["strategy"] == strategy]
        (agg,) = [r for r in aggregate(rows, "") if r["strategy"] == strategy]
        drafted, accepted = sum(r["drafted"] for r in runs), sum(r["accepted"] for r in runs)
        assert drafted > 0
        assert agg["acceptance"] == pytest.approx(accepted / drafted)
        assert agg["identical"] is True  # greedy: every strategy's output equals plain decoding's


def test_markdown_tables_align_their_columns():
    text = markdown_table(["a", "long name"], [["1", "x"], ["12345", "y"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].startswith("| 1     | x")
    assert format_rows([{"k": 1, "ms": 0.5, "none": None}], ["k", "ms", "none"]).splitlines()[2] == "| 1 | 0.500 | -    |"
