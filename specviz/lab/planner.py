"""Cost calibration and the gamma planner: time real target passes of k = 1..16 tokens and one-token draft passes on
this machine (c and the cost curve V(k)/V(1)), Leviathan et al.'s predicted speedup against gamma (the classic form,
which assumes V(k) = V(1), and one that uses the measured curve), and measured speedups of a few gammas."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.core.metrics import with_plain
from specviz.core.progress import SweepLog
from specviz.core.theory import expected_speedup, expected_tokens_per_step
from specviz.proposers import build_proposer


@dataclass
class Costs:
    """Measured on this machine: median ms of a target pass over k tokens on a warm KV cache (the verification pass
    of k - 1 drafts), and median ms of one draft pass over one token (None when the pair has no draft model)."""

    ks: list[int]
    target_ms: list[float]
    draft_ms: float | None
    repeats: int
    context: int  # tokens in the KV cache while timing

    def verify_ms(self, k: int) -> float:
        """V(k), linearly interpolated between measured k and extrapolated from the last two beyond them."""
        ks, ms = self.ks, self.target_ms
        if k in ks:
            return ms[ks.index(k)]
        if len(ks) == 1:
            return ms[0] * k / ks[0]
        i = next((j for j in range(1, len(ks)) if ks[j] > k), len(ks) - 1)
        k0, k1, m0, m1 = ks[i - 1], ks[i], ms[i - 1], ms[i]
        return max(m0 + (m1 - m0) * (k - k0) / (k1 - k0), 1e-9)

    def ratio(self, k: int) -> float:
        """V(k) / V(1): what a pass over k tokens costs in one-token passes (Leviathan's model assumes 1)."""
        return self.verify_ms(k) / self.verify_ms(1)

    @property
    def c(self) -> float | None:
        """c = draft ms per token / target ms per one-token pass."""
        return self.draft_ms / self.verify_ms(1) if self.draft_ms is not None else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Costs:
        return cls(**d)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_ms(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


def measure_costs(
    pair: Any,
    prompt_ids: Sequence[int],
    ks: Iterable[int] = range(1, 17),
    repeats: int = 3,
    should_stop: Callable[[], bool] | None = None,
    progress: SweepLog | None = None,
) -> Costs:
    """Time real forward passes: the target over k tokens after the prompt (cache cropped back after each), the draft
    over one token; medians over `repeats` rounds, each round over every k in turn."""
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1 or repeats < 1:
        raise ValueError("need k >= 1 and repeats >= 1")
    stop = should_stop or (lambda: False)
    ctx = list(prompt_ids)
    target, draft = pair.target, pair.draft
    feed = [ctx[-1]] + [ctx[i % len(ctx)] for i in range(max(ks) - 1)]  # the content does not change the cost
    target.reset()
    if len(ctx) > 1:
        target.forward(ctx[:-1], keep=1)
    base = target.length
    samples: dict[int, list[float]] = {k: [] for k in ks}
    for r in range(repeats + 1):  # round 0 warms up every shape and is not kept
        for k in ks[r % len(ks) :] + ks[: r % len(ks)]:  # each round starts elsewhere: a busy spell hits no k alone
            if stop():
                raise InterruptedError("stopped")
            ms = _time_ms(lambda k=k: target.forward(feed[:k]), target.device)
            target.crop(base)
            if r:
                samples[k].append(ms)
        if progress:
            progress(f"timing target passes: round {r} of {repeats}", 0.8 * r / repeats)
    draft_ms = None
    if draft is not None:
        draft.reset()
        if len(ctx) > 1:
            draft.forward(ctx[:-1], keep=1)
        dbase = draft.length
        times = []
        for r in range(max(repeats, 5) + 1):
            ms = _time_ms(lambda: draft.forward([ctx[-1]], keep=1), draft.device)
            draft.crop(dbase)
            if r:
                times.append(ms)
        draft_ms = statistics.median(times)
        draft.reset()
    target.reset()
    return Costs(ks, [statistics.median(samples[k]) for k in ks], draft_ms, repeats, len(ctx))


def cost_aware_speedup(alpha: float, gamma: int, c: float, ratio_next: float) -> float:
    """Leviathan's speedup with the measured pass cost: E[tokens] / (gamma c + V(gamma + 1) / V(1))."""
    return expected_tokens_per_step(alpha, gamma) / (gamma * c + ratio_next)


def speedup_curve(alpha: float, costs: Costs, gammas: Iterable[int] | None = None) -> list[dict[str, float]]:
    """Per gamma: expected tokens per pass, the classic predicted speedup and the cost-curve-aware one."""
    c = costs.c
    if c is None:
        raise ValueError("the pair has no draft model, so there is no c to plan with")
    gammas = list(gammas) if gammas is not None else list(range(1, max(costs.ks)))
    return [
        {
            "gamma": g,
            "expected_tokens": expected_tokens_per_step(alpha, g),
            "classic": expected_speedup(alpha, g, c),
            "cost_aware": cost_aware_speedup(alpha, g, c, costs.ratio(g + 1)),
            "ratio": costs.ratio(g + 1),
        }
        for g in gammas
    ]


def best_gamma(curve: Sequence[dict[str, float]], key: str = "cost_aware") -> int:
    return int(max(curve, key=lambda r: r[key])["gamma"])


def measure_speedups(
    pair: Any,
    prompt_ids: Sequence[int],
    cfg: GenConfig,
    gammas: Sequence[int] = (1, 2, 4, 8),
    strategy: str = "draft",
    should_stop: Callable[[], bool] | None = None,
    progress: SweepLog | None = None,
) -> tuple[list[dict[str, Any]], Any]:
    """One plain run, then `strategy` at each gamma (same prompt and settings): measured speedup = plain time /
    strategy time. -> (rows, the plain run's RunSummary)."""
    stop = should_stop or (lambda: False)
    kw = {"eos_ids": getattr(getattr(pair, "codec", None), "eos_ids", ()), "should_stop": stop}
    if progress:
        progress("measuring plain decoding", None)
    plain = run(pair.target, None, prompt_ids, cfg, **kw).run()
    rows = []
    for i, g in enumerate(gammas):
        if stop():
            break
        if progress:
            progress(f"measuring {strategy} at gamma {g} ({i + 1} of {len(gammas)})", None)
        c = cfg.with_(gamma=int(g)).validated()
        s = with_plain(run(pair.target, build_proposer(strategy, pair, c), prompt_ids, c, **kw).run(), plain)
        reached = s.accepted + s.rejections
        rows.append(
            {
                "gamma": int(g),
                "tokens": s.new_tokens,
                "steps": s.steps,
                "tokens_per_step": s.tokens_per_step,
                "accepted": s.accepted,
                "checked": reached,
                "alpha": s.accepted / reached if reached else 0.0,
                "c_run": s.cost_ratio,
                "wall_s": s.wall_s,
                "plain_wall_s": plain.wall_s,
                "speedup": s.speedup,
                "identical": s.output_ids == plain.output_ids if cfg.rule == "greedy" else None,
            }
        )
    return rows, plain


def pooled_alpha(rows: Sequence[dict[str, Any]]) -> float:
    """alpha = accepted / checked drafts over all measured runs."""
    checked = sum(r["checked"] for r in rows)
    return sum(r["accepted"] for r in rows) / checked if checked else 0.0
