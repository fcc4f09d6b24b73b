"""`python -m specviz train-heads`: self-distil a preset's target on the training prompts, train the helper heads,
write the heads file and print the training report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from specviz.backends.cache import cache_dir
from specviz.backends.loading import load_pair
from specviz.core.config import ConfigError
from specviz.core.presets import ASSETS_DIR, PACKAGE_DIR, default_preset
from specviz.medusa import lm_head_weight
from specviz.medusa.data import TRAIN_PROMPTS, Distilled, data_key, self_distill, train_prompts
from specviz.medusa.train import train_heads


def add_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train-heads", help="train Medusa helper heads for a preset's target (self-distillation)")
    t.add_argument("--preset", default=None, help="model pair from specviz/presets/models.yaml (default: the first)")
    t.add_argument("--heads", type=int, default=4, help="number of heads K (1..8)")
    t.add_argument("--prompts", default=str(TRAIN_PROMPTS), help="YAML file with a 'prompts' list")
    t.add_argument("--answers", type=int, default=0, help="use only the first N prompts (0 = all)")
    t.add_argument("--max-new-tokens", type=int, default=256, help="length of each self-distilled answer")
    t.add_argument("--batch", type=int, default=32, help="answers generated at once")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, help="heads file (default: assets/medusa-<preset>.safetensors)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    t.add_argument("--debug", action="store_true", help="show tracebacks")


def cmd_train_heads(args: argparse.Namespace, out: TextIO) -> int:
    if not 1 <= args.heads <= 8:
        raise ConfigError(f"--heads must be 1..8, got {args.heads}")
    if args.max_new_tokens < args.heads + 2:
        raise ConfigError(f"--max-new-tokens must be at least heads + 2 = {args.heads + 2}")
    preset = args.preset or default_preset()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    pair = load_pair(preset, device=args.device)
    prompts = train_prompts(Path(args.prompts))
    prompts = prompts[: args.answers] if args.answers else prompts
    ids = [pair.codec.encode(p) for p in prompts]
    target = pair.target.model
    cached = cache_dir() / "medusa" / f"data-{data_key(preset, ids, args.max_new_tokens)}.pt"
    if cached.is_file():
        data = Distilled.load(cached)
        log(f"reusing self-distilled data {cached} ({data.meta})")
    else:
        tok = getattr(pair.codec, "tok", None)
        pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else min(pair.codec.eos_ids)
        data = self_distill(target, ids, args.max_new_tokens, pad, sorted(pair.codec.eos_ids), args.batch, log)
        data.save(cached)
    meta = {
        "base": preset,
        "vocab_size": target.config.vocab_size,
        "vocab_key": pair.codec.vocab_key(),
        "data": data.meta,
    }
    t0 = time.perf_counter()
    heads, report = train_heads(
        data, lm_head_weight(target), args.heads, args.epochs, args.lr, seed=args.seed, meta=meta, log=log
    )
    heads.meta["report"] = report.to_dict()
    path = Path(args.out) if args.out else ASSETS_DIR / f"medusa-{preset}.safetensors"
    sha = heads.save(path)
    size_mb = path.stat().st_size / 1e6
    out.write(format_report(preset, data, report.to_dict()))
    out.write(
        f"trained in {time.perf_counter() - t0:.0f} s; wrote {path} ({size_mb:.1f} MB)\n"
        f"to use it, set in specviz/presets/models.yaml under {preset}:\n"
        f"  heads: {{file: {_rel(path)}, sha256: {sha}}}\n"
    )
    return 0


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PACKAGE_DIR))
    except ValueError:
        return str(path)


def format_report(preset: str, data: Distilled, r: dict) -> str:
    """The training report as text (README quotes it)."""
    lines = [
        f"helper heads for {preset}: {len(r['heldout_top1'])} heads, draft vocabulary {r['draft_vocab']} tokens",
        f"self-distilled data: {data.meta['answers']} answers, {data.meta['tokens']} tokens "
        f"({data.meta['seconds']} s to generate)",
        f"rows: {r['train_rows']} train, {r['heldout_rows']} held out (every 8th answer)",
        "loss by epoch (train / held-out): "
        + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(r["loss"], r["heldout_loss"])),
        "held-out top-1 accuracy by head: " + ", ".join(f"{a:.1%}" for a in r["heldout_top1"]),
        "held-out P(heads 1..i all right): " + ", ".join(f"{a:.1%}" for a in r["heldout_chain"]),
        f"expected tokens per verification pass with all heads: {r['tokens_per_step']:.2f}",
        json.dumps(r),
    ]
    return "\n".join(lines) + "\n"
