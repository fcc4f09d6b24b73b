"""Jacobi proposer with an n-gram pool (a one-candidate cousin of lookahead decoding): no draft model; the target's
own predictions from its previous verification pass are the next guesses.

What is built, honestly:
- Jacobi iteration (Santilli et al. 2023). Each verification pass feeds [ctx[-1], g_1..g_k] and the target predicts
  a_0..a_k in parallel (a_i follows g_i). After n guesses are accepted and a_n is emitted, the predictions a_{n+1}..
  a_k are the new guesses for the positions after a_n: the next Jacobi iterate of those positions (they were
  computed with the wrong g_{n+1} before them, as in Jacobi decoding; one more pass refines them). Positions with no
  prediction yet (the start, or after a fully accepted draft) are padded by repeating the previous token.
- An n-gram pool (option pool_ngram = N, after lookahead decoding, Fu et al. 2024): every pass adds "after these
  up to N-1 tokens, as fed, the target said a_i", so the pool only holds n-grams the target itself produced. The
  newest pass wins; within a pass the earliest position wins (fewer wrong guesses before it). A guess is taken from
  the pool when the last tokens before it (longest key first) are in it, else from the Jacobi iterate, else padding.
  (Keeping entries from the verified part of a pass over newer ones measured worse on tiny models: a stale entry
  misses how the longer context moved on.)
- Unlike lookahead decoding, there is no 2-D lookahead window and only ONE candidate is verified per pass (the
  engine verifies a single sequence); the pool is built from the verification passes themselves, so there is no
  extra compute. Guesses are argmax tokens and q is None (one-hot), so both greedy and sampling stay lossless.
- It needs the target's logits in Outcome.target_logits (the engine passes them to update()). Without them it
  learns nothing and only repeats the last token.
"""

from __future__ import annotations

from collections.abc import Sequence

from specviz.core.proposal import Outcome, Proposal, Proposer
from specviz.core.sampling import Sampler


class JacobiProposer(Proposer):
    name = "jacobi"

    def __init__(self, gamma: int = 4, pool_ngram: int = 3) -> None:
        super().__init__(gamma)
        self.pool_ngram = pool_ngram  # N: keys of up to N-1 tokens; 0 or 1 = no pool (plain Jacobi)
        self.reset(())

    def reset(self, prompt_ids: Sequence[int]) -> None:
        self.guess: list[int] = []  # Jacobi iterate: target predictions for positions guess_at, guess_at + 1, ...
        self.guess_at = 0
        self.pool: dict[tuple[int, ...], int] = {}  # last tokens as fed -> the target's next token
        self.fed: list[int] = []  # the last pass's input: [ctx[-1]] + proposal
        self.fed_at = 0  # position of fed[0] in the context
        self.tail: list[int] = []  # the N-2 context tokens before fed[0], to key the pool

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        k = min(self.next_gamma(), limit)
        size = len(ctx)
        jac = self.guess[size - self.guess_at :] if size >= self.guess_at else []
        seq = list(ctx[-max(self.pool_ngram - 1, 1) :])  # enough context to key the pool
        ids: list[int] = []
        for j in range(max(k, 0)):
            tok = self._lookup(seq)
            if tok is None:
                tok = jac[j] if j < len(jac) else seq[-1]
            ids.append(tok)
            seq.append(tok)
        self.fed, self.fed_at = [ctx[-1]] + ids, size - 1
        self.tail = list(ctx[max(0, size - 1 - max(self.pool_ngram - 2, 0)) : size - 1])
        return Proposal(ids)

    def update(self, outcome: Outcome) -> None:
        if outcome.target_logits is None:
            self.guess = []
            return
        pred = outcome.target_logits.argmax(-1).tolist()  # (k+1,): pred[i] follows fed[i]
        self._learn(self.tail + self.fed, len(self.tail), pred)
        n = outcome.n_accepted
        self.guess, self.guess_at = pred[n + 1 :], self.fed_at + n + 2  # pred[n] was emitted at fed_at + n + 1

    def _learn(self, seq: list[int], first: int, pred: list[int]) -> None:
        """pool[seq[i-m+1 : i+1]] = pred[i - first] for every fed position i and key length m < pool_ngram; written
        from the last position back, so the earliest position of the pass wins a shared key."""
        for i in range(len(seq) - 1, first - 1, -1):
            for m in range(1, min(self.pool_ngram, i + 2)):
                self.pool[tuple(seq[i - m + 1 : i + 1])] = pred[i - first]

    def _lookup(self, seq: list[int]) -> int | None:
        for m in range(min(self.pool_ngram - 1, len(seq)), 0, -1):
            tok = self.pool.get(tuple(seq[-m:]))
            if tok is not None:
                return tok
        return None
