"""Token-tree proposers: the draft model grown as a dynamic tree (EAGLE-2's idea), Medusa heads' top choices pruned by
their joint probability, and prompt lookup with every earlier match as a branch. Each returns a core.tree.Tree that the
engine verifies in one target pass under a tree mask."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import torch

from specviz.core.model import LanguageModel
from specviz.core.proposal import Outcome, Proposal, Proposer, common_prefix_len
from specviz.core.sampling import Sampler, at_least_fp32
from specviz.core.tree import ROOT, Tree
from specviz.medusa.heads import MedusaHeads
from specviz.proposers.ngram import match_extent

NODES = 16  # default node budget of a tree
WIDTH = 4  # default children per expanded node, and nodes expanded per level


class DraftTreeProposer(Proposer):
    """The draft model grows a tree level by level, up to gamma levels: at each level the `width` nodes with the
    highest path probability under the draft are expanded in ONE draft pass (a tree mask over the draft's own cache).
    Greedy: an expanded node gets its `width` likeliest tokens, and the `nodes` likeliest nodes of all that grew are
    verified (EAGLE-2's rerank), the draft's own greedy chain always among them and always expanded, so the tree
    never guesses worse than the single draft at the same depth. Sampling: an expanded node gets up to `width` independent draws from q there
    (repeats kept as repeated tries), each level a fair share of the node budget; their number is fixed before they
    are drawn and nothing drawn is pruned, which is what keeps the tree walk exact."""

    name = "drafttree"
    uses_model = True

    def __init__(self, draft: LanguageModel, gamma: int = 4, nodes: int = NODES, width: int = WIDTH) -> None:
        super().__init__(gamma)
        self.lm, self.nodes, self.width = draft, nodes, width
        self.fed: list[int] = []  # the context tokens whose keys/values sit in the draft's cache (tree nodes aside)

    def reset(self, prompt_ids: Sequence[int]) -> None:
        self.lm.reset()
        self.fed = []

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        depth = min(self.next_gamma(), limit)
        if depth <= 0:
            return Proposal([])
        keep = min(common_prefix_len(self.fed, ctx), len(ctx) - 1)  # the last tree's nodes go with the crop
        self.lm.crop(keep)
        q0 = sampler.probs(at_least_fp32(self.lm.forward(list(ctx[keep:]), keep=1)[-1]))  # (V,)
        self.fed = list(ctx)
        t = _Growing()
        frontier: list[tuple[int, torch.Tensor]] = [(ROOT, q0)]  # nodes to expand and the draft's q there
        in_draft: dict[int, int] = {}  # tree node -> its index in the draft's tree passes
        for level in range(depth):
            quota = -(-(self.nodes - len(t.ids)) // (depth - level)) if not sampler.greedy else len(frontier) * self.width
            grown: list[int] = []
            for node, q in frontier:
                m = min(self.width, quota - len(grown) if not sampler.greedy else self.width)
                if m <= 0:
                    break
                if sampler.greedy:
                    toks = torch.topk(q, min(m, q.shape[-1])).indices.tolist()
                else:  # m independent draws; a repeat is one node tried again
                    toks = torch.multinomial(q, m, replacement=True, generator=sampler.generator).tolist()
                new = t.add(node, toks, q)
                if sampler.greedy and (node in t.chain or node == ROOT) and new:
                    t.chain.add(new[0])  # the top-1 child of the chain: the single draft's next guess
                grown += new
            if level == depth - 1 or not grown or (not sampler.greedy and len(t.ids) >= self.nodes):
                break
            best = sorted(grown, key=lambda i: (i not in t.chain, -t.score[i]))[: self.width]  # the likeliest nodes
            feed_parents = [in_draft[t.parents[i]] if t.parents[i] != ROOT else -1 for i in best]
            logits = self.lm.forward_tree([t.ids[i] for i in best], feed_parents, extend=level > 0)  # (len(best), V)
            for i in best:
                in_draft[i] = len(in_draft)
            probs = sampler.probs(at_least_fp32(logits))
            frontier = [(i, probs[j]) for j, i in enumerate(best)]
        return Proposal([], tree=t.tree(self.nodes if sampler.greedy else None))


class _Growing:
    """A draft tree while it grows: nodes parents first, each with the q it was drawn from and its log path
    probability under the draft."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.parents: list[int] = []
        self.q: list[torch.Tensor] = []
        self.score: list[float] = []
        self.tries: dict[int, list[int]] = {}
        self.chain: set[int] = set()  # greedy: the nodes of the draft's own greedy chain

    def add(self, node: int, toks: list[int], q: torch.Tensor) -> list[int]:
        """Children `toks` of `node` drawn from q (a repeated token is one node tried again). -> the new nodes"""
        base = self.score[node] if node != ROOT else 0.0
        seen: dict[int, int] = {}
        for tok in toks:
            if tok not in seen:
                seen[tok] = len(self.ids)
                self.ids.append(tok)
                self.parents.append(node)
                self.q.append(q)
                self.score.append(base + math.log(max(float(q[tok]), 1e-30)))
            self.tries.setdefault(node, []).append(seen[tok])
        return list(seen.values())

    def tree(self, budget: int | None) -> Tree:
        """The tree, or its greedy chain and then its likeliest other nodes, `budget` in all (a child never scores
        above its parent, and ties keep the earlier node, so the kept set holds every kept node's parent)."""
        q = torch.stack(self.q) if self.q else None
        if budget is None or len(self.ids) <= budget:
            return Tree(self.ids, self.parents, q, self.tries)
        rank = sorted(range(len(self.ids)), key=lambda i: (i not in self.chain, -self.score[i], i))
        kept = sorted(rank[:budget])
        new = {old: j for j, old in enumerate(kept)}
        parents = [new[self.parents[i]] if self.parents[i] != ROOT else ROOT for i in kept]
        return Tree([self.ids[i] for i in kept], parents, q[kept] if q is not None else None)


class MedusaTreeProposer(Proposer):
    """Medusa's tree (Cai et al. 2024): head i's top `width` tokens are the choices at depth i + 1 under every node of
    depth i; the `nodes` paths with the highest product of head probabilities are kept. The guesses depend on the
    context alone (q = one-hot), so the walk keeps greedy and sampled output exactly the target's."""

    name = "medusatree"
    wants_hidden = True

    def __init__(
        self, target: LanguageModel, heads: MedusaHeads, gamma: int = 4, nodes: int = NODES, width: int = WIDTH
    ) -> None:
        super().__init__(min(gamma, heads.count))
        self.target, self.heads, self.nodes, self.width = target, heads, nodes, width
        self.h: torch.Tensor | None = None

    def reset(self, prompt_ids: Sequence[int]) -> None:
        hid = self.target.last_hidden
        self.h = hid[-2] if hid is not None and len(hid) > 1 else None

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        k = min(self.next_gamma(), limit)
        if k <= 0 or self.h is None:
            return Proposal([])
        toks, probs = self.heads.top(self.h, k, self.width)  # (k, width) each
        ids: list[int] = []
        parents: list[int] = []
        heap = [(-probs[0][j], j, ROOT, 0, toks[0][j]) for j in range(len(toks[0]))]  # (-path prob, tie, parent, depth, token)
        heapq.heapify(heap)
        tie = len(heap)
        while heap and len(ids) < self.nodes:
            neg, _, par, d, tok = heapq.heappop(heap)
            node = len(ids)
            ids.append(tok)
            parents.append(par)
            if d + 1 < k:
                for j, (t, pr) in enumerate(zip(toks[d + 1], probs[d + 1], strict=True)):
                    heapq.heappush(heap, (neg * pr, tie + j, node, d + 1, t))
                tie += len(toks[d + 1])
        return Proposal([], tree=Tree(ids, parents))

    def update(self, outcome: Outcome) -> None:
        hid = outcome.target_hidden
        n = outcome.n_accepted
        self.h = hid[n] if hid is not None and n < len(hid) else None


class NgramTreeProposer(Proposer):
    """Prompt lookup as a tree: every earlier occurrence of the longest suffix n-gram (most recent first, at most
    `width`) drafts what followed it, up to gamma tokens; shared prefixes merge, up to `nodes` nodes. No model call,
    no probabilities (q = one-hot)."""

    name = "ngramtree"

    def __init__(self, gamma: int = 4, max_n: int = 3, min_n: int = 1, nodes: int = NODES, width: int = WIDTH) -> None:
        super().__init__(gamma)
        self.max_n, self.min_n, self.nodes, self.width = max_n, min_n, nodes, width

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        k = min(self.next_gamma(), limit)
        branches = lookup_branches(ctx, self.max_n, self.min_n, k, self.width)
        if not branches:
            return Proposal([])
        tree = Tree.merged(branches)
        if len(tree) > self.nodes:  # the budget keeps the most recent matches' nodes (they come first)
            tree = Tree(tree.ids[: self.nodes], tree.parents[: self.nodes])
        return Proposal([], tree=Tree(tree.ids, tree.parents))


def lookup_branches(ctx: Sequence[int], max_n: int, min_n: int, k: int, width: int) -> list[list[int]]:
    """Up to `width` continuations of k tokens, one per earlier occurrence of the longest suffix n-gram that occurred
    before (max_n >= n >= min_n), most recent first, longest agreement with the context first among equals; a copy
    may run on into the text it copies (LZ77-style)."""
    ctx = list(ctx)
    size = len(ctx)
    if k <= 0:
        return []
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        suffix = ctx[size - n :]
        starts = [s for s in range(size - n - 1, -1, -1) if ctx[s : s + n] == suffix]
        if not starts:
            continue
        starts.sort(key=lambda s: -match_extent(ctx, s, n))  # stable: recency breaks ties
        out = []
        for s in starts[:width]:
            cont: list[int] = []
            for j in range(k):
                pos = s + n + j
                cont.append(ctx[pos] if pos < size else cont[pos - size])
            out.append(cont)
        return out
    return []
