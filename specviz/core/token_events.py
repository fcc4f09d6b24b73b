"""Labelling a verification step's tokens: which drafted tokens were accepted, rejected or never reached, the target's
own token (a correction or a bonus), and with instrumentation p, q, min(1, p/q), TV and the detail panel's top tokens.
The engine calls this after its rule has decided; nothing here changes what is emitted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from specviz.core import relaxed
from specviz.core.events import TokenEvent, TreeNode
from specviz.core.proposal import Proposal
from specviz.core.sampling import draft_probs, residual, tv_distance
from specviz.core.tree import ROOT, NodeTry, Tree, TreeVerdict
from specviz.core.verify import Verdict

Piece = Callable[[Sequence[int], int], str]  # (context ids, token) -> the token's text in that context


@dataclass(frozen=True)
class TreeCheck:
    """One tree verification: the tree, the rule's result, the accepted path as a one-draft proposal (its ids, then
    the first refused try below it, if any), the target's logits (N+1, V) and p (N+1, V) or None over every node
    (row 0 the root's, row i+1 node i's)."""

    tree: Tree
    result: TreeVerdict
    chosen: Proposal
    logits: torch.Tensor
    p_all: torch.Tensor | None

    def rows(self, nodes: Sequence[int]) -> list[int]:
        """Logit rows of the root, then of `nodes`."""
        return [0] + [i + 1 for i in nodes]

    @property
    def p(self) -> torch.Tensor | None:
        """p along the accepted path (n+1, V), as a chain's."""
        return self.p_all[self.rows(self.result.path)] if self.p_all is not None else None


