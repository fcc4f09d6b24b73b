"""The Plotly figures hold the numbers of the events they were built from, are valid Plotly, and the theory helpers
match hand-computed values."""

from __future__ import annotations

import json
from dataclasses import replace

import plotly.graph_objects as go
import pytest
from helpers import step, summary, tok

from specviz.core.metrics import position_stats
from specviz.ui import charts, figures


@pytest.fixture
def steps():
    """Four steps: accepted 2 then a rejection; all 4 accepted + bonus; a rejection at once; a step without drafts."""
    s0 = step(
        0,
        [
            tok("a", "accepted", 0),
            tok("b", "accepted", 1),
            tok("c", "rejected", 2),
            tok("d", "not_reached", 3),
            tok("e", "resampled", 2),
        ],
        0,
        3,
    )
    s1 = step(1, [tok(x, "accepted", i) for i, x in enumerate("fghi")] + [tok("j", "bonus", 4)], 3, 8)
    s2 = step(
        2,
        [tok("k", "rejected", 0)]
        + [tok(x, "not_reached", i + 1) for i, x in enumerate("lmn")]
        + [tok("o", "resampled", 0)],
        8,
        9,
    )
    s3 = step(3, [tok("p", "bonus", 0, q=None)], 9, 10)
    # running totals as the engine keeps them
    out, drafted, accepted = [], 0, 0
    for s in (s0, s1, s2, s3):
        drafted += s.n_drafted
        accepted += s.n_accepted
        out.append(replace(s, total_drafted=drafted, total_accepted=accepted))
    return out


def valid(fig: dict) -> dict:
    """Plotly itself accepts the dict (every key and value checked) and it is JSON."""
    go.Figure(fig)
    json.dumps(fig, allow_nan=False)  # the browser's JSON.parse rejects NaN
    return fig


def test_acceptance_chart_holds_per_step_counts_and_running_rate(steps):
    fig = valid(charts.acceptance_chart(steps))
    assert figures.traces(fig, "accepted")["x"] == [1, 2, 3, 4]
    assert figures.traces(fig, "accepted")["y"] == [2, 4, 0, 0]
    assert figures.traces(fig, "rejected")["y"] == [1, 0, 1, 0]
    assert figures.traces(fig, "discarded")["y"] == [1, 0, 3, 0]
    rate = figures.traces(fig, "running acceptance rate")
    assert rate["y"] == pytest.approx([2 / 4, 6 / 8, 6 / 12, 6 / 12])
    assert rate["yaxis"] == "y2"
    assert fig["layout"]["barmode"] == "stack"


def test_throughput_chart_holds_measured_times_of_both_runs(steps):
    plain = [step(i, [tok("x", "bonus", 0, q=None)], i, i + 1) for i in range(10)]
    fig = valid(charts.throughput_chart(steps, plain, speedup=1.234))
    spec_tr, plain_tr = fig["data"]
    assert spec_tr["name"] == "speculative" and plain_tr["name"] == "plain decoding (measured)"
    assert spec_tr["x"] == [0.0, 0.01, 0.02, 0.03, 0.04] and spec_tr["y"] == [0, 3, 8, 9, 10]
    assert plain_tr["y"] == list(range(11)) and plain_tr["x"][-1] == pytest.approx(0.1)
    assert plain_tr["line"]["dash"] == "dash"  # told apart without colour
    assert "speedup 1.23x" in fig["layout"]["title"]["text"]
    assert "run right after" in fig["layout"]["annotations"][0]["text"]  # says how plain was timed
    only_spec = valid(charts.throughput_chart(steps))
    assert len(only_spec["data"]) == 1


def test_accepted_histogram_and_its_prediction(steps):
    fig = valid(charts.accepted_hist_chart(steps, gamma=4, alpha=0.5))
    measured = figures.traces(fig, "steps (measured)")
    assert measured["x"] == [0, 1, 2, 3, 4] and measured["y"] == [1, 0, 1, 0, 1]  # the plain step is left out
    expected = fig["data"][1]["y"]
    # 3 drafting steps, alpha = 1/2: P(k) = 0.5^k * 0.5 for k < 4, P(4) = 0.5^4
    assert expected == pytest.approx([1.5, 0.75, 0.375, 0.1875, 0.1875])
    assert charts.expected_counts(0.5, 2, 8) == [4.0, 2.0, 2.0]
    assert sum(charts.expected_counts(0.83, 6, 10)) == pytest.approx(10)


