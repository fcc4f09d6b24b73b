"""Self-speculative layer-skip proposer: the draft is the target itself running only some of its decoder layers (then
its own final norm and LM head), with its own KV cache; no second model and no extra weights.

Two ways to choose the layers, combinable: early exit (keep layers 0..exit_layer-1; LayerSkip, Elhoushi et al. 2024,
trains models for this, an untrained model exits poorly) and skipping chosen middle layers (Draft & Verify, Zhang et
al. 2024, which skips attention and MLP sub-layers separately; we skip whole layers). search_skip_layers() picks a
skip set greedily on a calibration text. The draft shares every weight with the target: layer_view() builds a
shallow copy of the model whose layer list holds re-indexed shallow copies of the kept layers (so the draft's
DynamicCache has one slot per kept layer) and whose config says how many there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from specviz.backends.surgery import decoder_layers, layer_view, relative_cost
from specviz.core.config import ConfigError
from specviz.core.model import LanguageModel
from specviz.core.sampling import tv_distance
from specviz.core.theory import expected_speedup
from specviz.proposers.draft_model import DraftModelProposer


def kept_layers(n_layers: int, exit_layer: int | None = None, skip: Sequence[int] = ()) -> list[int]:
    """Indices of the layers the draft runs: those below exit_layer (all when None) that are not in skip."""
    top = n_layers if exit_layer is None else exit_layer
    kept = [i for i in range(top) if i not in set(skip)]
    if not kept:
        raise ConfigError(f"layer skip keeps no layer (exit_layer={exit_layer}, skip={list(skip)}): keep at least one")
    return kept


def default_skip(n_layers: int) -> list[int]:
    """Every other layer of the second half, never the last (about a quarter of the depth); a rule of thumb, since
    deeper layers tend to be the most redundant (Gromov et al. 2024). Two or three layers: skip the one before last."""
    return list(range(n_layers // 2, n_layers - 1, 2)) or ([n_layers - 2] if n_layers >= 2 else [])


@dataclass
class SkipSearch:
    """The chosen skip set and its measured alpha, cost and estimated speedup; history: every step of the search."""

    skip: list[int]
    alpha: float
    cost: float
    speedup: float
    history: list[dict] = field(default_factory=list)


@torch.inference_mode()
def search_skip_layers(
    model: torch.nn.Module,
    calib_ids: Sequence[int],
    gamma: int = 4,
    rule: str = "greedy",
    max_skip: int | None = None,
    min_skip: int = 1,
    candidates: Sequence[int] | None = None,
) -> SkipSearch:
    """Greedily grow a skip set on a calibration text, maximising the estimated speedup. Each round tries every
    remaining candidate layer and adds the one with the best score; after max_skip rounds (default half the depth)
    the best set seen with at least min_skip layers wins. alpha is measured teacher-forced on calib_ids: the rate
    at which the draft's argmax equals the target's (rule 'greedy'), or the mean 1 - TV(p, q) (rule 'sample');
    cost is relative_cost(). About n_layers * max_skip partial forward passes over calib_ids."""
    n = len(decoder_layers(model))
    max_skip = min(n - 1, n // 2 if max_skip is None else max_skip)
    cands = list(range(n)) if candidates is None else sorted(set(candidates))
    x = torch.tensor([list(calib_ids)], device=next(model.parameters()).device)  # (1, T)
    target = model(input_ids=x, use_cache=False).logits[0].float()  # (T, V)
    p, best_p = torch.softmax(target, -1), target.argmax(-1)

    def measure(skip: list[int]) -> dict:
        kept = kept_layers(n, None, skip)
        logits = layer_view(model, kept)(input_ids=x, use_cache=False).logits[0].float()  # (T, V)
        if rule == "greedy":
            alpha = (logits.argmax(-1) == best_p).float().mean().item()
        else:
            alpha = (1 - tv_distance(p, torch.softmax(logits, -1))).mean().item()
        cost = relative_cost(model, kept)
        return {"skip": sorted(skip), "alpha": alpha, "cost": cost, "speedup": expected_speedup(alpha, gamma, cost)}

    skip: list[int] = []
    history = [measure(skip)]
    for _ in range(max_skip):
        trials = [measure(skip + [i]) for i in cands if i not in skip]
        if not trials:
            break
        step = max(trials, key=lambda t: t["speedup"])
        skip = step["skip"]
        history.append(step)
    pool = [h for h in history if len(h["skip"]) >= min_skip] or history
    best = max(pool, key=lambda h: h["speedup"])
    return SkipSearch(best["skip"], best["alpha"], best["cost"], best["speedup"], history)


class LayerSkipProposer(DraftModelProposer):
    """A DraftModelProposer whose draft is layer_view(target, kept). auto=True: search_skip_layers() on each new
    prompt at reset() (the result is kept per prompt), instead of a fixed set."""

    name = "layerskip"

    def __init__(self, target: LanguageModel, kept: Sequence[int] | None = None, gamma: int = 4, auto: bool = False) -> None:
        self.model = target.model
        self.n_layers = len(decoder_layers(self.model))
        self.kept = list(kept) if kept is not None else kept_layers(self.n_layers, None, default_skip(self.n_layers))
        self.auto, self.search_gamma = auto, gamma
        self.search: SkipSearch | None = None
        self._searched: dict[tuple[int, ...], SkipSearch] = {}
        self.target = target
        super().__init__(target.with_layers(self.kept), gamma)

    def reset(self, prompt_ids: Sequence[int]) -> None:
        if self.auto and len(prompt_ids) > 1:
            key = tuple(prompt_ids)
            if key not in self._searched:
                self._searched[key] = search_skip_layers(self.model, prompt_ids, gamma=self.search_gamma)
            self.search = self._searched[key]
            kept = kept_layers(self.n_layers, None, self.search.skip)
            if kept != self.kept:
                self.kept = kept
                self.lm = self.target.with_layers(kept)
        super().reset(prompt_ids)
