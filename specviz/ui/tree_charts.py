"""Events -> Plotly figures for token trees: tokens per pass beside nodes verified per pass, the measured accepted
length beside the one expected from the per-node acceptance, and the Compare tab's chain-against-tree bars. Plain
Plotly JSON dicts, as charts.py; no torch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from specviz.core.events import StepEvent
from specviz.ui.figures import COLORS, Figure, axis, empty_figure, figure, legend_below, note, panels

ESTIMATOR = (  # the one-sentence caption of the expected accepted length
    "expected = sum over nodes of the chance that speculative sampling's walk reaches and accepts the node: the "
    "product along its path of its acceptance min(1, p'/q) (p' with the residual where the rule tried it, else p) "
    "times the chance that its elder siblings were refused"
)
GREEDY_NOTE = "; greedy accepts the target's top choice instead, so it may accept more or less"
CHAIN_VS_TREE = {  # the Compare tab's shortcuts: a chain strategy beside the tree of the same proposer
    "chain vs tree: draft model (draft, drafttree)": ["draft", "drafttree"],
    "chain vs tree: prompt lookup (ngram, ngramtree)": ["ngram", "ngramtree"],
    "chain vs tree: Medusa heads (medusa, medusatree)": ["medusa", "medusatree"],
    "several drafts vs a dynamic tree (multidraft, drafttree)": ["multidraft", "drafttree"],
    "every chain beside its tree": ["draft", "drafttree", "ngram", "ngramtree", "medusa", "medusatree"],
}


def nodes_verified(step: StepEvent) -> int:
    """Guesses the target scored in the step's pass: a tree's nodes, or a chain's drafted tokens."""
    return len(step.tree) if step.tree is not None else step.n_drafted


def _chance(p: float | None, q: float | None, a: float | None) -> float | None:
    """A node's chance of acceptance once its parent is reached (before its elder siblings are counted): the rule's
    min(1, p'/q) where recorded, else min(1, p/q)."""
    if a is not None:
        return a
    return None if p is None or not q else min(1.0, p / q)


def expected_accepted(step: StepEvent) -> float | None:
    """The accepted length the step's per-node numbers predict (see ESTIMATOR); a chain is a tree of one branch.
    None without instrumentation (no p) or without guesses."""
    if step.tree is not None:
        parents = [n.parent for n in step.tree]
        chance = [_chance(n.p, n.q, n.accept_prob) for n in step.tree]
    else:
        drafted = step.drafted
        parents = list(range(-1, len(drafted) - 1))
        chance = [_chance(t.p, t.q, t.accept_prob) for t in drafted]
    if not parents or any(c is None for c in chance):
        return None
    reach = {-1: 1.0}  # the chance the walk reaches (stands on) a node
    refused: dict[int, float] = {}  # parent -> the chance every child tried so far was refused
    total = 0.0
    for i, par in enumerate(parents):  # parents first, and siblings in the order the rule tries them
        c = float(chance[i])  # type: ignore[arg-type]
        before = refused.get(par, 1.0)
        accept = reach[par] * before * c
        refused[par] = before * (1 - c)
        reach[i] = accept
        total += accept
    return total


def tree_pass_chart(steps: Sequence[StepEvent]) -> Figure:
    """Per step: tokens the pass gained (bars) and nodes it verified (line, right axis), with both means."""
    drafting = [s for s in steps if s.n_drafted]
    if not drafting:
        return empty_figure("tokens and nodes per pass appear here", "Tokens per pass and nodes verified per pass")
    x = [s.step + 1 for s in steps]
    gained = [len(s.emitted) for s in steps]
    nodes = [nodes_verified(s) for s in steps]
    data = [
        {
            "type": "bar",
            "x": x,
            "y": gained,
            "name": "tokens gained per pass",
            "marker": {"color": COLORS["accepted"]},
            "hovertemplate": "step %{x}: +%{y} tokens<extra></extra>",
        },
        {
            "type": "scatter",
            "x": x,
            "y": nodes,
            "name": "nodes verified per pass",
            "mode": "lines+markers",
            "yaxis": "y2",
            "line": {"color": COLORS["spec"], "width": 2, "dash": "dot"},
            "marker": {"symbol": "diamond", "size": 7},
            "hovertemplate": "step %{x}: %{y} nodes verified<extra></extra>",
        },
    ]
    mean_t, mean_n = sum(gained) / len(steps), sum(nodes) / len(steps)
    title = f"Tokens per pass {mean_t:.2f} from {mean_n:.1f} nodes verified per pass"
    layout = legend_below(1)
    layout["margin"] = {**layout["margin"], "b": 120}
    layout["legend"]["y"] = -0.37  # under the axis title (the plot is 176 px high)
    return figure(
        data,
        title,
        height=360,
        xaxis=axis("verification step"),
        yaxis=axis("tokens gained", rangemode="tozero", dtick=1),
        yaxis2=axis("nodes verified", overlaying="y", side="right", rangemode="tozero", showgrid=False),
        **layout,
    )