def test_position_chart_counts_checked_drafts(steps):
    reached, accepted, expect = position_stats(steps)
    assert reached == [3, 2, 2, 1] and accepted == [2, 2, 1, 1]
    assert expect == pytest.approx([2.7, 1.8, 1.8, 0.9])  # 1 - TV(=0.1) per checked draft
    fig = valid(charts.position_chart(steps))
    assert fig["data"][0]["y"] == pytest.approx([2 / 3, 1.0, 0.5, 1.0])
    assert fig["data"][0]["text"] == ["2/3", "2/2", "1/2", "1/1"]
    assert fig["data"][1]["y"] == pytest.approx([0.9] * 4)


def test_theory_chart_puts_prediction_beside_measurement():
    s = summary()
    fig = valid(charts.theory_chart(s))
    pred = [t["y"][0] for t in fig["data"] if t["name"] == "predicted"]
    meas = [t["y"][0] for t in fig["data"] if t["name"] == "measured"]
    assert pred == pytest.approx([3.3616, 3.3616 / 3, 2.5])
    assert meas == pytest.approx([3.0, 1.5, 2.0])
    assert "alpha=0.80" in fig["layout"]["title"]["text"]
    assert [a["text"] for a in fig["layout"]["annotations"]] == [
        "<b>tokens per pass</b>",
        "<b>speedup</b>",
        "<b>rejections</b>",
    ]


def test_step_detail_chart_shows_p_q_and_residual():
    detail = {
        "position": 2,
        "token_ids": [5, 9, 3],
        "tokens": ["a", " ", "a"],
        "p": [0.5, 0.3, 0.2],
        "q": [0.2, 0.6, 0.2],
        "residual": [0.75, 0.0, 0.25],
    }
    fig = valid(charts.step_detail_chart(detail, "sample", step_no=7, drafted=9, chosen=5))
    names = [t["name"] for t in fig["data"]]
    assert names == ["p (target)", "q (draft)", "residual norm(max(0, p - q))"]
    assert [t["y"] for t in fig["data"]] == [detail["p"], detail["q"], detail["residual"]]
    labels = fig["data"][0]["x"]
    assert labels == ["a \u2605 target", "\u2423 \u2717 draft", "a"]  # marked, whitespace visible
    assert fig["layout"]["title"]["text"].startswith("Step 7, draft position 3")
    greedy = valid(charts.step_detail_chart(detail, "greedy"))
    assert greedy["data"][0]["x"] == ["a", "\u2423", "a (2)"]  # two tokens with one text stay two bars
    assert [t["name"] for t in greedy["data"]] == ["p (target)", "q (draft)"]  # greedy takes argmax p, no residual
    plain = valid(charts.step_detail_chart({**detail, "q": None, "residual": None}))
    assert len(plain["data"]) == 1


def test_compare_chart_groups_speedup_and_accepted_length():
    rows = [
        {"run": "draft", "speedup": 1.4, "mean accepted/step": 2.5},
        {"run": "ngram", "speedup": 0.9, "mean accepted/step": 0.5},
        {"run": "plain", "speedup": 1.0, "mean accepted/step": None},
    ]
    fig = valid(charts.compare_chart(rows))
    speed, acc = fig["data"]
    assert speed["x"] == ["draft", "ngram", "plain"] and speed["y"] == [1.4, 0.9, 1.0]
    assert acc["y"] == [2.5, 0.5, None] and acc["xaxis"] == "x2"
    assert speed["text"] == ["1.40x", "0.90x", "1.00x"]


def test_empty_inputs_give_placeholders():
    for fig in (
        charts.acceptance_chart([]),
        charts.throughput_chart([]),
        charts.accepted_hist_chart([], 4),
        charts.position_chart([]),
        charts.theory_chart(None),
        charts.step_detail_chart(None),
        charts.compare_chart([]),
    ):
        valid(fig)
        assert fig["data"] == [] and fig["layout"]["annotations"][0]["text"]
