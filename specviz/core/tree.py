"""Token trees: a set of guesses with shared prefixes, verified in ONE target pass under a tree attention mask, and the
rules that walk it (greedy: follow the child equal to the target's argmax; sampling: recursive rejection over
siblings, SpecInfer's multi-step speculative sampling, exact in distribution)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from specviz.core.sampling import Sampler, draft_probs, residual, sample, tv_distance

ROOT = -1  # the parent of the root's children: the context's last token


@dataclass
class Tree:
    """Guessed tokens `ids` (N,), listed parents first; parents[i] is a node index or ROOT.
    q: (N, V), q[i] the distribution node i was drawn from (the proposer's at its parent); None: the guesses are not
    draws (lookup, top-k), and the rule treats each as q = one-hot on its token.
    tries: the order in which the rule tries a node's children, {parent: [child, ...]}; a child listed twice stands
    for two independent draws that gave the same token (the rule needs both). Default: each child once, in node order.
    Sampled children must be i.i.d. draws from one q at their parent, their number fixed before they were drawn."""

    ids: list[int]
    parents: list[int]
    q: torch.Tensor | None = None
    tries: dict[int, list[int]] | None = None
    _kids: dict[int, list[int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.parents):
            raise ValueError(f"{len(self.ids)} tokens but {len(self.parents)} parents")
        for i, par in enumerate(self.parents):
            if not ROOT <= par < i:
                raise ValueError(f"node {i}'s parent {par} must be ROOT or an earlier node")
            self._kids.setdefault(par, []).append(i)

    def __len__(self) -> int:
        return len(self.ids)

    def children(self, node: int) -> list[int]:
        return self._kids.get(node, [])

    def order(self, node: int) -> list[int]:
        """The children of `node` in the order the rule tries them."""
        return (self.tries or {}).get(node, self.children(node))

    def depth(self, node: int) -> int:
        """1 for the root's children."""
        d = 0
        while node != ROOT:
            node, d = self.parents[node], d + 1
        return d

    @property
    def depths(self) -> list[int]:
        out: list[int] = []
        for par in self.parents:
            out.append(out[par] + 1 if par != ROOT else 1)
        return out

    def path_to(self, node: int) -> list[int]:
        """The nodes from the root's child down to `node`."""
        out = []
        while node != ROOT:
            out.append(node)
            node = self.parents[node]
        return out[::-1]

    @staticmethod
    def chain(ids: Sequence[int], q: torch.Tensor | None = None) -> Tree:
        return Tree(list(ids), list(range(ROOT, len(ids) - 1)), q)

    @staticmethod
    def merged(cands: Sequence[Sequence[int]], q: torch.Tensor | None = None) -> Tree:
        """Candidate continuations (M, k) merged into one tree by their shared prefixes. q (M, k, V): what each
        candidate token was drawn from. Duplicates stay separate tries of the merged node, in candidate order, as
        multi-step speculative sampling tries M independent drafts."""
        ids: list[int] = []
        parents: list[int] = []
        rows: list[tuple[int, int]] = []  # (candidate, position) whose q a node carries
        tries: dict[int, list[int]] = {}
        node_of: dict[tuple[int, int], int] = {}  # (parent, token) -> node
        for j, cand in enumerate(cands):
            par = ROOT
            for i, tok in enumerate(cand):
                key = (par, int(tok))
                if key not in node_of:
                    node_of[key] = len(ids)
                    ids.append(int(tok))
                    parents.append(par)
                    rows.append((j, i))
                tries.setdefault(par, []).append(node_of[key])
                par = node_of[key]
        qt = None
        if q is not None and ids:
            qt = torch.stack([q[j, i] for j, i in rows])
        return Tree(ids, parents, qt, tries)


@dataclass(frozen=True)
class NodeTry:
    """One test of a child: accept_prob is min(1, p'(x)/q(x)) with p' the residual after the siblings rejected before
    it (p itself under greedy, for display); tv = TV(p', q), this try's chance of rejection (None under greedy)."""

    node: int
    accepted: bool
    accept_prob: float | None = None
    tv: float | None = None


@dataclass(frozen=True)
class TreeVerdict:
    """path: the accepted nodes, root's child first; then the target adds `token` ('resampled' or 'bonus').
    tries: every test in the order made; residual: what a correction was drawn from (None: bonus, or greedy)."""

    path: tuple[int, ...]
    token: int
    origin: str
    tries: tuple[NodeTry, ...]
    residual: torch.Tensor | None = None

    @property
    def n_accepted(self) -> int:
        return len(self.path)


def tree_greedy_verify(tree: Tree, target_logits: torch.Tensor) -> TreeVerdict:
    """From the root, follow the child equal to the target's argmax; the target's argmax at the last node reached is
    its token. target_logits (N+1, V): row 0 the root's, row i+1 node i's. Every child of a node on the path is
    tested, so the refused ones show as rejected."""
    best = target_logits.argmax(-1).tolist()  # (N+1,), one host sync
    node, path, tries = ROOT, [], []
    while True:
        want = best[node + 1]
        hit = None
        for c in dict.fromkeys(tree.order(node)):  # each child once: greedy has no draws to repeat
            ok = tree.ids[c] == want and hit is None
            tries.append(NodeTry(c, ok))
            hit = c if ok else hit
        if hit is None:
            origin = "bonus" if not tree.children(node) else "resampled"
            return TreeVerdict(tuple(path), want, origin, tuple(tries))
        path.append(hit)
        node = hit


def tree_sample_verify(tree: Tree, p: torch.Tensor, sampler: Sampler) -> TreeVerdict:
    """Multi-step speculative sampling over a tree (SpecInfer, Miao et al. ASPLOS 2024). p (N+1, V): p[i+1] is the
    target's distribution after node i's path (p[0] the root's). At a node, starting from p' = p there, its children
    are tried in order: accept x with probability min(1, p'(x) / q(x)); after a rejection p' <- norm(max(0, p' - q)).
    The first accepted child becomes the node; if all are refused the correction is drawn from the last p'; a leaf
    reached gets a bonus token from p.
    Why the output follows p: at a node, given everything decided before (which never looked at these children), its
    children are independent draws from one q (or fixed tokens, q one-hot), and each test emits x with probability
    min(p'(x), q(x)) and otherwise passes on norm(max(0, p' - q)), so by induction the token emitted there follows p'
    = p; the subtree below the accepted child is then walked from a fresh p."""
    node, path, tries = ROOT, [], []
    vocab = p.shape[-1]
    while True:
        kids = tree.order(node)
        p_cur = p[node + 1]  # (V,)
        if not kids:
            return TreeVerdict(tuple(path), int(sample(p_cur, sampler.generator)), "bonus", tuple(tries))
        hit = None
        for c in kids:
            x = tree.ids[c]
            tok = torch.tensor(x, device=p.device)
            q_c = draft_probs(tree.q[c] if tree.q is not None else None, tok, vocab, p.dtype).to(p.device, p.dtype)
            ratio = float(p_cur[x]) / max(float(q_c[x]), torch.finfo(q_c.dtype).tiny)
            ok = float(sampler.uniform(1, p.device)) < ratio
            tries.append(NodeTry(c, ok, min(1.0, ratio), float(tv_distance(p_cur, q_c))))
            if ok:
                hit = c
                break
            p_cur = residual(p_cur, q_c)
        if hit is None:
            token = int(sample(p_cur, sampler.generator))
            return TreeVerdict(tuple(path), token, "resampled", tuple(tries), p_cur)
        path.append(hit)
        node = hit
