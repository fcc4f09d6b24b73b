"""The speculative loop, plain decoding through the same path: each step 1 proposes, 2 scores the context's last token
and the proposal in ONE target pass, 3 lets the rule decide, 4 rolls the cache back to what was kept, 5 tells the
proposer, 6 yields a StepEvent. The engine knows nothing about tokenization beyond a `piece` callback for token text."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from specviz.core.config import ConfigError, GenConfig
from specviz.core.events import RunSummary, StepEvent, TokenEvent, TreeNode
from specviz.core.metrics import summarize
from specviz.core.model import LanguageModel
from specviz.core.proposal import NoProposer, Outcome, Proposal, Proposer
from specviz.core.sampling import Sampler, at_least_fp32
from specviz.core.token_events import TokenLabeller, TreeCheck
from specviz.core.tree import Tree, tree_greedy_verify, tree_sample_verify
from specviz.core.verify import Verdict, greedy_verify, relaxed_verify

Hook = Callable[[StepEvent], None]


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
        self.hooks = list(hooks)
        self.instrument = instrument
        self.should_stop = should_stop or (lambda: False)
        self.labeller = TokenLabeller(
            piece or (lambda prev, tok: str(tok)),
            instrument,
            detail_top if instrument else 0,
            self.cfg.relax,
            self.cfg.relax_family,
        )
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
            # 1. propose: never past the token budget (n accepted + the target's token must fit)
            t_draft = time.perf_counter()
            gamma = self.proposer.next_gamma()
            prop = self.proposer.propose(ctx, cfg.max_new_tokens - len(out) - 1, sampler)
            # 2 and 3. score [last] + drafts in ONE target pass, then the rule decides what survives
            t_verify = time.perf_counter()
            tree, n_drafted = None, len(prop.ids)
            if prop.tree is not None:  # a token tree: every node in one pass under a tree mask, then the tree walk
                tree = self._verify_tree(ctx[-1], prop.tree, sampler, first)
                n_drafted = len(prop.tree)  # every node of the tree
                logits, p, prop = tree.logits[tree.rows(tree.result.path)], tree.p, tree.chosen
                verdict = Verdict(tree.result.n_accepted, tree.result.token, tree.result.origin)
            else:
                logits, verdict, p = self._verify(ctx[-1], prop, sampler, first)
            n, k = verdict.n_accepted, len(prop.ids)
            emitted = prop.ids[:n] + [verdict.token]
            hit_eos = next((j for j, t in enumerate(emitted) if t in self.eos), None)
            if hit_eos is not None:  # nothing after an EOS is emitted, even inside an accepted draft
                emitted = emitted[: hit_eos + 1]
                stop_reason = "eos"
            # 4. roll back: ctx[-1] and the kept drafts stay cached (a tree's accepted path, moved into place)
            hidden = self.target.last_hidden if self.proposer.wants_hidden else None
            if tree is not None:
                path = list(tree.result.path[: min(n, len(emitted))])
                if first is None:  # the pass fed [ctx[-1]] + nodes after len(ctx) - 1 cached tokens
                    self.target.keep_path(len(ctx) - 1, tree.rows(path))
                    hidden = hidden[tree.rows(tree.result.path)] if hidden is not None else None
                else:  # step 0: the pass fed the nodes only
                    self.target.keep_path(len(ctx), path)
                    hidden = hidden[list(tree.result.path)] if hidden is not None else None
            else:
                self.target.crop(len(ctx) + min(n, len(emitted)))
            tokens, detail, nodes = self._label(ctx, prop, verdict, tree, emitted, p)
            t_end = time.perf_counter()
            n_kept = sum(t.origin == "accepted" for t in tokens)
            ctx += emitted
            out += emitted
            # 5. tell the proposer how its guesses fared (helper heads also get the pass's hidden states)
            if hidden is not None and first is not None:  # step 0: the prompt pass's last row, then the drafts'
                fed = bool(prop.ids) if tree is None else len(tree.tree) > 0  # else no pass: last_hidden is stale
                hidden = torch.cat([first_hidden, hidden]) if fed else first_hidden
            first = None
            self.proposer.update(Outcome(k, n_kept, len(ctx), logits, hidden))
            # 6. the step's event, to the hooks and the caller
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
                tree=nodes,
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

    def _label(
        self,
        ctx: list[int],
        prop: Proposal,
        verdict: Verdict,
        tree: TreeCheck | None,
        emitted: list[int],
        p: torch.Tensor | None,
    ) -> tuple[list[TokenEvent], dict | None, list[TreeNode] | None]:
        """The step's token events, the detail panel when asked for, and a tree step's nodes (token_events.py does
        the labelling)."""
        want_detail = bool(self.labeller.detail_top) and p is not None
        if tree is not None:
            tokens, nodes = self.labeller.tree(ctx, tree, emitted)
            return tokens, self.labeller.tree_detail(ctx, tree, tokens) if want_detail else None, nodes
        tokens = self.labeller.chain(ctx, prop, verdict, emitted, p)
        return tokens, self.labeller.detail(ctx, prop, tokens, p) if want_detail and p is not None else None, None

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
        need_p = not sampler.greedy or (self.instrument and (bool(prop.ids) or self.labeller.detail_top > 0))
        p = sampler.probs(logits) if need_p else None  # (k+1, V)
        if sampler.greedy:
            return logits, greedy_verify(draft, logits), p
        q = prop.q.to(logits.device) if prop.q is not None else None
        # relax = 0 (the default) is speculative_verify itself: the lossless rule, same random draws
        return logits, relaxed_verify(draft, p, q, sampler, self.cfg.relax, self.cfg.relax_family), p

    def _verify_tree(self, last: int, tree: Tree, sampler: Sampler, given: torch.Tensor | None = None) -> TreeCheck:
        """Steps 2 and 3 for a token tree: ONE target pass over [last] + every node under a tree mask (each node sees
        the context and its ancestors), then the tree walk. `given` as for _verify (step 0: the nodes only)."""
        if given is None:
            logits = self.target.forward_tree([last] + tree.ids, [-1] + [par + 1 for par in tree.parents])
        else:
            logits = torch.cat([given, self.target.forward_tree(tree.ids, tree.parents)]) if len(tree) else given
        logits = at_least_fp32(logits)  # (N+1, V)
        p = sampler.probs(logits) if not sampler.greedy or self.instrument else None  # (N+1, V)
        res = tree_greedy_verify(tree, logits) if sampler.greedy else tree_sample_verify(tree, p, sampler)
        # the accepted path as one draft, with the first refused try below it (the detail panel's rejected guess)
        end = res.path[-1] if res.path else -1
        below = next((t.node for t in res.tries if not t.accepted and tree.parents[t.node] == end), None)
        chain = list(res.path) + ([below] if below is not None else [])
        q = tree.q[chain] if tree.q is not None and chain else None
        return TreeCheck(tree, res, Proposal([tree.ids[i] for i in chain], q), logits, p)


def run(target: LanguageModel, proposer: Proposer | None, prompt_ids: Sequence[int], cfg: GenConfig, **kw) -> SpecRun:
    """Build a run; iterate it for StepEvents (or call .run() for the summary)."""
    return SpecRun(target, proposer, prompt_ids, cfg, **kw)
