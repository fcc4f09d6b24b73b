"""Theory lab figures as plain Plotly dicts (like charts.py): the toy playground, batch drafts against M, the relaxed
rules against Yin et al.'s optimal line (the planner's figures are in plan_charts.py). Inputs are plain dicts and lists
(no torch); each figure holds the numbers it was given."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from specviz.ui.figures import COLORS, Figure, axis, empty_figure, figure, legend_below, panels

FAMILY_STYLE = {  # colour and marker: two cues per family
    "linear": ("#0072B2", "circle"),
    "power": ("#009E73", "square"),
    "geometric": ("#D55E00", "diamond"),
}


# ---------------------------------------------------------------- the toy playground


def playground_dist_chart(pg: Mapping[str, Any] | None) -> Figure:
    """p, q, their overlap min(p, q) and the correction distribution per token; the acceptance of each token if
    drafted on the right axis (markers)."""
    if not pg:
        return empty_figure("type p and q to see them here", "p and q")
    x = pg["labels"]
    relaxed = pg.get("relax", 0) > 0
    bars = [
        ("p (target)", pg["p"], COLORS["p"], ""),
        ("q (draft)", pg["q"], COLORS["q"], "/"),
        ("overlap min(p, q)", pg["overlap"], COLORS["accepted"], "."),
        ("correction" if relaxed else "residual norm(max(0, p - q))", pg["residual"], COLORS["residual"], "x"),
    ]
    data: list[dict[str, Any]] = [
        {
            "type": "bar",
            "x": x,
            "y": y,
            "name": name,
            "marker": {"color": color, "pattern": {"shape": pattern}},
            "opacity": 0.55 if name.startswith(("residual", "correction")) else 1.0,
            "hovertemplate": "%{x}: %{y:.3f}<extra>" + name + "</extra>",
        }
        for name, y, color, pattern in bars
    ]
    data.append(
        {
            "type": "scatter",
            "x": x,
            "y": pg["accept"],
            "name": "acceptance if drafted",
            "mode": "markers",
            "yaxis": "y2",
            "marker": {"symbol": "diamond", "size": 11, "color": COLORS["predicted"]},
            "hovertemplate": "%{x} drafted: kept with probability %{y:.2f}<extra></extra>",
        }
    )
    overlap = sum(pg["overlap"])
    title = f"Overlap Σ min(p, q) = {overlap:.3f} = 1 - TV(p, q)"
    return figure(
        data,
        title,
        height=400,
        barmode="group",
        **legend_below(2),
        xaxis=axis("token", type="category"),
        yaxis=axis("probability", rangemode="tozero"),
        yaxis2=axis("acceptance", overlaying="y", side="right", range=[0, 1.05], showgrid=False, tickformat=".0%"),
    )


def playground_hist_chart(pg: Mapping[str, Any] | None) -> Figure:
    """The histogram of N simulated emissions beside p (and the relaxed rule's exact output when relaxed)."""
    if not pg:
        return empty_figure("the simulated draws appear here", "N draws of the rule")
    n = pg["n"]
    freq = [c / n for c in pg["counts"]]
    data: list[dict[str, Any]] = [
        {
            "type": "bar",
            "x": pg["labels"],
            "y": freq,
            "name": f"{n} draws (frequency)",
            "marker": {"color": COLORS["measured"]},
            "customdata": pg["counts"],
            "hovertemplate": "%{x}: %{customdata} draws, %{y:.3f}<extra></extra>",
        },
        {
            "type": "scatter",
            "x": pg["labels"],
            "y": pg["p"],
            "name": "p (target)",
            "mode": "markers",
            "marker": {"symbol": "line-ew-open", "size": 30, "line": {"width": 3, "color": COLORS["rejected"]}},
            "hovertemplate": "%{x}: p = %{y:.3f}<extra></extra>",
        },
    ]
    if pg.get("relax", 0) > 0:
        data.append(
            {
                "type": "scatter",
                "x": pg["labels"],
                "y": pg["output"],
                "name": "the relaxed rule's output",
                "mode": "markers",
                "marker": {"symbol": "circle-open", "size": 12, "line": {"width": 2, "color": COLORS["predicted"]}},
                "hovertemplate": "%{x}: exact output %{y:.3f}<extra></extra>",
            }
        )
    title = f"{n} draws vs p: TV(histogram, p) = {pg['sample_tv']:.3f}"
    return figure(
        data,
        title,
        height=360,
        xaxis=axis("emitted token", type="category"),
        yaxis=axis("frequency", rangemode="tozero"),
    )


# ---------------------------------------------------------------- 1. batch drafts


def batch_chart(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Against the number of drafts M: measured rejections per generated token, counted as Yin et al. count a batch
    algorithm's rejections (steps where every candidate was rejected and the target corrected), beside the single
    draft's expected rejections per token, its sum of TV (left); tokens per step (right)."""
    if not rows:
        return empty_figure("run the batch sweep to see rejections against M", "Batch drafts")
    rows = sorted(rows, key=lambda r: r["M"])
    ms = [r["M"] for r in rows]
    layout, notes = panels(["rejections per generated token", "tokens per step"], gap=0.12)
    for ax in ("xaxis", "xaxis2"):  # ticks at 1, 2, 4, 8 on a log axis
        layout[ax].update(axis("drafts per step (M)", type="log", dtick=0.30103, domain=layout[ax]["domain"]))
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "x": ms,
            "y": [r["corrections_per_token"] for r in rows],
            "name": "rejections per token (measured: all M drafts rejected)",
            "mode": "lines+markers",
            "marker": {"size": 10, "color": COLORS["rejected"]},
            "line": {"color": COLORS["rejected"]},
            "hovertemplate": "M=%{x}: %{y:.3f} rejections per token<extra></extra>",
        }
    ]
    one = next((r for r in rows if r["M"] == 1 and r.get("tv_sum") is not None), None)
    if one is not None and one["tokens"]:
        tv = one["tv_sum"] / one["tokens"]
        data.append(
            {
                "type": "scatter",
                "x": [ms[0], ms[-1]],
                "y": [tv, tv],
                "name": "M=1 expected: Σ TV per token (Yin et al.)",
                "mode": "lines",
                "line": {"dash": "dash", "color": COLORS["predicted"], "width": 2},
                "hovertemplate": "sum of TV / tokens at M=1: %{y:.3f}<extra></extra>",
            }
        )
    data.append(
        {
            "type": "scatter",
            "x": ms,
            "y": [r["tokens_per_step"] for r in rows],
            "name": "tokens per step (measured)",
            "mode": "lines+markers",
            "marker": {"size": 10, "symbol": "square", "color": COLORS["accepted"]},
            "line": {"color": COLORS["accepted"]},
            "xaxis": "x2",
            "yaxis": "y2",
            "hovertemplate": "M=%{x}: %{y:.2f} tokens per step<extra></extra>",
        }
    )
    return figure(
        data,
        "Several drafts per step (batch speculative decoding)",
        height=420,
        annotations=notes,
        **layout,
        **legend_below(2),
    )


