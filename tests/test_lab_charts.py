"""The Theory lab's figures hold the numbers they were given, are valid Plotly, import no torch; its playground
summary and captions say what each chart checks."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import plotly.graph_objects as go
import pytest

from specviz.ui import lab_charts as lc
from specviz.ui import plan_charts as pc
from specviz.ui.figures import traces

ROOT = Path(__file__).resolve().parent.parent


def valid(fig: dict) -> dict:
    go.Figure(fig)
    json.dumps(fig, allow_nan=False)
    return fig


def shape_at(fig: dict, **where) -> dict:
    return next(s for s in fig["layout"]["shapes"] if all(s.get(k) == v for k, v in where.items()))


@pytest.fixture
def pg() -> dict:
    from specviz.lab import playground

    p, q = playground.PRESETS["q has zeros"]
    return asdict(playground.playground(p, q, n=3000, seed=2))


def test_playground_charts_hold_p_q_overlap_acceptance_and_counts(pg):
    fig = valid(lc.playground_dist_chart(pg))
    assert traces(fig, "p (target)")["y"] == pg["p"] and traces(fig, "q (draft)")["y"] == pg["q"]
    assert traces(fig, "overlap min(p, q)")["y"] == pg["overlap"]
    assert traces(fig, "residual norm(max(0, p - q))")["y"] == pg["residual"]
    acc = traces(fig, "acceptance if drafted")
    assert acc["y"] == pg["accept"] and acc["yaxis"] == "y2" and None in acc["y"]  # q = 0: never drafted
    assert f"{sum(pg['overlap']):.3f}" in fig["layout"]["title"]["text"]
    hist = valid(lc.playground_hist_chart(pg))
    assert traces(hist, "3000 draws (frequency)")["customdata"] == pg["counts"]
    assert traces(hist, "3000 draws (frequency)")["y"] == pytest.approx([c / 3000 for c in pg["counts"]])
    assert traces(hist, "p (target)")["y"] == pg["p"]
    assert len(hist["data"]) == 2  # lossless: no relaxed output to show
    relaxed = {**pg, "relax": 0.5, "output": [0.2] * len(pg["p"])}
    assert traces(valid(lc.playground_hist_chart(relaxed)), "the relaxed rule's output")["y"] == relaxed["output"]
    assert lc.playground_dist_chart(None)["data"] == []


BATCH = [
    {
        "M": 4,
        "steps": 10,
        "tokens": 42,
        "corrections": 5,
        "corrections_per_token": 5 / 42,
        "tokens_per_step": 4.2,
        "tv_sum": 6.0,
    },
    {
        "M": 1,
        "steps": 20,
        "tokens": 50,
        "corrections": 16,
        "corrections_per_token": 16 / 50,
        "tokens_per_step": 2.5,
        "tv_sum": 15.0,
    },
    {
        "M": 2,
        "steps": 14,
        "tokens": 48,
        "corrections": 9,
        "corrections_per_token": 9 / 48,
        "tokens_per_step": 3.4,
        "tv_sum": 9.8,
    },
]


def test_batch_chart_holds_rejections_per_token_and_tokens_per_step_against_m():
    fig = valid(lc.batch_chart(BATCH))
    meas = traces(fig, "rejections per token (measured: all M drafts rejected)")
    assert meas["x"] == [1, 2, 4] and meas["y"] == pytest.approx([16 / 50, 9 / 48, 5 / 42])
    line = traces(fig, "M=1 expected: Σ TV per token (Yin et al.)")
    assert line["x"] == [1, 4] and line["y"] == pytest.approx([0.3, 0.3])
    tps = traces(fig, "tokens per step (measured)")
    assert tps["y"] == [2.5, 3.4, 4.2] and tps["xaxis"] == "x2"
    without_one = valid(lc.batch_chart(BATCH[:1]))
    assert all(t["name"] != "M=1 expected: Σ TV per token (Yin et al.)" for t in without_one["data"])
    assert lc.batch_chart([])["data"] == []


def test_tradeoff_chart_holds_the_points_and_the_optimal_line():
    rows = [
        {
            "family": f,
            "relax": lam,
            "rejections": r,
            "drift_sum": d,
            "tv_sum": 10.0,
            "rel_rejections": r / 10,
            "rel_drift": d / 10,
            "rel_expected": e,
        }
        for f, lam, r, d, e in [
            ("linear", 0.0, 9, 0.0, 1.0),
            ("linear", 0.5, 5, 5.0, 0.5),
            ("geometric", 0.5, 6, 5.5, 0.55),
        ]
    ]
    rows.append({**rows[0], "family": "geometric", "rel_rejections": None})  # no TV: not plotted
    fig = valid(lc.tradeoff_chart(rows))
    lin = traces(fig, "linear (measured)")
    assert lin["x"] == [0.9, 0.5] and lin["y"] == [0.0, 0.5] and lin["text"] == ["0", "0.5"]
    geo = traces(fig, "geometric (measured)")
    assert geo["x"] == [0.6] and geo["y"] == [0.55] and geo["marker"]["symbol"] == "diamond"
    exact = traces(fig, "linear (exact expectation)")
    assert exact["x"] == [1.0, 0.5] and exact["y"] == [0.0, 0.5] and exact["marker"]["symbol"] == "circle-open"
    line = traces(fig, "optimal: rejections + drift = Σ TV")
    assert line["x"] == [0, 1] and line["y"] == [1, 0]
    assert lc.tradeoff_chart([])["data"] == []


COSTS = {"ks": [1, 2, 3, 4], "target_ms": [100.0, 150.0, 160.0, 200.0], "draft_ms": 30.0, "repeats": 3, "context": 9}


def test_cost_chart_holds_the_measured_curve_and_c():
    fig = valid(pc.cost_chart(COSTS))
    meas = traces(fig, "measured V(k) / V(1)")
    assert meas["x"] == [1, 2, 3, 4] and meas["y"] == pytest.approx([1.0, 1.5, 1.6, 2.0])
    assert meas["customdata"] == COSTS["target_ms"]
    assert "c = 0.300" in fig["layout"]["title"]["text"] and "V(1) = 100.0 ms" in fig["layout"]["title"]["text"]
    assert traces(fig, "Leviathan's model: V(k) = V(1)")["y"] == [1, 1]
    assert "no draft model" in valid(pc.cost_chart({**COSTS, "draft_ms": None}))["layout"]["title"]["text"]


def test_planner_chart_holds_curves_best_gammas_measured_points_and_break_even():
    from specviz.lab.planner import Costs, speedup_curve

    alpha, costs = 0.8, Costs(**COSTS)
    curve = speedup_curve(alpha, costs, [1, 2, 3])
    measured = [{"gamma": 1, "speedup": 1.1}, {"gamma": 3, "speedup": 0.9}, {"gamma": 2, "speedup": None}]
    fig = valid(pc.planner_chart(curve, measured, alpha, costs.c))
    assert traces(fig, "Leviathan (pass cost 1)")["y"] == [r["classic"] for r in curve]
    assert traces(fig, "with the measured pass cost")["y"] == [r["cost_aware"] for r in curve]
    best = max(curve, key=lambda r: r["cost_aware"])
    star = traces(fig, f"best gamma (cost-aware): {best['gamma']}")
    assert star["x"] == [best["gamma"]] and star["y"] == [best["cost_aware"]]
    meas = traces(fig, "measured speedup")
    assert meas["x"] == [1, 3] and meas["y"] == [1.1, 0.9]
    # the break-even panel: a vertical line at alpha = c, and the best classic speedup crosses 1 right there
    assert shape_at(fig, xref="x2", x0=pytest.approx(0.3))["x1"] == pytest.approx(0.3)
    panel = traces(fig, "classic speedup at its best gamma")
    below = [y for x, y in zip(panel["x"], panel["y"]) if x < 0.3]
    above = [y for x, y in zip(panel["x"], panel["y"]) if x > 0.3]
    assert max(below) <= 1 + 1e-12 < min(above)
    assert traces(fig, "measured alpha = 0.80")["x"] == [0.8]
    assert pc.planner_chart([], [], None, None)["data"] == []


def test_replay_chart_holds_each_schedule():
    rows = [
        {
            "schedule": "constant",
            "label": "constant gamma=4",
            "steps": 20,
            "tokens_per_step": 3.0,
            "drafted": 77,
            "wasted": 37,
            "predicted_speedup": 1.2,
        },
        {
            "schedule": "oracle",
            "label": "oracle",
            "steps": 16,
            "tokens_per_step": 3.75,
            "drafted": 44,
            "wasted": 0,
            "predicted_speedup": None,
        },
    ]
    fig = valid(pc.replay_chart(rows))
    tps, speed = fig["data"]
    assert tps["x"] == ["constant gamma=4", "oracle"] and tps["y"] == [3.0, 3.75]
    assert tps["customdata"] == [[20, 77, 37], [16, 44, 0]]
    assert speed["y"] == [1.2, None] and speed["text"] == ["1.20x", "n/a"]
    assert tps["marker"]["color"] == [pc.SCHEDULE_COLORS["constant"], pc.SCHEDULE_COLORS["oracle"]]
    assert pc.replay_chart([])["data"] == []


def test_lab_charts_never_import_torch():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, specviz.ui.lab_charts, specviz.ui.plan_charts; print(' '.join(sorted(sys.modules)))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "torch" not in out.stdout.split()


def test_playground_summary_and_captions(pg):
    from specviz.lab import playground
    from specviz.ui.lab import CAPTIONS, render_playground

    html = render_playground(playground.playground(pg["p"], pg["q"], n=3000, seed=2))
    assert f'data-overlap="{sum(pg["overlap"]):.4f}"' in html and "never drafted" in html
    assert "optimal line" not in html  # lossless: nothing relaxed to place
    linear = render_playground(playground.playground(pg["p"], pg["q"], n=3000, seed=2, relax=0.5))
    assert "Relaxed (linear, λ = 0.5)" in linear and "(on the optimal line)" in linear
    geometric = render_playground(
        playground.playground(pg["p"], pg["q"], n=3000, seed=2, relax=0.5, family="geometric")
    )
    assert "(above the optimal line)" in geometric
    # one sentence under each chart, naming the result it checks
    assert set(CAPTIONS) == {"pg_dist", "pg_hist", "batch", "tradeoff", "cost", "planner", "replay"}
    for key, text in CAPTIONS.items():
        assert "Yin et al." in text or "Leviathan et al." in text, key
