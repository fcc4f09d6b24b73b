"""Strategies that guess the target's next tokens, by name; build_proposer() makes one for a loaded pair.

Strategies and their knobs (GenConfig.options; a bad value is a ConfigError naming the knob; knobs of other
strategies are ignored, so one options dict can serve while switching strategy; an unknown knob is an error):

  plain      no guesses: one target pass per token (the baseline).
  draft      a smaller draft model (needs a preset with one).
             adaptive (bool, false): the draft length follows the heuristic schedule (+2 after a fully accepted
                 step, -1 after a rejection, within [1, max_gamma]); gamma is the starting length.
             max_gamma (int, default 32): the ceiling of that schedule.
             confidence (float in [0, 1), 0 = off): stop drafting after a token whose draft top probability
                 (of the processed distribution) is below this.
  ngram      prompt lookup: copy what followed the longest recent n-gram match in the context. No model call.
             ngram_max (int 1..32, default 3), ngram_min (int 1..ngram_max, default 1): the n-gram sizes tried,
                 longest first.
             ngram_sure (int 0..64, default 4): draft the full gamma only after a match that agrees with at least
                 this many tokens before the end of the context; shorter matches draft at most 2 (0 = always gamma).
  random     blind uniform guesses with a generator seeded from GenConfig.seed; q = uniform. No knobs.
  jacobi     the target's own predictions from its previous pass are the next guesses (Jacobi iteration), plus a
             pool of n-grams the target produced (a one-candidate lookahead decoding).
             pool_ngram (int 0..8, default 3): n-gram order of that pool (keys of up to N-1 tokens); 0 = plain Jacobi.
  layerskip  the target with some decoder layers skipped drafts for itself (self-speculative).
             exit_layer (int 1..L): early exit, run layers 0..exit_layer-1 only.
             skip (list of layer indices, or "auto"): skip these layers; "auto" runs search_skip_layers() on each
                 new prompt (about L * L/2 partial passes over the prompt, slow on big models).
             Neither given: skip every other layer of the second half, never the last (layer_skip.default_skip).
             Also adaptive, max_gamma, confidence as for draft.
  multidraft the draft model drafts M candidates at once; they merge into a token tree by their shared prefixes,
             the target verifies it in one pass under a tree mask, and SpecInfer's multi-step speculative sampling
             walks it (Miao et al. 2024; greedy: the candidate matching the target's argmax longest). Needs a preset
             with a draft model.
             drafts (int 1..8, default 4): M, the number of candidates (rule 'sample': independent draws from q;
                 greedy: the draft's top-M first tokens, each continued greedily).
  medusa     trained helper heads on the target's last hidden state guess the next gamma tokens (at most one per
             head) with no draft model call (Cai et al. 2024). Needs a preset with `heads` (python -m specviz
             train-heads makes them).
             confidence (float in [0, 1), default 0.3, 0 = off): keep guesses while the product of the heads' top
                 probabilities stays at least this (the heads' own estimate that every guess so far is right). With
                 oneDNN layers, where a pass over 5 tokens cost about 1.7x a one-token pass, 0.3 measured 1.34-1.41x
                 over plain on the code suite against 1.02-1.09x with 0 (our kernel's 5-token pass costs about 1.14x:
                 not re-tuned since).
  drafttree  the draft model grows a token tree (EAGLE-2's dynamic tree, Li et al. 2024): gamma levels, each level
             expanding the tree_width likeliest nodes in one draft pass; verified in one target pass under a tree
             mask. tree_nodes (int 1..64, default 16): the node budget; tree_width (int 1..8, default 4).
  medusatree Medusa's tree: head i's top tree_width tokens under every node of depth i, the tree_nodes likeliest
             paths by the product of head probabilities. Needs `heads`, as medusa.
  ngramtree  prompt lookup as a tree: every earlier match of the suffix n-gram (up to tree_width, most recent first)
             is a branch. ngram_max, ngram_min as for ngram; tree_nodes, tree_width.
"""

