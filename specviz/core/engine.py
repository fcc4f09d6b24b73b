"""The speculative loop (propose, verify in one target pass, roll caches back, tell the proposer) and plain decoding
through the same path; it yields one StepEvent per verification step. The engine knows nothing about tokenization
beyond a `piece` callback for token text."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from specviz.core import relaxed
from specviz.core.config import ConfigError, GenConfig
from specviz.core.events import RunSummary, StepEvent, TokenEvent
from specviz.core.metrics import summarize
from specviz.core.model import LanguageModel
from specviz.core.proposal import NoProposer, Outcome, Proposal, Proposer
from specviz.core.sampling import Sampler, at_least_fp32, residual, tv_distance
from specviz.core.verify import (
    MultiVerdict,
    Verdict,
    greedy_verify,
    multi_draft_verify,
    multi_greedy_verify,
    relaxed_verify,
)

Hook = Callable[[StepEvent], None]


@dataclass(frozen=True)
class _Multi:
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


class SpecRun:
    """One generation. Iterate it for StepEvents; after the last one, `summary` holds the RunSummary."""

    def __init__(
        self,
        target: LanguageModel,
        proposer: Proposer | None,
        prompt_ids: Sequence[int],
        cfg: GenConfig,
        eos_ids: Iterable[int] = (),
        piece: Callable[[Sequence[int], int], str] | None = None,
        hooks: Sequence[Hook] = (),
        instrument: bool = True,
        should_stop: Callable[[], bool] | None = None,
        detail_top: int = 0,
    ) -> None:
        self.cfg = cfg.validated()
        if not prompt_ids:
            raise ConfigError("the prompt is empty: type something for the model to continue")
        need = len(prompt_ids) + cfg.max_new_tokens + cfg.gamma
        if need > target.max_positions:
            raise ConfigError(
                f"the prompt is {len(prompt_ids)} tokens; with max_new_tokens={cfg.max_new_tokens} it exceeds the "
                f"model's context of {target.max_positions} tokens: shorten the prompt or ask for fewer tokens"
            )
        self.target = target
        self.proposer = proposer or NoProposer()
        self.prompt = list(prompt_ids)
        self.eos = frozenset(eos_ids)
        self.piece = piece or (lambda prev, tok: str(tok))
        self.hooks = list(hooks)
        self.instrument = instrument
        self.should_stop = should_stop or (lambda: False)
        self.detail_top = detail_top if instrument else 0
        self.steps: list[StepEvent] = []
        self.summary: RunSummary | None = None

    def __iter__(self) -> Iterator[StepEvent]:
        cfg = self.cfg
        sampler = Sampler(cfg.rule, cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed, self.target.device)
        t0 = time.perf_counter()
        # the target's cache holds every context token but the last, which each step feeds first with the drafts;
        # except in step 0: the prompt's own pass already holds the last prompt token and its logits (the row that
        # predicts the first new token), so step 0 feeds only drafts and plain decoding makes no extra pass (as HF)
        self.target.reset()
        self.target.reserve(len(self.prompt) + cfg.max_new_tokens)
        self.target.keep_hidden, self.target.last_hidden = self.proposer.wants_hidden, None
        first: torch.Tensor | None = self.target.forward(self.prompt, keep=1)  # (1, V)
        first_hidden = self.target.last_hidden[-1:] if self.target.last_hidden is not None else None  # (1, H)
        self.proposer.reset(self.prompt)
        prefill_ms = (time.perf_counter() - t0) * 1e3
        ctx, out = list(self.prompt), []
        drafted_total = accepted_total = 0
        stop_reason = "max_new_tokens"
        while len(out) < cfg.max_new_tokens:
            if self.should_stop():
                stop_reason = "stopped"
                break
            t_draft = time.perf_counter()
            gamma = self.proposer.next_gamma()
            # never draft past the token budget: n accepted + 1 target token must fit
            prop = self.proposer.propose(ctx, cfg.max_new_tokens - len(out) - 1, sampler)
            t_verify = time.perf_counter()
            multi, n_drafted = None, len(prop.ids)
            if prop.candidates is not None:  # several drafts: verify them all, then go on with the one kept
                multi = self._verify_multi(ctx[-1], prop, sampler, first)
                n_drafted = sum(len(c) for c in prop.candidates)  # every drafted token of every candidate
                logits, verdict, p, prop = multi.logits, multi.result.verdict, multi.p, multi.chosen
            else:
                logits, verdict, p = self._verify(ctx[-1], prop, sampler, first)
            n, k = verdict.n_accepted, len(prop.ids)
            emitted = prop.ids[:n] + [verdict.token]
            hit_eos = next((j for j, t in enumerate(emitted) if t in self.eos), None)
            if hit_eos is not None:  # nothing after an EOS is emitted, even inside an accepted draft
                emitted = emitted[: hit_eos + 1]
                stop_reason = "eos"
            self.target.crop(len(ctx) + min(n, len(emitted)))  # ctx[-1] and the kept drafts stay cached
            if multi is not None:
                tokens = self._multi_token_events(ctx, multi, emitted)
                detail = self._multi_detail(ctx, multi, tokens) if self.detail_top and p is not None else None
            else:
                tokens = self._token_events(ctx, prop, verdict, emitted, p)
                detail = self._detail(ctx, prop, tokens, p) if self.detail_top and p is not None else None
            t_end = time.perf_counter()
            n_kept = sum(t.origin == "accepted" for t in tokens)
            ctx += emitted
            out += emitted
            hidden = self.target.last_hidden if self.proposer.wants_hidden and multi is None else None
            if hidden is not None and first is not None:  # step 0: the prompt pass's last row, then the drafts'
                hidden = torch.cat([first_hidden, hidden]) if prop.ids else first_hidden
            first = None
            self.proposer.update(Outcome(k, n_kept, len(ctx), logits, hidden))
            drafted_total += n_drafted
            accepted_total += n_kept
            done = hit_eos is not None or len(out) >= cfg.max_new_tokens
            ev = StepEvent(
                step=len(self.steps),
                start=len(out) - len(emitted),
                gamma=gamma,
                tokens=tokens,
                n_drafted=n_drafted,
                n_accepted=n_kept,
                draft_ms=(t_verify - t_draft) * 1e3,
                verify_ms=(t_end - t_verify) * 1e3,
                elapsed_ms=(t_end - t0) * 1e3,
                total_tokens=len(out),
                total_drafted=drafted_total,
                total_accepted=accepted_total,
                finished=done,
                stop_reason=stop_reason if done else None,
                detail=detail,
            )
            self.steps.append(ev)
            for hook in self.hooks:
                hook(ev)
            yield ev
            if done:
                break
        wall_s = time.perf_counter() - t0
        self.summary = summarize(
            self.steps,
            strategy=self.proposer.name,
            rule=cfg.rule,
            gamma=cfg.gamma,
            wall_s=wall_s,
            prefill_ms=prefill_ms,
            stop_reason=stop_reason,
            output_ids=out,
        )

    def run(self) -> RunSummary:
        """Consume the whole run; return its summary."""
        for _ in self:
            pass
        assert self.summary is not None
        return self.summary

    def _verify(
        self, last: int, prop: Proposal, sampler: Sampler, given: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Verdict, torch.Tensor | None]:
        """Step 2 and 3: ONE target pass over [last] + drafts, then the rule. `given`: in step 0, the logits row
        of `last` from the prompt's pass; the pass then feeds the drafts only (none: no pass).
        -> logits (k+1, V), verdict, p or None."""
        if given is None:
            logits = self.target.forward([last] + prop.ids)
        else:
            logits = torch.cat([given, self.target.forward(prop.ids)]) if prop.ids else given
        logits = at_least_fp32(logits)  # (k+1, V)
        draft = prop.tensor.to(logits.device)  # (k,)
        need_p = not sampler.greedy or (self.instrument and (bool(prop.ids) or self.detail_top > 0))
        p = sampler.probs(logits) if need_p else None  # (k+1, V)
        if sampler.greedy:
            return logits, greedy_verify(draft, logits), p
        q = prop.q.to(logits.device) if prop.q is not None else None
        # relax = 0 (the default) is speculative_verify itself: the lossless rule, same random draws
        return logits, relaxed_verify(draft, p, q, sampler, self.cfg.relax, self.cfg.relax_family), p

    def _token_events(
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
        relax = self._relaxed(prop, p) if stats and k and self.cfg.relax > 0 else None
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

    def _detail(self, ctx: list[int], prop: Proposal, tokens: list[TokenEvent], p: torch.Tensor) -> dict:
        """Top tokens of p and q, and the residual max(0, p - q) normalised, where the target spoke this step."""
        kept = sum(t.origin == "accepted" for t in tokens)
        k = len(prop.ids)
        p_row = p[kept]  # (V,)
        q_row = None
        if kept < k:
            q_row = (
                prop.q[kept].to(p.device)
                if prop.q is not None
                else torch.nn.functional.one_hot(torch.tensor(prop.ids[kept], device=p.device), p.shape[-1]).to(p.dtype)
            )
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
        q = prop.q if prop.q is not None else torch.nn.functional.one_hot(draft, p.shape[-1])
        q = q.to(p.device, p.dtype)  # (k, V)
        lam, family = self.cfg.relax, self.cfg.relax_family
        accept = relaxed.acceptance(p[:k], q, lam, family)[torch.arange(k, device=p.device), draft]
        rows = [accept, relaxed.drift(p[:k], q, lam, family), relaxed.rejection_prob(p[:k], q, lam, family)]
        return torch.stack(rows).tolist()

    def _verify_multi(self, last: int, prop: Proposal, sampler: Sampler, given: torch.Tensor | None = None) -> _Multi:
        """Several drafts: ONE batched target pass over M rows of [last] + candidate, the multi-draft rule, then only
        the kept row's cache stays (the caller crops it as for one draft). `given` as for _verify."""
        cands = prop.candidates or []
        if given is None:
            logits = self.target.forward_rows([[last] + c for c in cands])
        else:
            out = self.target.forward_rows(cands)  # (M, k, V)
            logits = torch.cat([given.expand(len(cands), 1, -1).to(out.dtype), out], dim=1)
        logits = at_least_fp32(logits)  # (M, k+1, V)
        p = sampler.probs(logits) if not sampler.greedy or self.instrument else None  # (M, k+1, V)
        q = prop.candidate_q.to(logits.device, logits.dtype) if prop.candidate_q is not None else None  # (M, k, V)
        ids = torch.tensor(cands, device=logits.device)  # (M, k)
        res = multi_greedy_verify(ids, logits) if sampler.greedy else multi_draft_verify(ids, p, q, sampler)
        self.target.select_row(res.row)
        chosen = Proposal(list(cands[res.row]), q[res.row] if q is not None else None)
        return _Multi(prop, res, chosen, logits[res.row], p)

    def _multi_token_events(self, ctx: list[int], mv: _Multi, emitted: list[int]) -> list[TokenEvent]:
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

    def _multi_detail(self, ctx: list[int], mv: _Multi, tokens: list[TokenEvent]) -> dict:
        """_detail at the position where the target spoke, with the tokens tried there; the residual shown is the one
        the correction was drawn from (after every rejection at that position)."""
        kept = sum(t.origin == "accepted" for t in tokens)
        here = [t for t in tokens if t.origin == "accepted" or t.draft_pos == kept]
        assert mv.p is not None
        detail = self._detail(ctx, mv.chosen, here, mv.p)
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


def run(target: LanguageModel, proposer: Proposer | None, prompt_ids: Sequence[int], cfg: GenConfig, **kw) -> SpecRun:
    """Build a run; iterate it for StepEvents (or call .run() for the summary)."""
    return SpecRun(target, proposer, prompt_ids, cfg, **kw)
