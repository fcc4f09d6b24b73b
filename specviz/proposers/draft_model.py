"""Draft-model proposer: a smaller causal LM with the target's tokenizer drafts gamma tokens autoregressively on its own KV cache."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specviz.core.model import LanguageModel
from specviz.core.proposal import Proposal, Proposer, common_prefix_len
from specviz.core.sampling import Sampler, at_least_fp32


class DraftModelProposer(Proposer):
    name = "draft"
    uses_model = True

    def __init__(self, draft: LanguageModel, gamma: int = 4, confidence: float = 0.0) -> None:
        super().__init__(gamma)
        self.lm = draft
        self.confidence = confidence  # stop drafting after a token whose draft top probability is below this (0 = off)
        self.fed: list[int] = []  # the tokens whose keys/values sit in the draft's cache

    def reset(self, prompt_ids: Sequence[int]) -> None:
        self.lm.reset()
        self.fed = []

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        k = min(self.next_gamma(), limit)
        if k <= 0:
            return Proposal([])
        # roll the cache back to what it shares with ctx (rejected drafts go), keeping >= 1 token to feed
        keep = min(common_prefix_len(self.fed, ctx), len(ctx) - 1)
        self.fed = self.fed[:keep]
        self.lm.crop(keep)
        new = list(ctx[keep:])
        ids: list[int] = []
        qs: list[torch.Tensor] = []
        for _ in range(k):
            logits = at_least_fp32(self.lm.forward(new, keep=1)[-1])  # (V,)
            self.fed += new
            probs = sampler.probs(logits)  # (V,)
            tok = int(sampler.pick(probs, logits))
            ids.append(tok)
            qs.append(probs)
            new = [tok]
            if self.confidence and float(probs.max()) < self.confidence:
                break
        return Proposal(ids, torch.stack(qs))  # q: (k, V)
