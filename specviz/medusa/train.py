"""Training the helper heads on self-distilled data: cross-entropy of each head against the token the target produced
that many places later, the target's LM head frozen and shared, over a draft vocabulary of the tokens in the data."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from specviz.core.config import ConfigError
from specviz.medusa.data import Distilled
from specviz.medusa.heads import MedusaHeads

Log = Callable[[str], None]


@dataclass
class TrainReport:
    """What training did and how well the heads guess on held-out answers (never trained on)."""

    train_rows: int
    heldout_rows: int
    draft_vocab: int
    epochs: int
    loss: list[float] = field(default_factory=list)  # mean training loss per epoch (sum over heads)
    heldout_loss: list[float] = field(default_factory=list)
    heldout_top1: list[float] = field(default_factory=list)  # per head, after the last epoch
    heldout_chain: list[float] = field(default_factory=list)  # P(heads 1..i all right), i = 1..K
    tokens_per_step: float = 1.0  # 1 + sum of heldout_chain: what verifying all K guesses would emit per pass
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def split(data: Distilled, every: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Row masks (train, held-out): every `every`-th answer is held out whole (the last one when there are fewer)."""
    answers = len(data.starts) - 1
    if answers < 2:
        raise ConfigError("helper heads need at least 2 self-distilled answers: one to train on, one held out")
    which = data.answer_of()
    held = (which % every) == every - 1
    if not held.any():
        held = which == answers - 1
    return ~held, held


def train_heads(
    data: Distilled,
    lm_weight: torch.Tensor,
    count: int = 4,
    epochs: int = 8,
    lr: float = 1e-3,
    batch: int = 256,
    seed: int = 0,
    heldout_every: int = 8,
    weight_decay: float = 0.0,
    meta: dict[str, Any] | None = None,
    log: Log = print,
) -> tuple[MedusaHeads, TrainReport]:
    """Heads trained with AdamW (cosine learning rate) on data; lm_weight (V, H) is the target's LM head."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    labels = data.labels(count)  # (N, K), -100 past an answer's end
    vocab_ids = torch.unique(data.tokens)  # (V',) sorted
    index = torch.full((lm_weight.shape[0],), -100, dtype=torch.long)  # token id -> draft-vocabulary position
    index[vocab_ids] = torch.arange(vocab_ids.numel())
    target = torch.where(labels >= 0, index[labels.clamp_min(0)], labels)  # labels as draft-vocabulary positions
    rows = lm_weight[vocab_ids.to(lm_weight.device)].detach().float().cpu()  # (V', H), frozen; training runs on CPU
    train, held = split(data, heldout_every)
    heads = MedusaHeads(data.hidden.shape[1], count, vocab_ids, meta)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    x_tr, y_tr = data.hidden[train], target[train]
    steps = epochs * max(1, -(-len(x_tr) // batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    report = TrainReport(int(train.sum()), int(held.sum()), int(vocab_ids.numel()), epochs)
    for epoch in range(epochs):
        perm = torch.randperm(len(x_tr))
        total, n = 0.0, 0
        for b0 in range(0, len(perm), batch):
            idx = perm[b0 : b0 + batch]
            loss = _loss(heads, x_tr[idx], y_tr[idx], rows)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        report.loss.append(round(total / max(n, 1), 4))
        report.heldout_loss.append(round(_eval(heads, data.hidden[held], target[held], rows)[0], 4))
        log(
            f"epoch {epoch + 1}/{epochs}: train loss {report.loss[-1]:.3f}, held-out loss {report.heldout_loss[-1]:.3f}"
        )
    heads.round_to_half()  # evaluate exactly what the file will hold
    loss, top1, chain = _eval(heads, data.hidden[held], target[held], rows)
    report.heldout_top1 = [round(a, 4) for a in top1]
    report.heldout_chain = [round(c, 4) for c in chain]
    report.tokens_per_step = round(1 + sum(chain), 3)
    report.seconds = round(time.perf_counter() - t0, 1)
    return heads.eval(), report


def _loss(heads: MedusaHeads, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy (rows with label -100 ignored)."""
    logits = heads.logits(x, rows)  # (K, B, V')
    return sum(torch.nn.functional.cross_entropy(logits[i], y[:, i], ignore_index=-100) for i in range(heads.count))  # type: ignore[return-value]


@torch.no_grad()
def _eval(
    heads: MedusaHeads, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, batch: int = 1024
) -> tuple[float, list[float], list[float]]:
    """(loss, top-1 accuracy per head, P(heads 1..i all right) per i) over rows whose K labels all exist."""
    full = (y >= 0).all(1)
    x, y = x[full], y[full]
    if len(x) == 0:
        return float("nan"), [0.0] * heads.count, [0.0] * heads.count
    losses, hits = [], []
    for b0 in range(0, len(x), batch):
        logits = heads.logits(x[b0 : b0 + batch], rows)  # (K, b, V')
        yb = y[b0 : b0 + batch]
        losses.append(_loss_of(logits, yb) * len(yb))
        hits.append(yb == logits.argmax(-1).T)  # (b, K)
    hit = torch.cat(hits).float()
    chain = torch.cumprod(hit, dim=1).mean(0).tolist()
    return sum(losses) / len(x), hit.mean(0).tolist(), chain


def _loss_of(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(sum(torch.nn.functional.cross_entropy(logits[i], y[:, i]) for i in range(logits.shape[0])))
