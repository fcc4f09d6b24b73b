"""Self-distilled training data for the helper heads: the target answers the training prompts greedily, in batches,
and we keep its final hidden state at every position together with the tokens it went on to produce."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from specviz.core.config import ConfigError
from specviz.core.presets import PRESETS_DIR

Log = Callable[[str], None]
TRAIN_PROMPTS = PRESETS_DIR / "train_prompts.yaml"


def train_prompts(path: Path = TRAIN_PROMPTS) -> list[str]:
    """The training prompts (held apart from the benchmark suites)."""
    try:
        prompts = yaml.safe_load(path.read_text())["prompts"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        raise ConfigError(f"could not read training prompts from {path}: {e}") from e
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ConfigError(f"{path}: 'prompts' must be a non-empty list of strings")
    return prompts


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose output is the hidden state the LM head reads (model.model.norm in Llama/Qwen families)."""
    norm = getattr(getattr(model, "model", None), "norm", None)
    if not isinstance(norm, torch.nn.Module):
        raise ConfigError(f"{type(model).__name__} has no final norm at model.norm: helper heads need one")
    return norm


@dataclass
class Distilled:
    """Per answer: the tokens the target produced (gen) and its hidden state before each of them (hidden[s] is the
    final-norm output at the position whose LM-head prediction is gen[s]). Concatenated: hidden (N, H), and
    `starts` (R + 1,) offsets of each answer's rows."""

    hidden: torch.Tensor
    tokens: torch.Tensor
    starts: list[int]
    meta: dict

    def labels(self, heads: int) -> torch.Tensor:
        """(N, heads) targets: head i at hidden[s] predicts gen[s + 1 + i]; -100 past the end of an answer."""
        out = torch.full((self.tokens.numel(), heads), -100, dtype=torch.long)
        for a, b in zip(self.starts[:-1], self.starts[1:]):
            for i in range(heads):
                n = b - a - 1 - i
                if n > 0:
                    out[a : a + n, i] = self.tokens[a + 1 + i : b]
        return out

    def answer_of(self) -> torch.Tensor:
        """(N,) which answer each row belongs to (for a held-out split by answer, not by position)."""
        idx = torch.empty(self.tokens.numel(), dtype=torch.long)
        for r, (a, b) in enumerate(zip(self.starts[:-1], self.starts[1:])):
            idx[a:b] = r
        return idx

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"hidden": self.hidden, "tokens": self.tokens, "starts": self.starts, "meta": self.meta}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Distilled:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(d["hidden"], d["tokens"], list(d["starts"]), d["meta"])


def data_key(model_name: str, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> str:
    """A cache key for one model, prompt set and answer length."""
    blob = json.dumps([model_name, [list(p) for p in prompt_ids], max_new_tokens])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@torch.inference_mode()
def self_distill(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    pad_id: int,
    eos_ids: Sequence[int],
    batch: int = 32,
    log: Log = print,
) -> Distilled:
    """Greedy answers to every prompt, `batch` at a time (left-padded HF generate: a batched pass costs far less
    than one pass per row on a memory-bound CPU), keeping the final hidden state of every fed position."""
    if not prompt_ids:
        raise ConfigError("self-distillation needs at least one prompt")
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    hook = final_norm(model).register_forward_hook(lambda m, i, o: captured.append(o[:, -1].float().cpu()))
    hidden, tokens, starts = [], [], [0]
    eos = set(eos_ids)
    t0, n_tok = time.perf_counter(), 0
    try:
        for b0 in range(0, len(prompt_ids), batch):
            group = [list(p) for p in prompt_ids[b0 : b0 + batch]]
            width = max(len(p) for p in group)
            x = torch.tensor([[pad_id] * (width - len(p)) + p for p in group], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in group], device=device)
            captured.clear()
            out = model.generate(
                input_ids=x,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=sorted(eos),
                temperature=None,
                top_p=None,
                top_k=None,
            )
            gen = out[:, width:].cpu()  # (B, T)
            hs = torch.stack(captured[: gen.shape[1]], dim=1)  # (B, T, H): hs[:, s] predicts gen[:, s]
            if not torch.isfinite(hs).all():  # seen with float64 tiny models in padded batches
                raise ConfigError("non-finite hidden states in a padded batch: generate with a batch of 1")
            for r in range(gen.shape[0]):
                row = gen[r].tolist()
                end = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
                hidden.append(hs[r, :end])
                tokens.append(gen[r, :end])
                starts.append(starts[-1] + end)
                n_tok += end
            dt = time.perf_counter() - t0
            log(
                f"self-distillation: {b0 + len(group)}/{len(prompt_ids)} answers, {n_tok} tokens, {n_tok / dt:.1f} tok/s"
            )
    finally:
        hook.remove()
    meta = {"answers": len(prompt_ids), "tokens": n_tok, "max_new_tokens": max_new_tokens, "seconds": round(dt, 1)}
    return Distilled(torch.cat(hidden), torch.cat(tokens), starts, meta)
