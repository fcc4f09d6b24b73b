"""Medusa helper heads (Cai et al. 2024): K small residual blocks on the target's final hidden state, head i guessing
the token i + 1 places after the one the target's own LM head predicts; they score tokens with the target's frozen
LM head, restricted to a draft vocabulary, and are saved as one small safetensors file with what they were trained for."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from specviz.core.config import ConfigError

FORMAT = 1


class ResBlock(torch.nn.Module):
    """x + SiLU(W x + b), W zero-initialised so a fresh head starts as the identity (Medusa's choice)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden, hidden)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.nn.functional.silu(self.linear(x))


class MedusaHeads(torch.nn.Module):
    """`count` heads over hidden size `hidden`; `vocab_ids` (V',) are the target vocabulary rows the heads may guess
    (the tokens seen in training: scoring only these makes a draft cost a few MB of weights instead of the whole LM
    head). `meta` records what they were trained for (vocab size and fingerprint, base model, the training report)."""

    def __init__(self, hidden: int, count: int, vocab_ids: torch.Tensor, meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.hidden, self.count = hidden, count
        self.blocks = torch.nn.ModuleList(ResBlock(hidden) for _ in range(count))
        self.register_buffer("vocab_ids", vocab_ids.to(torch.long).clone())
        self.meta = dict(meta or {})
        self._rows: torch.Tensor | None = None  # the LM head's rows at vocab_ids, bound by bind()

    def states(self, h: torch.Tensor) -> torch.Tensor:
        """(N, H) hidden states -> (count, N, H), one per head."""
        return torch.stack([blk(h) for blk in self.blocks])

    def logits(self, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(N, H) -> (count, N, V') scores over the draft vocabulary, given the LM head's rows (V', H)."""
        return self.states(h) @ rows.T

    def bind(self, lm_weight: torch.Tensor | Callable[[torch.Tensor], torch.Tensor]) -> MedusaHeads:
        """Keep the target LM head's rows at vocab_ids (a copy of V' rows, the only part of it the heads read), given
        its (V, H) weight or a function from row ids to rows (a packed head: no full copy)."""
        rows = lm_weight(self.vocab_ids) if callable(lm_weight) else lm_weight[self.vocab_ids.to(lm_weight.device)]
        self._rows = rows.to(self.blocks[0].linear.weight.dtype).clone()
        return self

    @torch.inference_mode()
    def guess(self, h: torch.Tensor, k: int | None = None) -> tuple[list[int], list[float]]:
        """One hidden state (H,) -> the top-1 token id of each of the first k heads, and its probability (softmax over
        the draft vocabulary)."""
        if self._rows is None:
            raise RuntimeError("MedusaHeads.bind(lm_head_weight) first")
        x = h.reshape(1, -1).to(self._rows.dtype)
        states = torch.cat([blk(x) for blk in self.blocks[: k or self.count]])  # (k, H)
        probs = torch.softmax(states @ self._rows.T, dim=-1)  # (k, V')
        top, best = probs.max(-1)
        return self.vocab_ids[best.to(self.vocab_ids.device)].tolist(), top.tolist()

    @torch.inference_mode()
    def top(self, h: torch.Tensor, k: int, width: int) -> tuple[list[list[int]], list[list[float]]]:
        """One hidden state (H,) -> the top-`width` token ids of each of the first k heads and their probabilities,
        best first: the choices a Medusa token tree is built from."""
        if self._rows is None:
            raise RuntimeError("MedusaHeads.bind(lm_head_weight) first")
        x = h.reshape(1, -1).to(self._rows.dtype)
        states = torch.cat([blk(x) for blk in self.blocks[:k]])  # (k, H)
        probs = torch.softmax(states @ self._rows.T, dim=-1)  # (k, V')
        top, best = probs.topk(min(width, probs.shape[-1]), dim=-1)  # (k, width)
        return self.vocab_ids[best.to(self.vocab_ids.device)].tolist(), top.tolist()

    def round_to_half(self) -> MedusaHeads:
        """Round the weights to float16 values (what the file stores), so the heads evaluated are the heads shipped."""
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(p.half().float())
        return self

    def save(self, path: Path) -> str:
        """Write the heads (float16 weights) and their metadata; returns the file's sha256."""
        from safetensors.torch import save_file

        tensors = {n: p.detach().half().contiguous() for n, p in self.named_parameters()}
        tensors["vocab_ids"] = self.vocab_ids.to(torch.int32).contiguous()
        meta = {"format": str(FORMAT), "hidden": str(self.hidden), "count": str(self.count), **_strs(self.meta)}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return sha256_of(path)


def random_heads(lm_weight: torch.Tensor, count: int, seed: int, scale: float = 0.5) -> MedusaHeads:
    """Heads with random (non-zero) weights over the whole vocabulary, bound to this LM head (tests, untrained demos)."""
    vocab, hidden = lm_weight.shape
    heads = MedusaHeads(hidden, count, torch.arange(vocab))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale / hidden**0.5)
    return heads.bind(lm_weight)


def _strs(meta: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in meta.items()}  # safetensors metadata holds strings only


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_heads(
    path: Path, hidden: int, vocab_size: int, vocab_key: str | None = None, sha256: str | None = None
) -> MedusaHeads:
    """Load a heads file for a target of this hidden size and vocabulary; every mismatch is a ConfigError saying
    what differs (missing file, checksum, hidden size, vocabulary)."""
    from safetensors import safe_open

    if not path.is_file():
        raise ConfigError(f"helper heads file {path} is missing: run `python -m specviz train-heads` to make it")
    if sha256 and sha256_of(path) != sha256:
        raise ConfigError(
            f"helper heads file {path} fails its checksum (expected sha256 {sha256[:12]}..., got "
            f"{sha256_of(path)[:12]}...): restore it, or retrain it and update the preset's sha256"
        )
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as e:
        raise ConfigError(f"helper heads file {path} is not a readable safetensors file: {e}") from e
    if meta.get("format") != str(FORMAT):
        raise ConfigError(f"helper heads file {path} has format {meta.get('format')!r}, this version reads {FORMAT}")
    got_hidden, count = int(meta["hidden"]), int(meta["count"])
    if got_hidden != hidden:
        raise ConfigError(f"helper heads file {path} was trained for hidden size {got_hidden}, the target has {hidden}")
    trained_vocab = int(json.loads(meta.get("vocab_size", "0")))
    if trained_vocab != vocab_size:
        raise ConfigError(
            f"helper heads file {path} was trained for a vocabulary of {trained_vocab} tokens, "
            f"the target's has {vocab_size}"
        )
    want_key = json.loads(meta["vocab_key"]) if "vocab_key" in meta else None
    if vocab_key is not None and want_key is not None and want_key != vocab_key:
        raise ConfigError(
            f"helper heads file {path} was trained for another tokenizer (vocabulary fingerprints differ)"
        )
    extra = {k: json.loads(v) for k, v in meta.items() if k not in ("format", "hidden", "count")}
    vocab_ids = tensors.pop("vocab_ids").long()
    if len(vocab_ids) == 0 or int(vocab_ids.max()) >= vocab_size:
        raise ConfigError(f"helper heads file {path} guesses token ids outside the target's vocabulary of {vocab_size}")
    heads = MedusaHeads(hidden, count, vocab_ids, extra)
    heads.load_state_dict({"vocab_ids": vocab_ids, **{k: v.float() for k, v in tensors.items()}})
    return heads.eval()
