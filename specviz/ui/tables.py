"""Runs as tables: the Run tab's summary (a run and its plain baseline), the per-step CSV export and the Compare tab's
strategies side by side. No torch, no gradio."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from specviz.core.events import RunSummary, StepEvent
from specviz.core.metrics import position_stats
from specviz.ui.tree_view import tree_counts

SUMMARY_COLUMNS = [
    "run",
    "tokens",
    "steps",
    "mean accepted/step",
    "acceptance rate",
    "tokens/s",
    "speedup",
    "c (draft/target cost)",
]


def summary_row(label: str, s: RunSummary, plain: RunSummary | None = None) -> dict[str, Any]:
    """One table row; speedup against `plain` when given (the plain row itself reads 1.00)."""
    speed = s.speedup
    if speed is None and plain is not None and plain.tokens_per_s > 0:
        speed = s.tokens_per_s / plain.tokens_per_s
    return {
        "run": label,
        "tokens": s.new_tokens,
        "steps": s.steps,
        "mean accepted/step": round(s.mean_accepted, 3) if s.drafted else None,
        "acceptance rate": round(s.acceptance_rate, 3) if s.drafted else None,
        "tokens/s": round(s.tokens_per_s, 2),
        "speedup": None if speed is None else round(speed, 3),
        "c (draft/target cost)": None if s.cost_ratio is None else round(s.cost_ratio, 3),
    }


def summary_table(spec: RunSummary | None, plain: RunSummary | None) -> pd.DataFrame:
    """The Run tab's table: the speculative run and its plain baseline, one row each."""
    rows = []
    if spec is not None:
        rows.append(summary_row(f"speculative ({spec.strategy}, {spec.rule}, gamma={spec.gamma})", spec, plain))
    if plain is not None:
        rows.append(summary_row("plain decoding (baseline)", plain, plain))
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def steps_table(steps: Sequence[StepEvent]) -> pd.DataFrame:
    """One row per verification step (the CSV export); tree steps fill the tree_ columns, chain steps leave them
    empty."""
    rows = []
    for s in steps:
        rows.append(
            {
                "step": s.step,
                "start": s.start,
                "gamma": s.gamma,
                "drafted": s.n_drafted,
                "accepted": s.n_accepted,
                "rejected": int(s.rejected),
                "emitted": len(s.emitted),
                "target_token_origin": next((t.origin for t in s.tokens if t.origin in ("resampled", "bonus")), ""),
                "drafted_text": "".join(t.text for t in s.drafted),
                "emitted_text": "".join(t.text for t in s.emitted),
                "draft_ms": round(s.draft_ms, 4),
                "verify_ms": round(s.verify_ms, 4),
                "elapsed_ms": round(s.elapsed_ms, 4),
                "total_tokens": s.total_tokens,
                "running_acceptance": round(s.total_accepted / s.total_drafted, 4) if s.total_drafted else None,
                "tv_sum_step": round(sum(t.tv or 0.0 for t in s.drafted if t.origin in ("accepted", "rejected")), 6),
                # a tree step's shape in the same row (its nodes are the drafted count; the JSON trace has each)
                **_tree_columns(s),
            }
        )
    return pd.DataFrame(rows)


def _tree_columns(step: StepEvent) -> dict[str, int | None]:
    """A tree step's levels, branches (root-to-leaf paths) and refused nodes; None for a chain step."""
    if step.tree is None:
        return {"tree_depth": None, "tree_branches": None, "tree_refused": None}
    c = tree_counts(step)
    return {"tree_depth": c["depth"], "tree_branches": c["branches"], "tree_refused": c["rejected"]}


COMPARE_COLUMNS = [*SUMMARY_COLUMNS, "acceptance by draft position", "same as plain"]


def compare_table(tracks: Sequence[Any], plain: RunSummary | None, greedy: bool = True) -> pd.DataFrame:
    """The Compare tab's table (see compare_rows)."""
    return pd.DataFrame(compare_rows(tracks, plain, greedy), columns=COMPARE_COLUMNS)


def compare_rows(tracks: Sequence[Any], plain: RunSummary | None, greedy: bool = True) -> list[dict[str, Any]]:
    """One row per finished run (objects with .label and .summary), plus, for greedy decoding, whether each output
    equals plain decoding token for token (it must: the rule is lossless). Missing numbers are None."""
    rows = []
    for t in tracks:
        if t.summary is None:
            continue
        row = summary_row(t.label, t.summary, plain)
        reached, accepted, _ = position_stats(getattr(t, "steps", []))
        # per draft position (for medusa, per head): accepted among the guesses checked there
        row["acceptance by draft position"] = " ".join(f"{a / n:.0%}" for a, n in zip(accepted, reached) if n) or None
        if greedy and plain is not None:
            row["same as plain"] = "yes" if t.summary.output_ids == plain.output_ids else "NO"
        else:
            row["same as plain"] = "n/a (sampling)" if not greedy else "-"
        rows.append(row)
    return rows
