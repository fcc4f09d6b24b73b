"""The figure base every chart module builds on: the page's look for a Plotly JSON dict, the colour palette, axes,
side-by-side panels, placeholders and reading a trace back. No torch, no gradio."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Figure = dict[str, Any]

# Okabe-Ito colours (safe for colour-blind viewers); each series also carries a pattern, dash or marker as a second cue.
COLORS = {
    "accepted": "#009E73",
    "rejected": "#D55E00",
    "not_reached": "#999999",
    "resampled": "#E69F00",
    "bonus": "#0072B2",
    "spec": "#0072B2",
    "plain": "#8C8C8C",
    "p": "#0072B2",
    "q": "#E69F00",
    "residual": "#009E73",
    "predicted": "#CC79A7",
    "measured": "#0072B2",
}
GRID = "rgba(128,128,128,0.22)"


def axis(title: str = "", **kw: Any) -> dict[str, Any]:
    """An axis in the page's look: faint grid and zero line, room for its labels."""
    return {"title": {"text": title}, "gridcolor": GRID, "zerolinecolor": GRID, "automargin": True, **kw}


def figure(
    data: list[dict[str, Any]], title: str, height: int = 320, show_legend: bool = True, **layout: Any
) -> Figure:
    """A figure with the page's look: transparent background (CSS recolours text in dark mode), legend on top."""
    base: dict[str, Any] = {
        "title": {"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        "height": height,
        "margin": {"l": 56, "r": 24, "t": 64, "b": 48},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "font": {"size": 13, "color": "#3a4250"},
        "showlegend": show_legend,
        "legend": {
            "orientation": "h",
            "yanchor": "bottom",
            "y": 1.0,
            "xanchor": "right",
            "x": 1,
            "bgcolor": "rgba(0,0,0,0)",
        },
        "hoverlabel": {"font": {"size": 13}},
        "bargap": 0.15,
        "xaxis": axis(),
        "yaxis": axis(),
    }
    base.update(layout)
    return {"data": data, "layout": base}


def empty_figure(message: str, title: str = "") -> Figure:
    """A chart with no data and a centred note (before the first run)."""
    centred = {
        "text": message,
        "showarrow": False,
        "x": 0.5,
        "y": 0.5,
        "xref": "paper",
        "yref": "paper",
        "font": {"size": 14},
    }
    return figure([], title, show_legend=False, xaxis={"visible": False}, yaxis={"visible": False}, annotations=[centred])


def traces(fig: Figure, name: str) -> dict[str, Any]:
    """The trace called `name` (tests and callers read numbers back this way)."""
    return next(t for t in fig["data"] if t.get("name") == name)


def panels(titles: Sequence[str], gap: float = 0.1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Side-by-side subplot axes (xaxis, xaxis2, ...) and their titles, without plotly's make_subplots."""
    n = len(titles)
    width = (1 - gap * (n - 1)) / n
    layout: dict[str, Any] = {}
    notes = []
    for i, title in enumerate(titles):
        lo = i * (width + gap)
        sx = "" if i == 0 else str(i + 1)
        layout[f"xaxis{sx}"] = axis(domain=[lo, lo + width], anchor=f"y{sx}")
        layout[f"yaxis{sx}"] = axis(anchor=f"x{sx}", rangemode="tozero")
        notes.append(
            {
                "text": f"<b>{title}</b>",
                "showarrow": False,
                "x": lo + width / 2,
                "y": 1.0,
                "xref": "paper",
                "yref": "paper",
                "xanchor": "center",
                "yanchor": "bottom",
                "font": {"size": 13},
            }
        )
    return layout, notes


def line_shape(x0: float, y0: float, x1: float, y1: float, xref: str = "x", yref: str = "y", **line: Any) -> dict:
    """A straight line from (x0, y0) to (x1, y1) as a layout shape."""
    return {"type": "line", "xref": xref, "yref": yref, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "line": line}


def legend_below(rows: int = 2) -> dict[str, Any]:
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


def note(text: str, x: float, y: float, xref: str = "paper", yref: str = "paper", **kw: Any) -> dict:
    """A small text annotation at (x, y)."""
    return {"text": text, "x": x, "y": y, "xref": xref, "yref": yref, "showarrow": False, "font": {"size": 11}, **kw}
