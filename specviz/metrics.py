"""Pure numbers about runs: summaries of step events, speedup, and the theory (Leviathan et al. 2023; Yin et al. 2024)."""

from __future__ import annotations

from collections.abc import Sequence

from specviz.events import RunSummary, StepEvent


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
    """Attach the measured plain baseline: speedup = spec tokens/s over plain tokens/s
    (= plain time / speculative time for the same number of tokens)."""
    spec.plain_tokens_per_s = plain.tokens_per_s
    spec.speedup = spec.tokens_per_s / plain.tokens_per_s if plain.tokens_per_s > 0 else None
    return spec


def expected_tokens_per_step(alpha: float, gamma: int) -> float:
    """Leviathan et al. (2023), eq. 1: E[tokens per step] = (1 - alpha^(gamma+1)) / (1 - alpha)."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float) -> float:
    """Leviathan et al. (2023), thm. 3.8: (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + 1))."""
    return expected_tokens_per_step(alpha, gamma) / (gamma * c + 1)


def best_gamma(alpha: float, c: float, max_gamma: int = 16) -> int:
    return max(range(1, max_gamma + 1), key=lambda g: expected_speedup(alpha, g, c))


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token (or of the shorter end), None when identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def why_sentence(alpha: float, c: float | None, gamma: int, speedup: float | None) -> str:
    """One plain sentence on why a run was or was not faster."""
    if c is None:
        return "No drafts were made, so this run is plain decoding."
    pred = expected_speedup(alpha, gamma, c)
    head = f"Drafting costs {c:.2f} of a target step and {alpha:.0%} of guesses were accepted, so with gamma={gamma} "
    head += f"theory predicts {pred:.2f}x"
    if speedup is None:
        return head + "."
    verdict = "faster" if speedup > 1.02 else ("no faster" if speedup > 0.98 else "slower")
    tail = f"; measured {speedup:.2f}x ({verdict} than plain)."
    if speedup < 1 and alpha < c:
        tail += " Acceptance is below the cost ratio, the break-even point (alpha = c)."
    if c >= 0.5:  # e.g. the 0.5B draft beside the 1.5B target on a GPU, where every pass is mostly fixed cost
        tail += (
            " A draft that costs half a target step or more leaves little to gain: prompt lookup, layer skip or"
            " helper heads guess for less."
        )
    return head + tail
