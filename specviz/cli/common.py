"""What the model commands share: the generation flags, GenConfig from them, and loading the preset's pair with
progress on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specviz.backends.devices import pick_device
from specviz.backends.loading import ModelPair, load_pair
from specviz.core.config import RELAX_FAMILIES, ConfigError, GenConfig, check_prompt
from specviz.core.presets import default_preset, model_preset
from specviz.proposers import STRATEGIES


def gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="model pair from specviz/presets/models.yaml (default: the first)")
    p.add_argument("--gamma", type=int, default=4, help="draft length (1..32)")
    p.add_argument("--rule", choices=["greedy", "sample"], default="greedy", help="verification rule")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (rule 'sample')")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relax", type=float, default=0.0, help="relaxed acceptance, 0 (lossless) to 1; rule 'sample' only")
    p.add_argument("--relax-family", default="linear", choices=RELAX_FAMILIES, help="the relaxed rule's family")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="strategy option (repeatable), e.g. ngram_max=3",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--option needs KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def config_from(args: argparse.Namespace) -> GenConfig:
    return GenConfig(
        gamma=args.gamma,
        rule=args.rule,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        relax=args.relax,
        relax_family=args.relax_family,
        options=parse_options(args.option),
    ).validated()


def load(args: argparse.Namespace) -> ModelPair:
    last = [0.0]

    def progress(frac: float, msg: str) -> None:
        now = time.monotonic()
        if now - last[0] > 2 or frac >= 1:
            last[0] = now
            print(f"[{frac:4.0%}] {msg}", file=sys.stderr, flush=True)

    return load_pair(args.preset or default_preset(), device=args.device, progress=progress)


def check_args(args: argparse.Namespace) -> None:
    """Mistakes in the flags, found before any model loads or bench runs: one ConfigError naming the flag."""
    threads = getattr(args, "threads", None)
    if threads is not None and not 1 <= threads <= 1024:
        raise ConfigError(f"--threads must be between 1 and 1024, got {threads}")
    if getattr(args, "limit", 0) < 0:
        raise ConfigError(f"--limit must be 0 (every prompt) or more, got {args.limit}")
    if getattr(args, "device", None) is not None:
        pick_device(args.device)
    save = getattr(args, "save", None)
    if save:
        folder = Path(save).expanduser().resolve().parent
        if not folder.is_dir():
            raise ConfigError(f"--save {save}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK) or Path(save).is_dir():
            raise ConfigError(f"--save {save}: cannot write a file there")
    if getattr(args, "prompt", None) is not None:
        check_prompt(args.prompt)
    if getattr(args, "preset", None):
        model_preset(args.preset)
    strategy = getattr(args, "strategy", None)
    if strategy is not None and strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if getattr(args, "gamma", None) is not None:
        config_from(args)  # every generation setting, with the message GenConfig gives
