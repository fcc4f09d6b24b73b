"""Blind guess proposer: gamma tokens drawn uniformly from the vocabulary, a floor that every real strategy should beat.

It draws with its own torch.Generator, seeded from GenConfig.seed and re-seeded on every reset(), so a run is
reproducible and the guesses do not depend on (or disturb) the verifier's random stream. It reports q = the uniform
distribution it really draws from, rather than None (one-hot): that is the honest q, and under rule 'sample' it
accepts a guess x with probability min(1, V * p(x)) instead of p(x). Under greedy only the guess itself matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specviz.core.proposal import Proposal, Proposer
from specviz.core.sampling import Sampler


class RandomProposer(Proposer):
    name = "random"

    def __init__(self, vocab_size: int, gamma: int = 4, seed: int = 0) -> None:
        super().__init__(gamma)
        self.vocab_size, self.seed = vocab_size, seed
        self.generator = torch.Generator()
        self.reset(())

    def reset(self, prompt_ids: Sequence[int]) -> None:
        self.generator.manual_seed(self.seed)

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        k = min(self.next_gamma(), limit)
        if k <= 0:
            return Proposal([])
        ids = torch.randint(self.vocab_size, (k,), generator=self.generator).tolist()
        q = torch.full((k, self.vocab_size), 1.0 / self.vocab_size)  # (k, V), uniform
        return Proposal(ids, q)
