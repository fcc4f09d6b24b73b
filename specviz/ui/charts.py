"""Events -> Plotly figures: acceptance per step, tokens against wall time (speculative vs plain), accepted-length
histogram, acceptance by draft position, theory vs measurement, the step-mode p/q/residual chart and the Compare
charts. Figures are plain Plotly JSON dicts (building go.Figure objects took ~50 ms each, and drawing must not steal
time from the run it measures); go.Figure(fig) accepts every one of them. No torch; each figure holds the numbers of
the events it was built from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from specviz.core.events import RunSummary, StepEvent
from specviz.core.metrics import position_stats
from specviz.core.theory import per_token_alpha, theory_numbers
from specviz.ui.figures import COLORS, Figure, axis, empty_figure, figure, panels

T = TypeVar("T")
LIVE_POINTS = 120  # steps a chart draws while a run goes (the final charts draw every step)


def thin(items: Sequence[T], limit: int = LIVE_POINTS) -> list[T]:
    """At most `limit` items spread evenly over `items`, the first and last always kept, so a live chart's size does
    not grow with the run."""
    n = len(items)
    if n <= limit:
        return list(items)
    return [items[round(i * (n - 1) / (limit - 1))] for i in range(limit)]


PLAIN_NOTE = (
    "plain = the same engine without drafts (one target pass per token), same prompt and settings, run right after;<br>"
    "both timed by wall clock from the start of prefill"
)

# ---------------------------------------------------------------- the Run tab


def acceptance_chart(steps: Sequence[StepEvent]) -> Figure:
    """Per step: accepted, rejected and discarded drafts (stacked), and the running acceptance rate (right axis)."""
    if not steps:
        return empty_figure("acceptance per step appears here", "Acceptance per step")
    x = [s.step + 1 for s in steps]
    acc = [s.n_accepted for s in steps]
    rej = [int(s.rejected) for s in steps]
    disc = [s.n_drafted - a - r for s, a, r in zip(steps, acc, rej)]
    rate = [s.total_accepted / s.total_drafted if s.total_drafted else None for s in steps]
    data = [
        {
            "type": "bar",
            "x": x,
            "y": ys,
            "name": name,
            "marker": {"color": COLORS[key], "pattern": {"shape": pattern}},
            "hovertemplate": f"step %{{x}}: %{{y}} {name}<extra></extra>",
        }
        for name, ys, key, pattern in (
            ("accepted", acc, "accepted", ""),
            ("rejected", rej, "rejected", "x"),
            ("discarded", disc, "not_reached", "."),
        )
    ]
    data.append(
        {
            "type": "scatter",
            "x": x,
            "y": rate,
            "name": "running acceptance rate",
            "mode": "lines",
            "yaxis": "y2",
            "line": {"color": COLORS["predicted"], "width": 2.5, "dash": "dot"},
            "hovertemplate": "after step %{x}: %{y:.1%} accepted<extra></extra>",
        }
    )
    return figure(
        data,
        "Acceptance per step",
        barmode="stack",
        xaxis=axis("verification step"),
        yaxis=axis("drafted tokens", rangemode="tozero"),
        yaxis2=axis("accepted so far", overlaying="y", side="right", tickformat=".0%", range=[0, 1.05], showgrid=False),
    )


def _curve(steps: Sequence[StepEvent]) -> tuple[list[float], list[int]]:
    """Seconds since the run started against tokens generated, starting at (0, 0)."""
    return [0.0] + [s.elapsed_ms / 1e3 for s in steps], [0] + [s.total_tokens for s in steps]


def throughput_chart(
    spec: Sequence[StepEvent],
    plain: Sequence[StepEvent] = (),
    speedup: float | None = None,
    spec_label: str = "speculative",
    note: str = PLAIN_NOTE,
) -> Figure:
    """Tokens against wall time for the speculative run and its measured plain baseline; speedup is read off it."""
    if not spec and not plain:
        return empty_figure("tokens against wall time appear here", "Tokens generated vs wall time")
    data = []
    if spec:
        x, y = _curve(spec)
        data.append(
            {
                "type": "scatter",
                "x": x,
                "y": y,
                "name": spec_label,
                "mode": "lines+markers",
                "line": {"color": COLORS["spec"], "width": 3, "shape": "hv"},
                "marker": {"size": 5},
                "hovertemplate": "%{x:.3f} s: %{y} tokens<extra>speculative</extra>",
            }
        )
    if plain:
        x, y = _curve(plain)
        data.append(
            {
                "type": "scatter",
                "x": x,
                "y": y,
                "name": "plain decoding (measured)",
                "mode": "lines",
                "line": {"color": COLORS["plain"], "width": 3, "dash": "dash", "shape": "hv"},
                "hovertemplate": "%{x:.3f} s: %{y} tokens<extra>plain</extra>",
            }
        )
    title = "Tokens generated vs wall time" + (f": speedup {speedup:.2f}x" if speedup is not None else "")
    foot = {
        "text": note,
        "showarrow": False,
        "x": 0,
        "y": 0,
        "xref": "paper",
        "yref": "paper",
        "xanchor": "left",
        "yanchor": "top",
        "yshift": -62,
        "align": "left",
        "font": {"size": 11},
    }
    return figure(
        data,
        title,
        height=360,
        margin={"l": 56, "r": 24, "t": 64, "b": 108},
        xaxis=axis("seconds", rangemode="tozero"),
        yaxis=axis("tokens", rangemode="tozero"),
        annotations=[foot],
    )


def accepted_counts(steps: Sequence[StepEvent], gamma: int) -> list[int]:
    """How many drafting steps accepted 0, 1, ..., gamma tokens."""
    counts = [0] * (gamma + 1)
    for s in steps:
        if s.n_drafted:
            counts[min(s.n_accepted, gamma)] += 1
    return counts


def expected_counts(alpha: float, gamma: int, n_steps: int) -> list[float]:
    """Accepted-length counts if each draft were accepted independently with probability alpha (truncated geometric)."""
    probs = [alpha**k * (1 - alpha) for k in range(gamma)] + [alpha**gamma]
    return [n_steps * p for p in probs]


def accepted_hist_chart(steps: Sequence[StepEvent], gamma: int, alpha: float | None = None) -> Figure:
    """Histogram of accepted tokens per step, with the independent-acceptance prediction for the measured alpha."""
    drafting = [s for s in steps if s.n_drafted]
    if not drafting:
        return empty_figure("accepted tokens per step appear here", "Accepted tokens per step")
    gamma = max(gamma, max(s.n_drafted for s in drafting))
    x = list(range(gamma + 1))
    data: list[dict[str, Any]] = [
        {
            "type": "bar",
            "x": x,
            "y": accepted_counts(drafting, gamma),
            "name": "steps (measured)",
            "marker": {"color": COLORS["accepted"]},
            "hovertemplate": "%{y} steps accepted %{x}<extra></extra>",
        }
    ]
    if alpha is not None:
        data.append(
            {
                "type": "scatter",
                "x": x,
                "y": expected_counts(alpha, gamma, len(drafting)),
                "name": f"if independent, alpha={alpha:.2f}",
                "mode": "markers+lines",
                "marker": {"symbol": "diamond", "size": 10, "color": COLORS["predicted"]},
                "line": {"dash": "dot", "color": COLORS["predicted"]},
                "hovertemplate": "expected %{y:.1f} steps with %{x}<extra></extra>",
            }
        )
    return figure(
        data,
        "Accepted tokens per step",
        xaxis=axis("accepted draft tokens in a step", dtick=1),
        yaxis=axis("steps", rangemode="tozero"),
    )


def position_chart(steps: Sequence[StepEvent]) -> Figure:
    """Acceptance at each draft position among the drafts checked there; mean 1 - TV(p, q) is the sampling rule's
    expected acceptance at that position."""
    reached, accepted, expect = position_stats(steps)
    if not any(reached):
        return empty_figure("acceptance by draft position appears here", "Acceptance by draft position")
    x = list(range(1, len(reached) + 1))
    data = [
        {
            "type": "bar",
            "x": x,
            "y": [a / r if r else None for a, r in zip(accepted, reached)],
            "name": "accepted / checked",
            "marker": {"color": COLORS["accepted"]},
            "text": [f"{a}/{r}" for a, r in zip(accepted, reached)],
            "textposition": "inside",
            "hovertemplate": "position %{x}: %{y:.1%} (%{text})<extra></extra>",
        },
        {
            "type": "scatter",
            "x": x,
            "y": [e / r if r else None for e, r in zip(expect, reached)],
            "name": "mean 1 - TV(p, q)",
            "mode": "markers",
            "marker": {"symbol": "diamond", "size": 11, "color": COLORS["predicted"]},
            "hovertemplate": "position %{x}: expected %{y:.1%}<extra></extra>",
        },
    ]
    return figure(
        data,
        "Acceptance by draft position",
        xaxis=axis("position in the draft", dtick=1),
        yaxis=axis("acceptance", tickformat=".0%", range=[0, 1.05]),
    )


def theory_chart(summary: RunSummary | None) -> Figure:
    """Predicted beside measured: tokens per target pass, speedup, and rejections (sum of TV vs observed)."""
    if summary is None:
        return empty_figure("theory vs measurement appears after a run", "Theory vs measurement")
    t = theory_numbers(summary)
    rows = [
        ("tokens per pass", t["expected_tokens_per_step"], t["tokens_per_step"]),
        ("speedup", t["expected_speedup"], t["speedup"]),
        ("rejections", t["expected_rejections"], t["rejections"]),
    ]
    layout, notes = panels([r[0] for r in rows])
    data = []
    for i, (_, pred, meas) in enumerate(rows):
        sx = "" if i == 0 else str(i + 1)
        top = max([v for v in (pred, meas) if v is not None], default=1.0) or 1.0
        layout[f"yaxis{sx}"]["range"] = [0, top * 1.22]  # room for the value labels above the bars
        for name, val, marker in (
            ("predicted", pred, {"color": COLORS["predicted"], "pattern": {"shape": "/"}}),
            ("measured", meas, {"color": COLORS["measured"]}),
        ):
            data.append(
                {
                    "type": "bar",
                    "x": [name],
                    "y": [val],
                    "name": name,
                    "legendgroup": name,
                    "showlegend": i == 0,
                    "marker": marker,
                    "text": ["n/a" if val is None else f"{val:.2f}"],
                    "textposition": "outside",
                    "cliponaxis": False,
                    "xaxis": f"x{sx}",
                    "yaxis": f"y{sx}",
                }
            )
    title = f"Theory vs measurement (alpha={per_token_alpha(summary):.2f}, gamma={summary.gamma})"
    # the bars' own labels name predicted and measured, so no legend
    margin = {"l": 48, "r": 24, "t": 76, "b": 40}
    return figure(data, title, height=340, show_legend=False, margin=margin, annotations=notes, **layout)


# ---------------------------------------------------------------- step mode


def _label(text: str) -> str:
    """A token as an axis label: whitespace made visible."""
    if text == "":
        return "\u2205"
    return text.replace("\n", "\u21b5").replace("\t", "\u21e5").replace(" ", "\u2423")


def step_detail_chart(
    detail: dict[str, Any] | None,
    rule: str = "sample",
    step_no: int | None = None,
    drafted: int | None = None,
    chosen: int | None = None,
) -> Figure:
    """p (target) and q (draft) over the most likely tokens at one position, with the residual norm(max(0, p - q))
    from which speculative sampling draws its correction (greedy takes the target's top choice, so no residual).
    drafted / chosen: token ids of the rejected guess and of the target's token, marked x and * on the axis."""
    if not detail:
        return empty_figure("p and q at the decisive position appear here in step mode", "Target p vs draft q")
    ids = detail.get("token_ids") or detail.get("ids") or [None] * len(detail["tokens"])
    labels = []
    for tok, text in zip(ids, detail["tokens"]):
        mark = " ✗ draft" if tok is not None and tok == drafted else ""
        mark += " ★ target" if tok is not None and tok == chosen else ""
        labels.append(_label(text) + mark)
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):  # two tokens with the same text must stay separate bars
        seen[lab] = seen.get(lab, 0) + 1
        if seen[lab] > 1:
            labels[i] = f"{lab} ({seen[lab]})"
    data = [{"type": "bar", "x": labels, "y": detail["p"], "name": "p (target)", "marker": {"color": COLORS["p"]}}]
    if detail.get("q") is not None:
        data.append(
            {
                "type": "bar",
                "x": labels,
                "y": detail["q"],
                "name": "q (draft)",
                "marker": {"color": COLORS["q"], "pattern": {"shape": "/"}},
            }
        )
    if detail.get("residual") is not None and rule != "greedy":
        data.append(
            {
                "type": "bar",
                "x": labels,
                "y": detail["residual"],
                "name": "residual norm(max(0, p - q))",
                "marker": {"color": COLORS["residual"], "pattern": {"shape": "x"}},
            }
        )
    for tr in data:
        tr["hovertemplate"] = "%{x}: %{y:.4f}<extra>" + tr["name"] + "</extra>"
    head = f"Step {step_no}, " if step_no is not None else ""
    if detail.get("q") is None:
        how = "the target's distribution"
    elif rule == "greedy":
        how = "the target's top choice wins"
    else:
        how = "a correction is drawn from the residual"
    return figure(
        data,
        f"{head}draft position {detail.get('position', 0) + 1}: {how}",
        height=360,
        barmode="group",
        xaxis=axis(
            "most likely tokens (\u2423 space, \u21b5 newline; \u2717 rejected guess, \u2605 the target's token)",
            type="category",
        ),
        yaxis=axis("probability", rangemode="tozero"),
    )