# ---------------------------------------------------------------- 2. the quality/speed knob


def tradeoff_chart(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Each relax setting as (measured rejections, exact drift), both divided by the run's sum of TV, with the exact
    expected rejections as open markers, beside the optimal line rejections + drift = Σ TV from (0, 1) to (1, 0);
    below it no rule can go in expectation."""
    pts = [r for r in rows if r.get("rel_rejections") is not None and r.get("rel_drift") is not None]
    if not pts:
        return empty_figure("run the sweep to see each setting against the optimal line", "Quality vs speed")
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "x": [0, 1, 0, 0],
            "y": [0, 0, 1, 0],
            "name": "impossible (below the line)",
            "mode": "lines",
            "fill": "toself",
            "fillcolor": "rgba(128,128,128,0.12)",
            "line": {"width": 0},
            "hoverinfo": "skip",
        },
        {
            "type": "scatter",
            "x": [0, 1],
            "y": [1, 0],
            "name": "optimal: rejections + drift = Σ TV",
            "mode": "lines",
            "line": {"color": "#555", "dash": "dash", "width": 2},
            "hoverinfo": "skip",
        },
    ]
    for fam in dict.fromkeys(r["family"] for r in pts):
        rs = sorted((r for r in pts if r["family"] == fam), key=lambda r: r["relax"])
        color, symbol = FAMILY_STYLE.get(fam, ("#333", "circle"))
        if all(r.get("rel_expected") is not None for r in rs):
            data.append(
                {
                    "type": "scatter",
                    "x": [r["rel_expected"] for r in rs],
                    "y": [r["rel_drift"] for r in rs],
                    "name": f"{fam} (exact expectation)",
                    "mode": "lines+markers",
                    "marker": {"size": 12, "symbol": f"{symbol}-open", "color": color, "line": {"width": 2}},
                    "line": {"color": color, "width": 1.5, "dash": "dot"},
                    "hovertemplate": "expected rejections / Σ TV %{x:.3f}, drift / Σ TV %{y:.3f}<extra>"
                    + fam
                    + "</extra>",
                }
            )
        data.append(
            {
                "type": "scatter",
                "x": [r["rel_rejections"] for r in rs],
                "y": [r["rel_drift"] for r in rs],
                "name": f"{fam} (measured)",
                "mode": "markers+text",
                "text": [f"{r['relax']:g}" for r in rs],
                "textposition": "top right",
                "marker": {"size": 11, "symbol": symbol, "color": color},
                "customdata": [[r["rejections"], r["drift_sum"], r["tv_sum"], r["relax"]] for r in rs],
                "hovertemplate": "relax %{customdata[3]}: %{customdata[0]} rejections, drift %{customdata[1]:.2f}, "
                "Σ TV %{customdata[2]:.2f}<extra>" + fam + "</extra>",
            }
        )
    return figure(
        data,
        "Quality vs speed: relaxed acceptance against the optimal line",
        height=480,
        **legend_below(3),
        xaxis=axis("measured rejections / Σ TV", range=[-0.02, 1.25]),
        yaxis=axis("drift Σ TV(output, p) / Σ TV", range=[-0.02, 1.15]),
    )
