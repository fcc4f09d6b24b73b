"""Medusa proposer: trained helper heads read the target's final hidden state from the last verification pass and
guess the next few tokens at once, so drafting needs no model call of its own (Cai et al. 2024, single candidate).

After a pass that accepted n guesses, row n of the pass's hidden states is the state whose LM-head prediction was
the token just emitted; head i on it guesses the token i + 1 places after that one. Guesses are top-1 (q = one-hot),
a function of the context alone, so the verification rule keeps greedy and sampled output exactly the target's."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specviz.core.model import LanguageModel
from specviz.core.proposal import Outcome, Proposal, Proposer
from specviz.core.sampling import Sampler
from specviz.medusa.heads import MedusaHeads


class MedusaProposer(Proposer):
    name = "medusa"
    wants_hidden = True

    def __init__(self, target: LanguageModel, heads: MedusaHeads, gamma: int = 4, confidence: float = 0.0) -> None:
        super().__init__(min(gamma, heads.count))
        self.target, self.heads = target, heads
        # keep guesses while the product of the heads' top probabilities (a guess of the chance that every guess so
        # far is right) is at least this; 0 = always all gamma guesses
        self.confidence = confidence
        self.h: torch.Tensor | None = None  # the hidden state the next guesses are read from
        self.last_probs: list[float] = []  # the heads' top probabilities behind the last proposal

    def reset(self, prompt_ids: Sequence[int]) -> None:
        # the prompt's pass: step 0 drafts after the last prompt token, predicted by the state before it (none for a
        # one-token prompt)
        hid = self.target.last_hidden
        self.h = hid[-2] if hid is not None and len(hid) > 1 else None

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        k = min(self.next_gamma(), limit)
        self.last_probs = []
        if k <= 0 or self.h is None:
            return Proposal([])
        ids, probs = self.heads.guess(self.h, k)
        if self.confidence:
            keep, chance = 0, 1.0
            for p in probs:
                chance *= p
                if chance < self.confidence:
                    break
                keep += 1
            ids, probs = ids[:keep], probs[:keep]
        self.last_probs = probs
        return Proposal(ids)

    def update(self, outcome: Outcome) -> None:
        hid = outcome.target_hidden
        n = outcome.n_accepted
        self.h = hid[n] if hid is not None and n < len(hid) else None
