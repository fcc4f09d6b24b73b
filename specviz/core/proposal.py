"""The proposer interface: propose(ctx, limit, sampler) -> Proposal(ids, q or None), then update(outcome). Every strategy is one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from specviz.core.sampling import Sampler
from specviz.core.tree import Tree


@dataclass
class Proposal:
    """Up to gamma guessed tokens. q: (k, V) draft distributions, processed like p; None means q = one-hot on each guess.
    A tree proposal carries `tree` instead (ids and q unused): a token tree of guesses (several drafts merged by their
    shared prefixes, or a tree grown on purpose), which the engine verifies in one pass under a tree mask."""

    ids: list[int]
    q: torch.Tensor | None = None
    tree: Tree | None = None

    @property
    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.ids, dtype=torch.long)


@dataclass(frozen=True)
class Outcome:
    """What the verifier decided: n_accepted of n_drafted survived; the context now has ctx_len tokens.
    target_logits: the verification pass's raw target logits, (n_drafted + 1, V), row i predicting the token after
    [ctx[-1]] + draft[:i]; proposers that learn from the target (Jacobi) read them, others ignore them. None when the
    engine does not pass them. Never copied to the host unless a proposer asks.
    target_hidden: the same pass's final hidden states (n_drafted + 1, H), passed to proposers with wants_hidden."""

    n_drafted: int
    n_accepted: int
    ctx_len: int
    target_logits: torch.Tensor | None = None
    target_hidden: torch.Tensor | None = None


class Proposer:
    """A strategy that guesses the target's next tokens. Subclasses set `name` and override propose()."""

    name = "base"
    uses_model = False  # True when drafting calls a model (then the adaptive gamma schedule applies)
    wants_hidden = False  # True when update() needs Outcome.target_hidden (trained heads on the target's state)

    def __init__(self, gamma: int = 4) -> None:
        self.gamma = gamma

    def reset(self, prompt_ids: Sequence[int]) -> None:
        """Called once before a run."""

    def next_gamma(self) -> int:
        """How many tokens to draft next step (adaptive schedules change it in update())."""
        return self.gamma

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        """Guess at most min(next_gamma(), limit) tokens following ctx."""
        raise NotImplementedError

    def update(self, outcome: Outcome) -> None:
        """Told after each verification (roll back caches, adapt gamma)."""


class NoProposer(Proposer):
    """Proposes nothing: the engine then decodes plainly, one target pass per token (the honest baseline)."""

    name = "plain"

    def propose(self, ctx: Sequence[int], limit: int, sampler: Sampler) -> Proposal:
        return Proposal([])


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i
