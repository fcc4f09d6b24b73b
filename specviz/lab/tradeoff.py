"""The quality/speed knob measured on a model pair: one sampled run per (family, relax) setting, each giving the
measured rejections and the exact drift the engine records per checked draft position (TokenEvent.drift), to set
beside Yin et al.'s optimal line rejections + drift = sum of TV."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.core.events import RunSummary, StepEvent
from specviz.core.progress import SweepLog
from specviz.core.relaxed import FAMILIES
from specviz.proposers import build_proposer


def tradeoff_row(family: str, lam: float, steps: Sequence[StepEvent], summary: RunSummary) -> dict[str, Any]:
    """One setting's numbers. Checked positions are those the rule tested (accepted or rejected drafts); over them,
    the exact drift (0 when lossless) and the exact expected rejections (the sum of TV when lossless) are summed;
    rel_* divide by the run's own sum of TV, so the optimal line is x + y = 1."""
    checked = [t for s in steps for t in s.drafted if t.origin in ("accepted", "rejected")]
    drift = sum(t.drift or 0.0 for t in checked)
    expected = sum(t.reject_prob if t.reject_prob is not None else (t.tv or 0.0) for t in checked)
    tv = summary.tv_sum
    return {
        "family": family,
        "relax": lam,
        "tokens": summary.new_tokens,
        "steps": summary.steps,
        "checked": len(checked),
        "rejections": summary.rejections,
        "tv_sum": tv,
        "drift_sum": drift,
        "expected_rejections": expected,
        "rejection_rate": summary.rejections / len(checked) if checked else 0.0,
        "drift_per_position": drift / len(checked) if checked else 0.0,
        "rel_rejections": summary.rejections / tv if tv > 0 else None,
        "rel_drift": drift / tv if tv > 0 else None,
        "rel_expected": expected / tv if tv > 0 else None,
        "tokens_per_step": summary.tokens_per_step,
        "wall_s": summary.wall_s,
    }


def relaxed_sweep(
    pair: Any,
    prompt_ids: Sequence[int],
    cfg: GenConfig,
    lams: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    families: Sequence[str] = ("linear", "geometric"),
    strategy: str = "draft",
    should_stop: Callable[[], bool] | None = None,
    progress: SweepLog | None = None,
) -> list[dict[str, Any]]:
    """Run `strategy` under speculative sampling at every relax setting of every family; rows as tradeoff_row.
    relax 0 (lossless) and 1 (accept all) are the same rule in every family, so each is run once and listed per
    family."""
    for f in families:
        if f not in FAMILIES:
            raise ValueError(f"unknown relax family {f!r}; known: {', '.join(FAMILIES)}")
    stop = should_stop or (lambda: False)
    plan = [(f, lam) for lam in sorted(set(lams)) for f in (families[:1] if lam in (0, 1) else families)]
    rows: list[dict[str, Any]] = []
    for i, (family, lam) in enumerate(plan):
        if stop():
            break
        if progress:
            progress(f"relax {lam:g} ({family}): run {i + 1} of {len(plan)}", i / len(plan))
        c = cfg.with_(rule="sample", relax=float(lam), relax_family=family).validated()
        r = run(pair.target, build_proposer(strategy, pair, c), prompt_ids, c, should_stop=stop)
        steps = list(r)
        assert r.summary is not None
        row = tradeoff_row(family, float(lam), steps, r.summary)
        rows += [row] if lam not in (0, 1) else [{**row, "family": f} for f in families]
    return sorted(rows, key=lambda r: (list(families).index(r["family"]), r["relax"]))
