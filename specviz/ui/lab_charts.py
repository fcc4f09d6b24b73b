"""Theory lab figures as plain Plotly dicts (like charts.py): the toy playground, batch drafts against M, the relaxed
rules against Yin et al.'s optimal line, the cost curve, the gamma planner and the schedule replay. Inputs are plain
dicts and lists (no torch); each figure holds the numbers it was given."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from specviz.core.theory import expected_speedup
from specviz.ui.charts import COLORS, Figure, _axis, _panels, empty_figure, figure

FAMILY_STYLE = {  # colour and marker: two cues per family
    "linear": ("#0072B2", "circle"),
    "power": ("#009E73", "square"),
    "geometric": ("#D55E00", "diamond"),
}
SCHEDULE_COLORS = {
    "constant": "#8C8C8C",
    "best constant": "#56B4E9",
    "adaptive": "#E69F00",
    "confidence": "#CC79A7",
    "oracle": "#009E73",
}


def _line(x0: float, y0: float, x1: float, y1: float, xref: str = "x", yref: str = "y", **line: Any) -> dict:
    return {"type": "line", "xref": xref, "yref": yref, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "line": line}


def _legend_below(rows: int = 2) -> dict[str, Any]:
    """Layout keys for a legend under the plot (on top it would cover the title and the panel titles)."""
    return {
        "legend": {
            "orientation": "h",
            "yanchor": "top",
            "y": -0.3,
            "xanchor": "left",
            "x": 0,
            "bgcolor": "rgba(0,0,0,0)",
        },
        "margin": {"l": 56, "r": 56, "t": 64, "b": 90 + 22 * rows},
    }


def _note(text: str, x: float, y: float, xref: str = "paper", yref: str = "paper", **kw: Any) -> dict:
    return {"text": text, "x": x, "y": y, "xref": xref, "yref": yref, "showarrow": False, "font": {"size": 11}, **kw}


# ---------------------------------------------------------------- 4. toy playground


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
        **_legend_below(2),
        xaxis=_axis("token", type="category"),
        yaxis=_axis("probability", rangemode="tozero"),
        yaxis2=_axis("acceptance", overlaying="y", side="right", range=[0, 1.05], showgrid=False, tickformat=".0%"),
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
        xaxis=_axis("emitted token", type="category"),
        yaxis=_axis("frequency", rangemode="tozero"),
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
    layout, notes = _panels(["rejections per generated token", "tokens per step"], gap=0.12)
    for ax in ("xaxis", "xaxis2"):  # ticks at 1, 2, 4, 8 on a log axis
        layout[ax].update(_axis("drafts per step (M)", type="log", dtick=0.30103, domain=layout[ax]["domain"]))
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
        **_legend_below(2),
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
        **_legend_below(3),
        xaxis=_axis("measured rejections / Σ TV", range=[-0.02, 1.25]),
        yaxis=_axis("drift Σ TV(output, p) / Σ TV", range=[-0.02, 1.15]),
    )


# ---------------------------------------------------------------- 3. costs, planner, replay


def cost_chart(costs: Mapping[str, Any] | None) -> Figure:
    """V(k)/V(1): a target pass over k tokens in one-token passes, measured, beside Leviathan's V(k) = V(1)."""
    if not costs:
        return empty_figure("measure to see what a k-token pass costs here", "Verification cost")
    ks, ms = costs["ks"], costs["target_ms"]
    one = ms[ks.index(1)] if 1 in ks else ms[0]
    c = costs["draft_ms"] / one if costs.get("draft_ms") is not None else None
    data = [
        {
            "type": "scatter",
            "x": ks,
            "y": [m / one for m in ms],
            "name": "measured V(k) / V(1)",
            "mode": "lines+markers",
            "marker": {"size": 9, "color": COLORS["measured"]},
            "customdata": ms,
            "hovertemplate": "k=%{x}: %{customdata:.1f} ms, %{y:.2f} one-token passes<extra></extra>",
        },
        {
            "type": "scatter",
            "x": [ks[0], ks[-1]],
            "y": [1, 1],
            "name": "Leviathan's model: V(k) = V(1)",
            "mode": "lines",
            "line": {"dash": "dash", "color": COLORS["predicted"]},
            "hoverinfo": "skip",
        },
    ]
    head = f"Cost of a target pass over k tokens (V(1) = {one:.1f} ms"
    head += f", c = {c:.3f})" if c is not None else ", no draft model)"
    return figure(
        data,
        head,
        height=340,
        xaxis=_axis("tokens in the pass (k = drafts + 1)", dtick=1),
        yaxis=_axis("cost in one-token passes", rangemode="tozero"),
    )