# ---------------------------------------------------------------- the Compare tab


def compare_chart(rows: Sequence[dict[str, Any]]) -> Figure:
    """Grouped bars, one group per run: measured speedup against plain, and mean accepted tokens per step."""
    if not rows:
        return empty_figure("run a comparison to see it here", "Strategies compared")
    names = [r["run"] for r in rows]
    layout, notes = panels(["measured speedup vs plain", "mean accepted tokens per step"], gap=0.12)
    speed = [r.get("speedup") for r in rows]
    acc = [r.get("mean accepted/step") for r in rows]
    data = [
        {
            "type": "bar",
            "x": names,
            "y": speed,
            "name": "speedup",
            "marker": {"color": COLORS["spec"]},
            "text": ["n/a" if v is None else f"{v:.2f}x" for v in speed],
            "textposition": "auto",
        },
        {
            "type": "bar",
            "x": names,
            "y": acc,
            "name": "mean accepted/step",
            "marker": {"color": COLORS["accepted"], "pattern": {"shape": "/"}},
            "text": ["n/a" if v is None else f"{v:.2f}" for v in acc],
            "textposition": "auto",
            "xaxis": "x2",
            "yaxis": "y2",
        },
    ]
    one = {"type": "line", "xref": "x", "yref": "y", "x0": -0.5, "x1": len(names) - 0.5, "y0": 1, "y1": 1}
    one["line"] = {"dash": "dot", "color": "#888"}
    return figure(data, "Strategies compared", height=360, show_legend=False, annotations=notes, shapes=[one], **layout)
