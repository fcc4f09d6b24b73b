"""Batch (multi-draft) sweep for the Theory lab: rejections and tokens per step of the multidraft strategy against M."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.proposers import build_proposer

MS = (1, 2, 4, 8)


def batch_sweep(pair: Any, prompt_ids: Sequence[int], cfg: GenConfig, ms: Iterable[int] = MS) -> list[dict[str, Any]]:
    """Run strategy multidraft (rule 'sample', cfg's other settings, seed and prompt) once per M; one row per M.

    Row keys: M; steps (target passes); tokens; tokens_per_step; drafted (drafted tokens, M per draft position);
    tries (candidate tokens tested: accepted + rejected); rejections (rejected tries), rejections_per_step,
    rejections_per_token (per emitted token); corrections (steps ending in a correction: positions where every
    candidate in play was rejected, what Yin et al. 2024 count as a batch algorithm's rejections; equal to rejections
    when M = 1), corrections_per_step, corrections_per_token; tv_sum: the sum over tries of TV(p', q), p' being the
    residual-updated target distribution at that try, i.e. the expected rejected tries (for M = 1 exactly Yin et al.'s
    sum of TV over reached draft positions, the single draft's expected rejections); single_draft_tv_sum: the M = 1
    row's tv_sum on every row (None when 1 is not in ms), the line to chart beside; wall_s."""
    base = cfg.with_(rule="sample")
    eos = getattr(getattr(pair, "codec", None), "eos_ids", ())
    rows: list[dict[str, Any]] = []
    for m in ms:
        c = base.with_(options={**(base.options or {}), "drafts": m})
        spec = run(pair.target, build_proposer("multidraft", pair, c), prompt_ids, c, eos_ids=eos)
        s = spec.run()
        tries = sum(t.origin in ("accepted", "rejected") for step in spec.steps for t in step.tokens)
        corrections = sum(step.tokens[-1].origin == "resampled" for step in spec.steps if step.tokens)
        rows.append(
            {
                "M": m,
                "steps": s.steps,
                "tokens": s.new_tokens,
                "tokens_per_step": s.tokens_per_step,
                "drafted": s.drafted,
                "tries": tries,
                "rejections": s.rejections,
                "rejections_per_step": s.rejections / s.steps if s.steps else 0.0,
                "rejections_per_token": s.rejections / s.new_tokens if s.new_tokens else 0.0,
                "corrections": corrections,
                "corrections_per_step": corrections / s.steps if s.steps else 0.0,
                "corrections_per_token": corrections / s.new_tokens if s.new_tokens else 0.0,
                "tv_sum": s.tv_sum,
                "wall_s": s.wall_s,
            }
        )
    single = next((r["tv_sum"] for r in rows if r["M"] == 1), None)
    for r in rows:
        r["single_draft_tv_sum"] = single
    return rows