def _best(curve: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any]:
    return max(curve, key=lambda r: r[key])


def speedup_at_best(alpha: float, c: float, max_gamma: int = 15) -> float:
    """Leviathan's classic speedup at its best gamma for this alpha and c (the break-even panel)."""
    return max(expected_speedup(alpha, g, c) for g in range(1, max_gamma + 1))


def planner_chart(
    curve: Sequence[Mapping[str, Any]], measured: Sequence[Mapping[str, Any]], alpha: float | None, c: float | None
) -> Figure:
    """Left: predicted speedup against gamma (classic and with the measured cost curve), best gammas marked, measured
    speedups as points, break-even 1. Right: the classic speedup at its best gamma against alpha, crossing 1 exactly at
    alpha = c (the break-even line), with the measured alpha marked."""
    if not curve or alpha is None or c is None:
        return empty_figure("measure to see the predicted speedup against gamma", "Gamma planner")
    layout, notes = _panels(["speedup vs gamma", "break-even: alpha against c"], gap=0.1)
    layout["xaxis"].update(
        _axis("gamma (drafts per step)", domain=layout["xaxis"]["domain"], dtick=1 if len(curve) <= 8 else 2)
    )
    layout["xaxis2"].update(_axis("alpha (acceptance)", domain=layout["xaxis2"]["domain"], range=[0, 1]))
    gs = [r["gamma"] for r in curve]
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "x": gs,
            "y": [r["classic"] for r in curve],
            "name": "Leviathan (pass cost 1)",
            "mode": "lines",
            "line": {"dash": "dot", "color": COLORS["predicted"], "width": 2.5},
            "hovertemplate": "gamma %{x}: predicted %{y:.2f}x<extra>classic</extra>",
        },
        {
            "type": "scatter",
            "x": gs,
            "y": [r["cost_aware"] for r in curve],
            "name": "with the measured pass cost",
            "mode": "lines",
            "line": {"color": COLORS["spec"], "width": 2.5},
            "hovertemplate": "gamma %{x}: predicted %{y:.2f}x<extra>cost-aware</extra>",
        },
    ]
    for key, label, color in (
        ("classic", "best gamma (classic)", COLORS["predicted"]),
        ("cost_aware", "best gamma (cost-aware)", COLORS["spec"]),
    ):
        b = _best(curve, key)
        data.append(
            {
                "type": "scatter",
                "x": [b["gamma"]],
                "y": [b[key]],
                "name": f"{label}: {b['gamma']}",
                "mode": "markers",
                "marker": {"symbol": "star", "size": 16, "color": color, "line": {"width": 1, "color": "#222"}},
                "hovertemplate": "best gamma %{x}: %{y:.2f}x<extra></extra>",
            }
        )
    meas = [r for r in measured if r.get("speedup") is not None]
    if meas:
        data.append(
            {
                "type": "scatter",
                "x": [r["gamma"] for r in meas],
                "y": [r["speedup"] for r in meas],
                "name": "measured speedup",
                "mode": "markers",
                "marker": {"symbol": "diamond", "size": 13, "color": COLORS["rejected"]},
                "hovertemplate": "gamma %{x}: measured %{y:.2f}x<extra></extra>",
            }
        )
    alphas = [i / 50 for i in range(51)]
    data += [
        {
            "type": "scatter",
            "x": alphas,
            "y": [speedup_at_best(a, c) for a in alphas],
            "name": "classic speedup at its best gamma",
            "mode": "lines",
            "line": {"dash": "dot", "color": COLORS["predicted"], "width": 2},
            "xaxis": "x2",
            "yaxis": "y2",
            "showlegend": False,
            "hovertemplate": "alpha %{x:.2f}: %{y:.2f}x<extra>best gamma</extra>",
        },
        {
            "type": "scatter",
            "x": [alpha],
            "y": [speedup_at_best(alpha, c)],
            "name": f"measured alpha = {alpha:.2f}",
            "mode": "markers",
            "marker": {"symbol": "diamond", "size": 13, "color": COLORS["measured"]},
            "xaxis": "x2",
            "yaxis": "y2",
            "hovertemplate": "measured alpha %{x:.2f}<extra></extra>",
        },
    ]
    top = max([r["classic"] for r in curve] + [r["cost_aware"] for r in curve] + [r["speedup"] for r in meas] + [1.2])
    layout["yaxis"]["range"] = [0, top * 1.1]
    grey = {"color": "#777", "dash": "dash", "width": 1.5}
    shapes = [
        _line(gs[0], 1, gs[-1], 1, **grey),
        _line(0, 1, 1, 1, "x2", "y2", **grey),
        _line(c, 0, c, 1, "x2", "y2 domain", color=COLORS["rejected"], dash="dash", width=2),
    ]
    notes += [
        _note("break-even 1x", gs[-1], 1, "x", "y", xanchor="right", yanchor="bottom"),
        _note(f"alpha = c = {c:.2f}", c, 0.95, "x2", "y2 domain", xanchor="left"),
    ]
    return figure(
        data,
        f"Gamma planner (alpha = {alpha:.2f}, c = {c:.3f})",
        height=460,
        **_legend_below(3),
        annotations=notes,
        shapes=shapes,
        **layout,
    )


