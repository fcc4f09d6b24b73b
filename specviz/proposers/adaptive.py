"""Adaptive draft length for a model-based proposer: Hugging Face's "heuristic" schedule, wrapped around any proposer.

After a step whose whole draft was accepted, gamma grows by 2; after a step with a rejection, it shrinks by 1; it
stays within [1, max_gamma]. A step that drafted nothing (the token budget ran out) changes nothing, and a draft cut
short (confidence stop) but fully accepted counts as fully accepted (transformers compares with the asked length
instead and would shrink). The engine asks next_gamma() before each step and records it in StepEvent.gamma.
"""

from __future__ import annotations

from collections.abc import Sequence

from specviz.core.proposal import Outcome, Proposal, Proposer
from specviz.core.sampling import Sampler

GROW, SHRINK = 2, 1


def next_gamma(gamma: int, outcome: Outcome, max_gamma: int) -> int:
    """The heuristic schedule, one step: +2 after full acceptance, -1 after a rejection, clamped to [1, max_gamma]."""
    if outcome.n_drafted == 0:
        return gamma
    if outcome.n_accepted >= outcome.n_drafted:
        return min(gamma + GROW, max_gamma)
    return max(gamma - SHRINK, 1)


class AdaptiveGamma(Proposer):
    """Wraps `inner` (same name, same drafts); sets inner.gamma to the schedule's value before each proposal."""

    uses_model = True

    def __init__(self, inner: Proposer, max_gamma: int) -> None:
        super().__init__(inner.gamma)
        self.inner, self.start, self.max_gamma = inner, min(inner.gamma, max_gamma), max_gamma
        self.name = inner.name
        self.gamma = self.start

    def reset(self, prompt_ids: Sequence[int]) -> None:
        self.gamma = self.start
        self.inner.reset(prompt_ids)

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        self.inner.gamma = self.gamma
        return self.inner.propose(ctx, limit, sampler)

    def update(self, outcome: Outcome) -> None:
        self.inner.update(outcome)
        self.gamma = next_gamma(self.gamma, outcome, self.max_gamma)
