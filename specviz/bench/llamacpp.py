"""The llama.cpp comparison: the same GGUF, prompts, token ids and thread count run by llama-cpp-python (plain and its
prompt-lookup decoding) beside our plain decoding and our best strategy, in one run; a benchmark reference only
(`llama_cpp` is optional, never a dependency)."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from specviz.backends.gguf_quant import MODEL_FILE
from specviz.backends.loading import ModelPair
from specviz.bench.targets import Log, TargetRow, prompts_of, run_strategy
from specviz.core.config import GenConfig

LOOKUP_TOKENS = 2  # llama-cpp-python's advice for CPU-only machines (10, its default, is for GPUs)
OURS = ("draft", "ngram")  # the strategies whose best is set against llama.cpp's best


@dataclass
class Side:
    """One engine's runs over the prompts: wall seconds (prefill included), new tokens, prompt tokens and prefill
    seconds, and the output ids of each prompt."""

    wall: float = 0.0
    tokens: int = 0
    prefill_s: float = 0.0
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


def _gguf(pair: ModelPair) -> Path | None:
    path = pair.info.get("target", {}).get("path")
    f = Path(path) / MODEL_FILE if path else None
    return f if f is not None and f.is_file() else None


def _llama(path: Path, threads: int, n_ctx: int, lookup: bool) -> Any:
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    draft = LlamaPromptLookupDecoding(num_pred_tokens=LOOKUP_TOKENS) if lookup else None
    # n_batch = n_ctx: a prompt is one logical batch (llama.cpp still computes it in ubatches of 512); with a smaller
    # n_batch, llama-cpp-python 0.3.36's prompt lookup fails on prompts longer than it (a logits buffer too short)
    return Llama(
        str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        draft_model=draft,
        verbose=False,
        seed=0,
    )


def _complete(llm: Any, ids: list[int], n: int, eos: set[int]) -> tuple[list[int], float]:
    """Greedy continuation of the token ids, up to n tokens or one of `eos` (kept, as our engine keeps it), with no
    prefix of an earlier prompt reused -> (new ids, seconds)."""
    llm.reset()
    out: list[int] = []
    t0 = time.perf_counter()
    for tok in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(int(tok))
        if len(out) >= n or tok in eos:
            break
    return out, time.perf_counter() - t0


def check_llamacpp(pair: ModelPair, cfg: GenConfig, suite: str, limit: int, log: Log) -> list[TargetRow]:
    """llama.cpp plain and prompt lookup against our plain and our best of OURS, each prompt run by every side in
    turn (the order rotating), same token ids, greedy, torch's thread count; plus prefill speed (a one-token
    completion on llama.cpp's side, our plain run's prompt pass on ours)."""
    if importlib.util.find_spec("llama_cpp") is None:
        log("llamacpp: skipped, llama_cpp is not importable (pip install llama-cpp-python; see docs/benchmarks.md)")
        return []
    gguf = _gguf(pair)
    if gguf is None:
        log(f"llamacpp: skipped, preset {pair.preset!r}'s target is not an embedded GGUF on the quantised kernel")
        return []
    threads = torch.get_num_threads()
    prompts = prompts_of(suite, limit)
    encoded = [pair.codec.encode(p) for _, _, p in prompts]
    eos = set(pair.codec.eos_ids)
    n_ctx = max(len(ids) for ids in encoded) + cfg.max_new_tokens + 16
    log(f"llamacpp: loading {gguf.name} into llama.cpp ({threads} threads), plain and prompt lookup")
    engines = {
        "llama.cpp plain": _llama(gguf, threads, n_ctx, False),
        "llama.cpp lookup": _llama(gguf, threads, n_ctx, True),
    }
    for llm in engines.values():  # warm-up: first calls pay for allocations
        _complete(llm, encoded[0][:32], 4, eos)
    names = ["plain", *OURS, *engines]
    sides = {k: Side() for k in names}
    prompt_tokens = 0
    for i, ((_, name, _), ids) in enumerate(zip(prompts, encoded)):
        log(f"llamacpp: {name} ({len(ids)} prompt tokens)")
        prompt_tokens += len(ids)
        for side in names[i % len(names) :] + names[: i % len(names)]:
            s = sides[side]
            if side in engines:
                out, wall = _complete(engines[side], ids, cfg.max_new_tokens, eos)
                if side == "llama.cpp plain":
                    s.prefill_s += _complete(engines[side], ids, 1, eos)[1]
            else:
                r = run_strategy(pair, side, ids, cfg, instrument=False)
                out, wall = list(r.output_ids), r.wall_s
                s.prefill_s += r.prefill_ms / 1e3
            s.wall, s.tokens = s.wall + wall, s.tokens + len(out)
            s.outputs.append(out)
    del engines
    ours = max(OURS, key=lambda k: sides[k].tps)
    theirs = max(("llama.cpp plain", "llama.cpp lookup"), key=lambda k: sides[k].tps)
    same = sum(a == b for a, b in zip(sides["plain"].outputs, sides["llama.cpp plain"].outputs))
    ident = all(sides[k].outputs == sides["plain"].outputs for k in OURS)  # ours are lossless; theirs are not promised
    pre = {k: prompt_tokens / sides[k].prefill_s if sides[k].prefill_s else 0.0 for k in ("plain", "llama.cpp plain")}
    tps = "; ".join(f"{k} {sides[k].tps:.2f}" for k in names)
    faster = "specviz" if sides[ours].tps >= sides[theirs].tps else "llama.cpp"
    return [
        TargetRow(
            "8 llama.cpp plain",
            f"plain tokens/s, specviz / llama.cpp ({gguf.parent.name}, {threads} threads)",
            sides["plain"].tps / sides["llama.cpp plain"].tps if sides["llama.cpp plain"].tps else 0.0,
            ">=",
            1.0,
            f"{tps} tokens/s (prefill included); the same tokens as ours on {same} of {len(prompts)} prompts",
        ),
        TargetRow(
            "8 llama.cpp best",
            f"best tokens/s, specviz {ours} / {theirs} (lookup: {LOOKUP_TOKENS} tokens)",
            sides[ours].tps / sides[theirs].tps if sides[theirs].tps else 0.0,
            ">=",
            1.0,
            f"{sides[ours].tps:.2f} vs {sides[theirs].tps:.2f} tokens/s: {faster} is faster; ours identical to our "
            f"plain: {ident}",
            ident,
        ),
        TargetRow(
            "8 llama.cpp prefill",
            "prompt tokens/s, specviz / llama.cpp",
            pre["plain"] / pre["llama.cpp plain"] if pre["llama.cpp plain"] else 0.0,
            ">=",
            1.0,
            f"{pre['plain']:.0f} vs {pre['llama.cpp plain']:.0f} prompt tokens/s over {prompt_tokens} prompt tokens",
        ),
    ]