def expected_length_chart(steps: Sequence[StepEvent], rule: str = "greedy") -> Figure:
    """Per step: accepted guesses (bars) against the accepted length expected from the per-node acceptance
    (markers); the caption names the estimator."""
    drafting = [s for s in steps if s.n_drafted]
    if not drafting:
        return empty_figure("measured and expected accepted length appear here", "Accepted length per pass")
    x = [s.step + 1 for s in drafting]
    measured = [s.n_accepted for s in drafting]
    expected = [expected_accepted(s) for s in drafting]
    data: list[dict[str, Any]] = [
        {
            "type": "bar",
            "x": x,
            "y": measured,
            "name": "accepted (measured)",
            "marker": {"color": COLORS["accepted"]},
            "hovertemplate": "step %{x}: %{y} accepted<extra></extra>",
        },
        {
            "type": "scatter",
            "x": x,
            "y": expected,
            "name": "expected from the per-node acceptance",
            "mode": "markers",
            "marker": {"symbol": "diamond", "size": 9, "color": COLORS["predicted"]},
            "hovertemplate": "step %{x}: %{y:.2f} expected<extra></extra>",
        },
    ]
    known = [e for e in expected if e is not None]
    mean_e = f"{sum(known) / len(known):.2f}" if known else "n/a"
    title = f"Accepted per pass: measured {sum(measured) / len(measured):.2f}, expected {mean_e}"
    caption = ESTIMATOR + (GREEDY_NOTE if rule == "greedy" else "") + "."
    words, lines, line = caption.split(), [], ""
    for w in words:  # Plotly does not wrap: about 95 characters a line
        if len(line) + len(w) > 95:
            lines.append(line)
            line = ""
        line = f"{line} {w}".strip()
    lines.append(line)
    # below the plot (196 px high): the axis title, the legend, then the caption
    foot = note("<br>".join(lines), 0, 0, xanchor="left", yanchor="top", yshift=-94, align="left")
    layout = legend_below(1)
    layout["margin"] = {**layout["margin"], "b": 140 + 14 * len(lines)}
    layout["legend"]["y"] = -0.34
    return figure(
        data,
        title,
        height=400 + 14 * len(lines),
        xaxis=axis("verification step"),
        yaxis=axis("accepted guesses", rangemode="tozero"),
        annotations=[foot],
        **layout,
    )


def tree_compare_chart(tracks: Sequence[Any]) -> Figure:
    """The Compare tab: per finished run (objects with .label, .steps, .summary; plain left out), tokens per target
    pass beside nodes verified per pass, so a chain and the tree of the same proposer sit side by side."""
    runs = [t for t in tracks if t.summary is not None and t.steps and getattr(t, "strategy", t.label) != "plain"]
    if not runs:
        return empty_figure("tokens and nodes per pass appear here", "Chain against tree: tokens and nodes per pass")
    names = [t.label for t in runs]
    per_pass = [t.summary.tokens_per_step for t in runs]
    nodes = [sum(nodes_verified(s) for s in t.steps) / len(t.steps) for t in runs]
    tree = ["tree" if any(s.tree for s in t.steps) else "chain" for t in runs]
    layout, notes = panels(["tokens per target pass", "nodes verified per pass"], gap=0.12)
    data = [
        {
            "type": "bar",
            "x": names,
            "y": per_pass,
            "name": "tokens per pass",
            "marker": {"color": [COLORS["accepted"] if k == "tree" else COLORS["plain"] for k in tree]},
            "text": [f"{v:.2f}" for v in per_pass],
            "customdata": tree,
            "textposition": "outside",
            "cliponaxis": False,
            "hovertemplate": "%{x} (%{customdata}): %{y:.2f} tokens per pass<extra></extra>",
        },
        {
            "type": "bar",
            "x": names,
            "y": nodes,
            "name": "nodes per pass",
            "marker": {
                "color": [COLORS["spec"] if k == "tree" else COLORS["plain"] for k in tree],
                "pattern": {"shape": "/"},
            },
            "text": [f"{v:.1f}" for v in nodes],
            "customdata": tree,
            "textposition": "outside",
            "cliponaxis": False,
            "xaxis": "x2",
            "yaxis": "y2",
            "hovertemplate": "%{x} (%{customdata}): %{y:.1f} nodes per pass<extra></extra>",
        },
    ]
    layout["yaxis"]["range"] = [0, max(per_pass) * 1.2]  # room for the value labels above the bars
    layout["yaxis2"]["range"] = [0, max(nodes) * 1.2 or 1]
    return figure(
        data,
        "Chain against tree (grey: chains; colour: trees)",
        height=360,
        show_legend=False,
        annotations=notes,
        **layout,
    )