from __future__ import annotations

from typing import Any

from specviz.backends.surgery import decoder_layers
from specviz.core.config import MAX_GAMMA, ConfigError, GenConfig
from specviz.core.proposal import NoProposer, Outcome, Proposal, Proposer
from specviz.proposers.adaptive import AdaptiveGamma
from specviz.proposers.draft_model import DraftModelProposer
from specviz.proposers.jacobi import JacobiProposer
from specviz.proposers.layer_skip import LayerSkipProposer, kept_layers, search_skip_layers
from specviz.proposers.medusa import MedusaProposer
from specviz.proposers.multi_draft import MultiDraftProposer
from specviz.proposers.ngram import SURE as NGRAM_SURE
from specviz.proposers.ngram import NgramProposer, find_candidates
from specviz.proposers.options import opt_bool, opt_float, opt_int, opt_layers
from specviz.proposers.random_guess import RandomProposer
from specviz.proposers.trees import NODES, WIDTH, DraftTreeProposer, MedusaTreeProposer, NgramTreeProposer

MEDUSA_CONFIDENCE = 0.3
STRATEGIES = (
    "draft",
    "ngram",
    "medusa",
    "jacobi",
    "layerskip",
    "multidraft",
    "drafttree",
    "medusatree",
    "ngramtree",
    "random",
    "plain",
)
TREES = ("drafttree", "medusatree", "ngramtree", "multidraft")  # strategies whose steps verify a token tree
_TREE_KNOBS = ("tree_nodes", "tree_width")

_MODEL_KNOBS = ("adaptive", "max_gamma", "confidence")
OPTIONS: dict[str, tuple[str, ...]] = {
    "plain": (),
    "draft": _MODEL_KNOBS,
    "ngram": ("ngram_max", "ngram_min", "ngram_sure"),
    "random": (),
    "jacobi": ("pool_ngram",),
    "layerskip": ("exit_layer", "skip", *_MODEL_KNOBS),
    "multidraft": ("drafts",),
    "medusa": ("confidence",),
    "drafttree": _TREE_KNOBS,
    "medusatree": _TREE_KNOBS,
    "ngramtree": ("ngram_max", "ngram_min", *_TREE_KNOBS),
}


def build_proposer(name: str, pair: Any, cfg: GenConfig) -> Proposer:
    """A proposer for strategy `name` on a loaded ModelPair (anything with .target, .draft, .preset)."""
    if name not in OPTIONS:
        raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    opts = dict(cfg.options or {})
    known = {k for keys in OPTIONS.values() for k in keys}
    unknown = sorted(k for k in opts if k not in known)
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r}; strategy {name!r} takes: {', '.join(OPTIONS[name]) or 'no options'}"
        )
    if name == "plain":
        return NoProposer(cfg.gamma)
    if name == "ngram":
        hi = opt_int(opts, "ngram_max", 3, 1, 32, name)
        lo = opt_int(opts, "ngram_min", 1, 1, hi, name)
        return NgramProposer(cfg.gamma, hi, lo, opt_int(opts, "ngram_sure", NGRAM_SURE, 0, 64, name))
    if name == "random":
        return RandomProposer(pair.target.vocab_size, cfg.gamma, cfg.seed)
    if name == "jacobi":
        return JacobiProposer(cfg.gamma, opt_int(opts, "pool_ngram", 3, 0, 8, name))
    if name in ("drafttree", "medusatree", "ngramtree"):
        return _tree(name, pair, cfg, opts)
    if name == "multidraft":
        if pair.draft is None:
            raise ConfigError(f"preset {pair.preset!r} has no draft model: pick another strategy")
        if getattr(cfg, "relax", 0.0) > 0:
            raise ConfigError(
                "relax applies to single-draft strategies; multidraft always uses the lossless multi-draft rule: "
                "set relax to 0 or pick another strategy"
            )
        return MultiDraftProposer(pair.draft, cfg.gamma, opt_int(opts, "drafts", 4, 1, 8, name))
    confidence = opt_float(opts, "confidence", 0.0, 0.0, 1.0, name)
    if name == "medusa":
        from specviz.medusa import heads_for

        conf = opt_float(opts, "confidence", MEDUSA_CONFIDENCE, 0.0, 1.0, name)
        return MedusaProposer(pair.target, heads_for(pair), cfg.gamma, conf)
    if name == "draft":
        if pair.draft is None:
            raise ConfigError(f"preset {pair.preset!r} has no draft model: pick another strategy")
        prop: Proposer = DraftModelProposer(pair.draft, cfg.gamma, confidence)
    else:
        prop = _layer_skip(pair, cfg, opts, confidence)
    if opt_bool(opts, "adaptive", False, name):
        max_gamma = opt_int(opts, "max_gamma", MAX_GAMMA, cfg.gamma, MAX_GAMMA, name)
        prop = AdaptiveGamma(prop, max_gamma)
    elif "max_gamma" in opts:
        opt_int(opts, "max_gamma", MAX_GAMMA, cfg.gamma, MAX_GAMMA, name)
    return prop


