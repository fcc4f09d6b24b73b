"""Multi-draft proposer: the pair's draft model drafts M candidate continuations at once, one KV-cache row each; they
merge into one token tree by their shared prefixes, which the target verifies in one pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specviz.core.model import LanguageModel
from specviz.core.proposal import Proposal, Proposer, common_prefix_len
from specviz.core.sampling import Sampler, at_least_fp32, sample
from specviz.core.tree import Tree


class MultiDraftProposer(Proposer):
    """M candidates of gamma tokens. Rule 'sample': each drawn independently from q (what multi-step speculative
    sampling needs). Greedy: M distinct candidates, the draft's top-M first tokens each continued greedily (the first
    is the single draft's guess), so a second choice can win where the first fails."""

    name = "multidraft"
    uses_model = True

    def __init__(self, draft: LanguageModel, gamma: int = 4, drafts: int = 4) -> None:
        super().__init__(gamma)
        self.lm = draft
        self.drafts = drafts
        self.fed: list[list[int]] = []  # per cache row, the tokens whose keys/values it holds
        self.last_candidates: list[list[int]] = []  # the M candidates behind the last tree, in draw order

    def reset(self, prompt_ids: Sequence[int]) -> None:
        self.lm.reset()
        self.fed = []

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        k = min(self.next_gamma(), limit)
        if k <= 0:
            return Proposal([])
        # keep the row that shares most with ctx (the accepted candidate's) and roll it back, keeping >= 1 to feed
        shared = [common_prefix_len(f, ctx) for f in self.fed] or [0]
        row = max(range(len(shared)), key=shared.__getitem__)
        self.lm.select_row(row)
        keep = min(shared[row], len(ctx) - 1)
        self.lm.crop(keep)
        logits = at_least_fp32(self.lm.forward(ctx[keep:], keep=1)[-1])  # (V,)
        m = min(self.drafts, logits.shape[-1])
        q0 = sampler.probs(logits).expand(m, -1)  # (M, V)
        first = torch.topk(logits, m).indices if sampler.greedy else sample(q0, sampler.generator)  # (M,)
        toks, qs = [first], [q0]
        for _ in range(k - 1):
            logits = at_least_fp32(self.lm.forward_rows(toks[-1][:, None].tolist(), keep=1)[:, -1])  # (M, V)
            probs = sampler.probs(logits)
            toks.append(sampler.pick(probs, logits))
            qs.append(probs)
        cands = torch.stack(toks, 1).tolist()  # (M, k)
        q = torch.stack(qs, 1)  # (M, k, V)
        self.fed = [list(ctx) + c[:-1] for c in cands]  # a candidate's last token is never fed
        self.last_candidates = cands
        return Proposal([], tree=Tree.merged(cands, q))
