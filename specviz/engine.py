"""The speculative loop (propose, verify in one target pass, roll caches back, tell the proposer) and plain decoding
through the same path; it yields one StepEvent per verification step. The engine knows nothing about tokenization
beyond a `piece` callback for token text."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from specviz.config import ConfigError, GenConfig
from specviz.events import RunSummary, StepEvent, TokenEvent
from specviz.metrics import summarize
from specviz.models import LM
from specviz.proposers.base import NoProposer, Outcome, Proposal, Proposer
from specviz.sampling import Sampler, at_least_fp32, residual, tv_distance
from specviz.verify import Verdict, greedy_verify, speculative_verify

Hook = Callable[[StepEvent], None]


class SpecRun:
    """One generation. Iterate it for StepEvents; after the last one, `summary` holds the RunSummary."""

    def __init__(
        self,
        target: LM,
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
        # the target's cache holds every context token but the last, which each step feeds first
        self.target.reset()
        if len(self.prompt) > 1:
            self.target.forward(self.prompt[:-1], keep=1)
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
            logits, verdict, p = self._verify(ctx[-1], prop, sampler)
            n, k = verdict.n_accepted, len(prop.ids)
            emitted = prop.ids[:n] + [verdict.token]
            hit_eos = next((j for j, t in enumerate(emitted) if t in self.eos), None)
            if hit_eos is not None:  # nothing after an EOS is emitted, even inside an accepted draft
                emitted = emitted[: hit_eos + 1]
                stop_reason = "eos"
            self.target.crop(len(ctx) + min(n, len(emitted)))  # ctx[-1] and the kept drafts stay cached
            tokens = self._token_events(ctx, prop, verdict, emitted, p)
            detail = self._detail(ctx, prop, tokens, p) if self.detail_top and p is not None else None
            t_end = time.perf_counter()
            n_kept = sum(t.origin == "accepted" for t in tokens)
            ctx += emitted
            out += emitted
            self.proposer.update(Outcome(k, n_kept, len(ctx), logits))
            drafted_total += k
            accepted_total += n_kept
            done = hit_eos is not None or len(out) >= cfg.max_new_tokens
            ev = StepEvent(
                step=len(self.steps),
                start=len(out) - len(emitted),
                gamma=gamma,
                tokens=tokens,
                n_drafted=k,
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

    def _verify(self, last: int, prop: Proposal, sampler: Sampler) -> tuple[torch.Tensor, Verdict, torch.Tensor | None]:
        """Step 2 and 3: ONE target pass over [last] + drafts, then the rule. -> logits (k+1, V), verdict, p or None."""
        logits = at_least_fp32(self.target.forward([last] + prop.ids))  # (k+1, V)
        draft = prop.tensor.to(logits.device)  # (k,)
        need_p = not sampler.greedy or (self.instrument and (bool(prop.ids) or self.detail_top > 0))
        p = sampler.probs(logits) if need_p else None  # (k+1, V)
        if sampler.greedy:
            return logits, greedy_verify(draft, logits), p
        q = prop.q.to(logits.device) if prop.q is not None else None
        return logits, speculative_verify(draft, p, q, sampler), p

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
        events, prev = [], list(ctx)
        for i, (tok, origin) in enumerate(list(zip(prop.ids, origins)) + final):
            px = qx = ratio = tv = None
            if stats:
                px, qx = stats[0][i], stats[1][i] if stats[1][i] >= 0 else None
                if i < k:
                    ratio, tv = min(1.0, px / qx) if qx else 0.0, stats[2][i]
            text = self.piece(prev, tok) if self.instrument else ""
            pos = i if i < k else kept  # the target's token stands where the first rejection (or the end) was
            events.append(TokenEvent(tok, text, origin, pos, px, qx, ratio, tv))  # type: ignore[arg-type]
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


def run(target: LM, proposer: Proposer | None, prompt_ids: Sequence[int], cfg: GenConfig, **kw) -> SpecRun:
    """Build a run; iterate it for StepEvents (or call .run() for the summary)."""
    return SpecRun(target, proposer, prompt_ids, cfg, **kw)