def _tree(name: str, pair: Any, cfg: GenConfig, opts: dict[str, Any]) -> Proposer:
    nodes = opt_int(opts, "tree_nodes", NODES, 1, 64, name)
    width = opt_int(opts, "tree_width", WIDTH, 1, 8, name)
    if cfg.relax > 0:
        raise ConfigError(f"relax applies to single-draft strategies; {name} walks its tree by the lossless rule: set relax to 0")
    if name == "ngramtree":
        hi = opt_int(opts, "ngram_max", 3, 1, 32, name)
        return NgramTreeProposer(cfg.gamma, hi, opt_int(opts, "ngram_min", 1, 1, hi, name), nodes, width)
    if name == "medusatree":
        from specviz.medusa import heads_for

        return MedusaTreeProposer(pair.target, heads_for(pair), cfg.gamma, nodes, width)
    if pair.draft is None:
        raise ConfigError(f"preset {pair.preset!r} has no draft model: pick another strategy")
    return DraftTreeProposer(pair.draft, cfg.gamma, nodes, width)


def _layer_skip(pair: Any, cfg: GenConfig, opts: dict[str, Any], confidence: float) -> LayerSkipProposer:
    name = "layerskip"
    n = len(decoder_layers(pair.target.model))
    exit_layer = opt_int(opts, "exit_layer", n, 1, n, name) if "exit_layer" in opts else None
    if isinstance(opts.get("skip"), str) and opts["skip"] != "auto":
        raise ConfigError(
            f"option 'skip' of strategy 'layerskip' must be a list of layer indices or 'auto', got {opts['skip']!r}"
        )
    if opts.get("skip") == "auto":
        if exit_layer is not None:
            raise ConfigError("options 'skip': 'auto' and 'exit_layer' do not combine: the search picks the layers")
        prop = LayerSkipProposer(pair.target, None, cfg.gamma, auto=True)
    elif "skip" in opts or exit_layer is not None:
        prop = LayerSkipProposer(pair.target, kept_layers(n, exit_layer, opt_layers(opts, "skip", n, name)), cfg.gamma)
    else:
        prop = LayerSkipProposer(pair.target, None, cfg.gamma)
    prop.confidence = confidence
    return prop


__all__ = [
    "OPTIONS",
    "STRATEGIES",
    "TREES",
    "DraftTreeProposer",
    "MedusaTreeProposer",
    "NgramTreeProposer",
    "AdaptiveGamma",
    "DraftModelProposer",
    "JacobiProposer",
    "LayerSkipProposer",
    "MedusaProposer",
    "MultiDraftProposer",
    "NgramProposer",
    "NoProposer",
    "Outcome",
    "Proposal",
    "Proposer",
    "RandomProposer",
    "build_proposer",
    "find_candidates",
    "search_skip_layers",
]
