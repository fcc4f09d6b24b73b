"""Labelling a verification step's tokens: which drafted tokens were accepted, rejected or never reached, the target's
own token (a correction or a bonus), and with instrumentation p, q, min(1, p/q), TV and the detail panel's top tokens.
The engine calls this after its rule has decided; nothing here changes what is emitted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from specviz.core import relaxed
from specviz.core.events import TokenEvent
from specviz.core.proposal import Proposal
from specviz.core.sampling import draft_probs, residual, tv_distance
from specviz.core.verify import MultiVerdict, Verdict

Piece = Callable[[Sequence[int], int], str]  # (context ids, token) -> the token's text in that context


@dataclass(frozen=True)
class MultiCheck:
    """One multi-draft verification: the M candidates, the rule's result, the kept candidate as a one-draft proposal,
    the kept row's logits (k+1, V), and p over every row (M, k+1, V) or None."""

    prop: Proposal
    result: MultiVerdict
    chosen: Proposal
    logits: torch.Tensor
    p_all: torch.Tensor | None

    @property
    def p(self) -> torch.Tensor | None:
        return self.p_all[self.result.row] if self.p_all is not None else None


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

    def multi(self, ctx: list[int], mv: MultiCheck, emitted: list[int]) -> list[TokenEvent]:
        """Several drafts: every try in the order made (accepted, or rejected), the kept candidate's unchecked tail
        (not_reached), then the target's token. Under sampling a try's accept_prob and tv are the rule's own at that
        try: min(1, p'(x)/q(x)) and TV(p', q), p' being p after the rejections before it (so TV sums to the expected
        rejected tries); under greedy they are from p, for display, as with one draft."""
        res, verdict, chosen = mv.result, mv.result.verdict, mv.chosen
        n, k = verdict.n_accepted, len(chosen.ids)
        kept = min(n, len(emitted))  # an EOS inside the accepted run cuts it short: later tries are not shown
        final = len(emitted) > kept
        tries = [t for t in res.tries if final or t.position < kept]
        rows = [(t.row, t.position, t.token, "accepted" if t.accepted else "rejected") for t in tries]
        rows += [(res.row, i, chosen.ids[i], "not_reached") for i in range(n + 1 if final else kept, k)]
        if final:
            rows.append((res.row, n, emitted[-1], verdict.origin))
        stats: list[list[float]] = []
        if self.instrument and mv.p_all is not None:
            dev = mv.p_all.device
            r, i, x = (torch.tensor(c, device=dev) for c in list(zip(*rows))[:3])
            ic = i.clamp_max(k - 1)
            has_q = i < k  # a bonus token has no draft distribution
            px = mv.p_all[r, i, x]  # (E,)
            if mv.prop.candidate_q is not None:
                q = mv.prop.candidate_q.to(dev, px.dtype)
                qx = torch.where(has_q, q[r, ic, x], -torch.ones_like(px))
                tv = torch.where(has_q, tv_distance(mv.p_all[r, ic], q[r, ic]), torch.zeros_like(px))
            else:  # q = one-hot on each guess
                qx = torch.where(has_q, torch.ones_like(px), -torch.ones_like(px))
                tv = torch.where(has_q, 1 - px, torch.zeros_like(px))
            stats = torch.stack([px, qx, tv]).tolist()
        events, prev = [], list(ctx)
        for e, (_, pos, tok, origin) in enumerate(rows):
            px = qx = ratio = tv = None
            if stats:
                px, qx = stats[0][e], stats[1][e] if stats[1][e] >= 0 else None
                if origin in ("accepted", "rejected", "not_reached"):
                    ratio, tv = min(1.0, px / qx) if qx else 0.0, stats[2][e]
                if e < len(tries) and tries[e].accept_prob is not None:
                    ratio, tv = tries[e].accept_prob, tries[e].tv
            text = self.piece(prev, tok) if self.instrument else ""
            events.append(
                TokenEvent(id=tok, text=text, origin=origin, draft_pos=pos, p=px, q=qx, accept_prob=ratio, tv=tv)  # type: ignore[arg-type]
            )
            if origin == "accepted":
                prev.append(tok)
        return events

    def multi_detail(self, ctx: list[int], mv: MultiCheck, tokens: list[TokenEvent]) -> dict:
        """_detail at the position where the target spoke, with the tokens tried there; the residual shown is the one
        the correction was drawn from (after every rejection at that position)."""
        kept = sum(t.origin == "accepted" for t in tokens)
        here = [t for t in tokens if t.origin == "accepted" or t.draft_pos == kept]
        assert mv.p is not None
        detail = self.detail(ctx, mv.chosen, here, mv.p)
        if mv.result.residual is not None and detail["residual"] is not None:
            detail["residual"] = mv.result.residual[detail["token_ids"]].tolist()
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
