"""Replay a recorded greedy run under other draft-length schedules: one teacher-forced draft pass over prompt + output
tells, at every output position, whether the draft's argmax equals the target's token and how confident the draft
was. Under greedy that fixes what any schedule would have accepted, so the steps, tokens per step and drafted tokens
of constant gamma, the +2/-1 heuristic, the confidence stop and an oracle follow exactly; the time and speedup are
predictions from the measured costs (specviz/lab/planner.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from specviz.core.sampling import at_least_fp32, probs_from_logits
from specviz.lab.planner import Costs
from specviz.proposers.adaptive import GROW, SHRINK

SCHEDULES = ("constant", "best constant", "adaptive", "confidence", "oracle")


@dataclass
class Agreement:
    """Per output position: the draft's argmax equals the recorded token; the draft's top probability there."""

    agree: list[bool]
    conf: list[float]


def draft_agreement(
    draft: Any, prompt_ids: Sequence[int], output_ids: Sequence[int], top_k: int = 0, top_p: float = 1.0
) -> Agreement:
    """ONE draft forward over prompt + output[:-1]; row j predicts output[j]. The confidence is the top probability
    of the processed distribution at temperature 1, as the confidence stop of the draft proposer reads it."""
    if not output_ids:
        return Agreement([], [])
    n = len(output_ids)
    draft.reset()
    logits = at_least_fp32(draft.forward(list(prompt_ids) + list(output_ids[:-1]), keep=n))  # (n, V)
    draft.reset()
    want = torch.tensor(list(output_ids), device=logits.device)
    agree = (logits.argmax(-1) == want).tolist()
    conf = probs_from_logits(logits, 1.0, top_k, top_p).max(-1).values.tolist()
    return Agreement(agree, conf)


def simulate(
    ag: Agreement,
    schedule: str,
    gamma: int,
    max_new_tokens: int,
    max_gamma: int = 32,
    confidence: float = 0.0,
) -> dict[str, Any]:
    """Steps of the engine under `schedule` on the recorded output (len(ag.agree) tokens), mirroring it: the draft
    length is capped by the token budget (max_new_tokens - emitted - 1), a step emits the accepted run plus the
    target's token, and the run ends where the recording ended (EOS or the budget).
      constant: gamma every step.  adaptive: +2 after a fully accepted step, -1 after a rejection, in [1, max_gamma].
      confidence: gamma, but drafting stops after a token whose draft top probability is below `confidence`.
      oracle: drafts exactly the guesses that will be accepted, never one more.
    -> steps, tokens, drafted, accepted, per-step draft lengths. Drafted counts are exact except for the confidence
    stop after a wrong guess (the draft's confidence there is unknown; the full length is assumed)."""
    agree, conf = ag.agree, ag.conf
    total = len(agree)
    pos = steps = drafted = accepted = 0
    g = min(gamma, max_gamma)
    lengths: list[int] = []
    while pos < total:
        limit = max(max_new_tokens - pos - 1, 0)
        run = 0
        while pos + run < total and agree[pos + run]:
            run += 1
        if schedule == "oracle":
            d = min(run, limit)
        else:
            d = min(g, limit)
            if schedule == "confidence" and confidence > 0:
                # known confidences: the agreeing run and the first wrong guess, all drafted from the right context
                for i in range(min(d, run + 1, total - pos)):
                    if conf[pos + i] < confidence:
                        d = i + 1
                        break
        n = min(run, d)
        emitted = min(n + 1, total - pos)  # an EOS (the recording's end) cuts the step short
        kept = min(n, emitted)
        if schedule == "adaptive" and d > 0:
            g = min(g + GROW, max_gamma) if kept >= d else max(g - SHRINK, 1)
        steps += 1
        drafted += d
        accepted += kept
        lengths.append(d)
        pos += emitted
    return {"steps": steps, "tokens": total, "drafted": drafted, "accepted": accepted, "lengths": lengths}


def predicted_ms(lengths: Sequence[int], costs: Costs) -> float:
    """Each step: d draft passes and one target pass over d + 1 tokens, at the measured costs."""
    draft_ms = costs.draft_ms or 0.0
    return sum(d * draft_ms + costs.verify_ms(d + 1) for d in lengths)


def replay(
    ag: Agreement,
    costs: Costs,
    gamma: int,
    max_new_tokens: int,
    confidence: float = 0.5,
    max_gamma: int = 32,
    best_range: Sequence[int] = tuple(range(1, 16)),
) -> list[dict[str, Any]]:
    """Every schedule on one recording, with predicted time and speedup over plain decoding (one target pass per
    token) from the measured costs. 'best constant' is the constant gamma in best_range with the best prediction."""
    if not 1 <= gamma <= max_gamma or max_new_tokens < 1:  # every step must make progress, or the schedules never end
        raise ValueError(f"replay needs 1 <= gamma <= {max_gamma} and max_new_tokens >= 1, got {gamma}, {max_new_tokens}")
    plain_ms = len(ag.agree) * costs.verify_ms(1)

    def row(name: str, label: str, sim: dict[str, Any]) -> dict[str, Any]:
        ms = predicted_ms(sim["lengths"], costs)
        return {
            "schedule": name,
            "label": label,
            "steps": sim["steps"],
            "tokens": sim["tokens"],
            "tokens_per_step": sim["tokens"] / sim["steps"] if sim["steps"] else 0.0,
            "drafted": sim["drafted"],
            "accepted": sim["accepted"],
            "wasted": sim["drafted"] - sim["accepted"],
            "predicted_s": ms / 1e3,
            "predicted_speedup": plain_ms / ms if ms > 0 else None,
        }

    sims = {g: simulate(ag, "constant", g, max_new_tokens) for g in (*best_range, gamma)}
    best = min(sims, key=lambda g: predicted_ms(sims[g]["lengths"], costs))
    return [
        row("constant", f"constant gamma={gamma}", sims[gamma]),
        row("best constant", f"best constant gamma={best}", sims[best]),
        row(
            "adaptive",
            f"+2/-1 heuristic from {gamma}",
            simulate(ag, "adaptive", gamma, max_new_tokens, max_gamma=max_gamma),
        ),
        row(
            "confidence",
            f"confidence stop < {confidence:g}, gamma={gamma}",
            simulate(ag, "confidence", gamma, max_new_tokens, confidence=confidence),
        ),
        row("oracle", "oracle (drafts the accepted run)", simulate(ag, "oracle", gamma, max_new_tokens)),
    ]
