"""Pure numbers about runs: a run summary from its step events, the measured cost ratio c and speedup, and where two outputs part."""

from __future__ import annotations

from collections.abc import Sequence

from specviz.core.events import RunSummary, StepEvent


def position_stats(steps: Sequence[StepEvent]) -> tuple[list[int], list[int], list[float]]:
    """Per draft position (for medusa, per head): checked drafts, accepted drafts, and the summed 1 - TV (the expected acceptances)."""
    width = max((s.n_drafted for s in steps), default=0)
    reached, accepted, expect = [0] * width, [0] * width, [0.0] * width
    for s in steps:
        for t in s.drafted:
            if t.origin in ("accepted", "rejected"):
                reached[t.draft_pos] += 1
                accepted[t.draft_pos] += t.origin == "accepted"
                expect[t.draft_pos] += 1 - (t.tv or 0.0)
    return reached, accepted, expect


def summarize(
    steps: Sequence[StepEvent],
    *,
    strategy: str,
    rule: str,
    gamma: int,
    wall_s: float,
    prefill_ms: float = 0.0,
    stop_reason: str = "max_new_tokens",
    output_ids: Sequence[int] = (),
    text: str = "",
) -> RunSummary:
    n_steps = len(steps)
    drafted = sum(s.n_drafted for s in steps)
    accepted = sum(s.n_accepted for s in steps)
    new_tokens = steps[-1].total_tokens if steps else 0
    draft_ms = sum(s.draft_ms for s in steps)
    verify_ms = sum(s.verify_ms for s in steps)
    reached = [t for s in steps for t in s.drafted if t.origin in ("accepted", "rejected") and t.tv is not None]
    return RunSummary(
        strategy=strategy,
        rule=rule,
        gamma=gamma,
        new_tokens=new_tokens,
        steps=n_steps,
        drafted=drafted,
        accepted=accepted,
        acceptance_rate=accepted / drafted if drafted else 0.0,
        mean_accepted=accepted / n_steps if n_steps else 0.0,
        tokens_per_step=new_tokens / n_steps if n_steps else 0.0,
        wall_s=wall_s,
        prefill_ms=prefill_ms,
        tokens_per_s=new_tokens / wall_s if wall_s > 0 else 0.0,
        draft_ms=draft_ms,
        verify_ms=verify_ms,
        cost_ratio=cost_ratio(steps),
        tv_sum=sum(t.tv for t in reached),  # type: ignore[misc]
        # rejected drafted tokens: one per step at most with one draft; every rejected try with several drafts
        rejections=sum(t.origin == "rejected" for s in steps for t in s.tokens),
        stop_reason=stop_reason,
        output_ids=list(output_ids),
        text=text,
    )


def cost_ratio(steps: Sequence[StepEvent]) -> float | None:
    """c = (ms per drafted token) / (ms per target verification pass), from one run's own timings."""
    drafted = sum(s.n_drafted for s in steps)
    if not drafted or not steps:
        return None
    per_draft = sum(s.draft_ms for s in steps) / drafted
    per_verify = sum(s.verify_ms for s in steps) / len(steps)
    return per_draft / per_verify if per_verify > 0 else None


def with_plain(spec: RunSummary, plain: RunSummary) -> RunSummary:
    """Attach the measured plain baseline: speedup = spec tokens/s over plain tokens/s (= plain time / speculative
    time for the same number of tokens), and pass_ratio, what this run's verification pass cost against plain's."""
    spec.plain_tokens_per_s = plain.tokens_per_s
    spec.speedup = spec.tokens_per_s / plain.tokens_per_s if plain.tokens_per_s > 0 else None
    if spec.drafted and spec.steps and plain.steps and plain.verify_ms > 0:  # V(k)/V(1) for the cost-aware prediction
        spec.pass_ratio = (spec.verify_ms / spec.steps) / (plain.verify_ms / plain.steps)
    return spec


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (or of the shorter end), None when identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