@dataclass(frozen=True)
class TokenLabeller:
    """How one run labels tokens: `piece` gives token text; with `instrument` off only ids and origins are kept;
    `detail_top` > 0 fills the detail panel; relax/relax_family: the relaxed rule's per-position numbers."""

    piece: Piece
    instrument: bool = True
    detail_top: int = 0
    relax: float = 0.0
    relax_family: str = "linear"

    def chain(
        self, ctx: list[int], prop: Proposal, verdict: Verdict, emitted: list[int], p: torch.Tensor | None
    ) -> list[TokenEvent]:
        """Label every drafted token and the target's token; with instrumentation, attach p, q, min(1, p/q), TV."""
        k, n = len(prop.ids), verdict.n_accepted
        kept = min(n, len(emitted))  # an EOS inside the draft cuts the accepted run short
        final = [(emitted[-1], verdict.origin)] if len(emitted) > kept else []  # none when that EOS ended the run
        rej = int(k > n and bool(final))
        origins = ["accepted"] * kept + ["rejected"] * rej + ["not_reached"] * (k - kept - rej)
        stats: list[list[float]] = []
        if self.instrument and p is not None:
            stats = self._stats(prop, p, kept, emitted[-1] if final else None)
        relax = self._relaxed(prop, p) if stats and k and self.relax > 0 else None
        events, prev = [], list(ctx)
        for i, (tok, origin) in enumerate(list(zip(prop.ids, origins)) + final):
            px = qx = ratio = tv = drift = reject = None
            if stats:
                px, qx = stats[0][i], stats[1][i] if stats[1][i] >= 0 else None
                if i < k:
                    ratio, tv = min(1.0, px / qx) if qx else 0.0, stats[2][i]
                    if relax:
                        ratio, drift, reject = relax[0][i], relax[1][i], relax[2][i]
            text = self.piece(prev, tok) if self.instrument else ""
            pos = i if i < k else kept  # the target's token stands where the first rejection (or the end) was
            events.append(TokenEvent(tok, text, origin, pos, px, qx, ratio, tv, drift, reject))  # type: ignore[arg-type]
            if origin == "accepted":
                prev.append(tok)
        return events

    def detail(self, ctx: list[int], prop: Proposal, tokens: list[TokenEvent], p: torch.Tensor) -> dict:
        """Top tokens of p and q, and the residual max(0, p - q) normalised, where the target spoke this step."""
        kept = sum(t.origin == "accepted" for t in tokens)
        k = len(prop.ids)
        p_row = p[kept]  # (V,)
        q_row = None
        if kept < k:
            guess = torch.tensor(prop.ids[kept], device=p.device)
            q_row = draft_probs(prop.q[kept] if prop.q is not None else None, guess, p.shape[-1], p.dtype).to(p.device)
        rejected = any(t.origin == "rejected" for t in tokens)
        res = residual(p_row, q_row) if rejected and q_row is not None else None
        score = p_row if q_row is None else torch.maximum(p_row, q_row)
        top = torch.topk(score, min(self.detail_top, score.shape[-1])).indices  # (N,)
        # the rejected guess and the target's own token always appear, even outside the top N
        must = [t.id for t in tokens if t.origin in ("rejected", "resampled", "bonus")]
        extra = [m for m in must if m not in top.tolist()]
        if extra:
            top = torch.cat([top, torch.tensor(extra, device=top.device)])
        prev = ctx + prop.ids[:kept]
        return {
            "position": kept,
            "token_ids": top.tolist(),
            "tokens": [self.piece(prev, int(t)) for t in top.tolist()],
            "p": p_row[top].tolist(),
            "q": q_row[top].tolist() if q_row is not None else None,
            "residual": res[top].tolist() if res is not None else None,
        }

    def _relaxed(self, prop: Proposal, p: torch.Tensor) -> list[list[float]]:
        """Relaxed rule only, per draft position: a(x) of the drafted x, the exact drift TV(the rule's output, p) and
        the exact rejection probability."""
        k = len(prop.ids)
        draft = prop.tensor.to(p.device)  # (k,)
        q = draft_probs(prop.q, draft, p.shape[-1], p.dtype)
        q = q.to(p.device, p.dtype)  # (k, V)
        lam, family = self.relax, self.relax_family
        accept = relaxed.acceptance(p[:k], q, lam, family)[torch.arange(k, device=p.device), draft]
        rows = [accept, relaxed.drift(p[:k], q, lam, family), relaxed.rejection_prob(p[:k], q, lam, family)]
        return torch.stack(rows).tolist()

    def tree(self, ctx: list[int], tc: TreeCheck, emitted: list[int]) -> tuple[list[TokenEvent], list[TreeNode]]:
        """A tree step: its tokens as for several drafts (every try in the order made, then the target's token) and
        every node of the tree with its verdict, p at its parent, q, and the rule's acceptance probability."""
        tree, res = tc.tree, tc.result
        depths = tree.depths
        kept = min(res.n_accepted, len(emitted))  # an EOS inside the accepted path cuts it short
        final = len(emitted) > kept
        accepted = set(res.path[:kept])
        tries = [t for t in res.tries if final or depths[t.node] - 1 < kept]
        tried: dict[int, object] = {}
        for t in tries:
            tried.setdefault(t.node, t)
        refused = {t.node for t in tries if not t.accepted} - accepted
        stats: list[list[float]] = []
        if self.instrument and tc.p_all is not None and len(tree):
            dev = tc.p_all.device
            ids = torch.tensor(tree.ids, device=dev)
            par = torch.tensor([pa + 1 for pa in tree.parents], device=dev)
            px = tc.p_all[par, ids]  # (N,)
            if tree.q is not None:
                q = tree.q.to(dev, px.dtype)
                qx = q[torch.arange(len(tree), device=dev), ids]
                tv = tv_distance(tc.p_all[par], q)
            else:  # q = one-hot on each guess
                qx, tv = torch.ones_like(px), 1 - px
            stats = torch.stack([px, qx, tv]).tolist()
        pieces: dict[int, str] = {}

        def text(node: int) -> str:  # a node's text after its own path
            if node not in pieces:
                prev = list(ctx) + [tree.ids[a] for a in tree.path_to(node)[:-1]]
                pieces[node] = self.piece(prev, tree.ids[node]) if self.instrument else ""
            return pieces[node]

        def numbers(node: int, attempt: object | None) -> tuple[float | None, float | None, float | None, float | None]:
            if not stats:
                return None, None, None, None
            px, qx, tv = stats[0][node], stats[1][node], stats[2][node]
            ratio = min(1.0, px / qx) if qx else 0.0
            if attempt is not None and attempt.accept_prob is not None:  # type: ignore[attr-defined]
                ratio, tv = attempt.accept_prob, attempt.tv  # type: ignore[attr-defined]
            return px, qx, ratio, tv

        events = []
        for t in tries + [NodeTry(i, True) for i in res.path[kept:]]:
            # a path node below an EOS was accepted by the rule but never emitted: not reached, as in a chain
            origin = "rejected" if not t.accepted else "accepted" if t.node in accepted else "not_reached"
            px, qx, ratio, tv = numbers(t.node, t)
            events.append(TokenEvent(tree.ids[t.node], text(t.node), origin, depths[t.node] - 1, px, qx, ratio, tv))  # type: ignore[arg-type]
        if final:
            last = res.path[kept - 1] if kept else ROOT
            px = float(tc.p_all[last + 1, emitted[-1]]) if self.instrument and tc.p_all is not None else None
            prev = list(ctx) + [tree.ids[a] for a in res.path[:kept]]
            events.append(
                TokenEvent(emitted[-1], self.piece(prev, emitted[-1]) if self.instrument else "", res.origin, kept, px)  # type: ignore[arg-type]
            )
        nodes = []
        for i in range(len(tree)):
            verdict = "accepted" if i in accepted else "rejected" if i in refused else "not_reached"
            px, qx, ratio, _ = numbers(i, tried.get(i))
            nodes.append(TreeNode(tree.ids[i], text(i), tree.parents[i], depths[i], verdict, px, qx, ratio))
        return events, nodes

    def tree_detail(self, ctx: list[int], tc: TreeCheck, tokens: list[TokenEvent]) -> dict:
        """detail() where the target spoke at the end of the accepted path; the residual shown is the one the
        correction was drawn from (after every refused sibling there)."""
        kept = sum(t.origin == "accepted" for t in tokens)
        here = [t for t in tokens if t.origin == "accepted" or t.draft_pos == kept]
        assert tc.p is not None
        detail = self.detail(ctx, tc.chosen, here, tc.p)
        if tc.result.residual is not None and detail["residual"] is not None:
            detail["residual"] = tc.result.residual[detail["token_ids"]].tolist()
        return detail

    @staticmethod
    def _stats(prop: Proposal, p: torch.Tensor, kept: int, final: int | None) -> list[list[float]]:
        """p(x), q(x) and TV(p, q) per drafted position, then p and q of the final token; one host sync."""
        k = len(prop.ids)
        ids = prop.ids + ([final] if final is not None else [])
        rows = torch.arange(len(ids), device=p.device)
        rows[k:] = kept
        toks = torch.tensor(ids, device=p.device)
        px = p[rows, toks]  # (k[+1],)
        if prop.q is not None:
            q = prop.q.to(p.device)
            has_q = rows < k  # the final token has a draft probability only where the draft proposed at its position
            qx = torch.where(
                has_q, q[rows.clamp_max(max(k - 1, 0)), toks] if k else -torch.ones_like(px), -torch.ones_like(px)
            )
            tv = tv_distance(p[:k], q)
        else:  # q = one-hot on each guess: q(x) = 1 and TV = 1 - p(x)
            qx = torch.where(torch.arange(len(ids), device=p.device) < k, torch.ones_like(px), -torch.ones_like(px))
            tv = 1 - px[:k]
        tv = torch.cat([tv, torch.zeros(len(ids) - k, device=p.device)])
        return torch.stack([px, qx, tv]).tolist()
