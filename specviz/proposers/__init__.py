"""Strategies that guess the target's next tokens, by name; build_proposer() makes one for a loaded pair."""

from __future__ import annotations

from typing import Any

from specviz.config import ConfigError, GenConfig
from specviz.proposers.base import NoProposer, Outcome, Proposal, Proposer
from specviz.proposers.draft_model import DraftModelProposer

STRATEGIES = ("draft", "plain")


def build_proposer(name: str, pair: Any, cfg: GenConfig) -> Proposer:
    """A proposer for strategy `name` on a loaded ModelPair."""
    if name == "plain":
        return NoProposer(cfg.gamma)
    if name == "draft":
        if pair.draft is None:
            raise ConfigError(f"preset {pair.preset!r} has no draft model: pick another strategy")
        return DraftModelProposer(pair.draft, cfg.gamma)
    raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")


__all__ = ["STRATEGIES", "DraftModelProposer", "NoProposer", "Outcome", "Proposal", "Proposer", "build_proposer"]