def replay_chart(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Per schedule: tokens per target pass (exact under greedy) and the predicted speedup from measured costs."""
    if not rows:
        return empty_figure("measure (or upload a greedy trace) to replay it under other schedules", "Replay")
    names = [r["label"] for r in rows]
    colors = [SCHEDULE_COLORS.get(r["schedule"], "#777") for r in rows]
    layout, notes = _panels(["tokens per target pass (exact)", "predicted speedup (measured costs)"], gap=0.12)
    layout["xaxis"]["showticklabels"] = False
    layout["xaxis2"]["showticklabels"] = False
    data = [
        {
            "type": "bar",
            "x": names,
            "y": [r["tokens_per_step"] for r in rows],
            "name": "tokens per pass",
            "marker": {"color": colors},
            "text": [f"{r['tokens_per_step']:.2f}" for r in rows],
            "textposition": "auto",
            "customdata": [[r["steps"], r["drafted"], r["wasted"]] for r in rows],
            "hovertemplate": "%{x}: %{y:.2f} tokens per pass, %{customdata[0]} passes, %{customdata[1]} drafted, "
            "%{customdata[2]} wasted<extra></extra>",
        },
        {
            "type": "bar",
            "x": names,
            "y": [r["predicted_speedup"] for r in rows],
            "name": "predicted speedup",
            "marker": {"color": colors, "pattern": {"shape": "/"}},
            "text": ["n/a" if r["predicted_speedup"] is None else f"{r['predicted_speedup']:.2f}x" for r in rows],
            "textposition": "auto",
            "xaxis": "x2",
            "yaxis": "y2",
            "hovertemplate": "%{x}: predicted %{y:.2f}x<extra></extra>",
        },
    ]
    # a legend of schedules by colour, written under the panels (the bars carry their numbers)
    legend = "   ".join(f"<span style='color:{c}'>■</span> {n}" for n, c in zip(names, colors))
    notes.append(_note(legend, 0, -0.08, yanchor="top", xanchor="left", align="left"))
    one = _line(-0.5, 1, len(names) - 0.5, 1, "x2", "y2", color="#888", dash="dot")
    return figure(
        data,
        "Replaying the recorded run under other draft-length schedules",
        height=400,
        show_legend=False,
        margin={"l": 56, "r": 24, "t": 64, "b": 90},
        annotations=notes,
        shapes=[one],
        **layout,
    )
