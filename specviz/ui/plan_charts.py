"""The Theory lab's planner figures as plain Plotly dicts: what a k-token target pass costs, Leviathan et al.'s
predicted speedup against gamma with its break-even, and the recorded run replayed under other draft-length schedules.
Inputs are plain dicts and lists (no torch); each figure holds the numbers it was given."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from specviz.core.theory import speedup_at_best
from specviz.ui.figures import COLORS, Figure, axis, empty_figure, figure, legend_below, line_shape, note, panels

SCHEDULE_COLORS = {
    "constant": "#8C8C8C",
    "best constant": "#56B4E9",
    "adaptive": "#E69F00",
    "confidence": "#CC79A7",
    "oracle": "#009E73",
}


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
        xaxis=axis("tokens in the pass (k = drafts + 1)", dtick=1),
        yaxis=axis("cost in one-token passes", rangemode="tozero"),
    )


def _best(curve: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any]:
    return max(curve, key=lambda r: r[key])


def planner_chart(
    curve: Sequence[Mapping[str, Any]], measured: Sequence[Mapping[str, Any]], alpha: float | None, c: float | None
) -> Figure:
    """Left: predicted speedup against gamma (classic and with the measured cost curve), best gammas marked, measured
    speedups as points, break-even 1. Right: the classic speedup at its best gamma against alpha, crossing 1 exactly at
    alpha = c (the break-even line), with the measured alpha marked."""
    if not curve or alpha is None or c is None:
        return empty_figure("measure to see the predicted speedup against gamma", "Gamma planner")
    layout, notes = panels(["speedup vs gamma", "break-even: alpha against c"], gap=0.1)
    layout["xaxis"].update(
        axis("gamma (drafts per step)", domain=layout["xaxis"]["domain"], dtick=1 if len(curve) <= 8 else 2)
    )
    layout["xaxis2"].update(axis("alpha (acceptance)", domain=layout["xaxis2"]["domain"], range=[0, 1]))
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
        line_shape(gs[0], 1, gs[-1], 1, **grey),
        line_shape(0, 1, 1, 1, "x2", "y2", **grey),
        line_shape(c, 0, c, 1, "x2", "y2 domain", color=COLORS["rejected"], dash="dash", width=2),
    ]
    notes += [
        note("break-even 1x", gs[-1], 1, "x", "y", xanchor="right", yanchor="bottom"),
        note(f"alpha = c = {c:.2f}", c, 0.95, "x2", "y2 domain", xanchor="left"),
    ]
    return figure(
        data,
        f"Gamma planner (alpha = {alpha:.2f}, c = {c:.3f})",
        height=460,
        **legend_below(3),
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
    layout, notes = panels(["tokens per target pass (exact)", "predicted speedup (measured costs)"], gap=0.12)
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
    notes.append(note(legend, 0, -0.08, yanchor="top", xanchor="left", align="left"))
    one = line_shape(-0.5, 1, len(names) - 0.5, 1, "x2", "y2", color="#888", dash="dot")
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
