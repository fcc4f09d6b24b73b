"""`specviz record`: the gallery of recorded runs the Run tab replays (presets/traces): the first prompt of every prompt
suite x the main strategies x greedy and sampled, each with its measured plain baseline, written as compact gzip
traces with the machine, date and commit inside, and the index.json the page's picker reads."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import specviz
from specviz.cli.common import load
from specviz.core.config import ConfigError, GenConfig
from specviz.core.engine import run
from specviz.core.events import RunSummary, StepEvent
from specviz.core.metrics import with_plain
from specviz.core.presets import PACKAGE_DIR, TRACES_DIR, default_preset, prompt_suites
from specviz.core.trace import trace_meta
from specviz.proposers import STRATEGIES, build_proposer

MAIN_STRATEGIES = ("draft", "ngram", "medusa", "layerskip", "multidraft")
# the hook for token trees: name them here (e.g. "drafttree", "medusatree", "ngramtree") and they join the default
# gallery; `--strategies drafttree` records one now. Nothing else changes: a tree step's trace replays like a chain's
TREE_STRATEGIES: tuple[str, ...] = ("drafttree", "medusatree", "ngramtree")
RULES = ("greedy", "sample")
DETAIL_TOP = 10  # step-mode p/q chart tokens kept per step (the Run tab's step mode draws 10)
INDEX = "index.json"
BASELINE_NOTE = "plain baseline: the same prompt and settings without drafts, run right after the strategy (as the Run tab does)"


def gallery_strategies() -> tuple[str, ...]:
    """The default strategies: the main five, then the token-tree ones named in TREE_STRATEGIES (when registered)."""
    return MAIN_STRATEGIES + tuple(s for s in TREE_STRATEGIES if s in STRATEGIES)


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("record", help="record the Run tab's gallery of replays (presets/traces)")
    r.add_argument("--preset", default=None, help="model pair (default: the first of presets/models.yaml)")
    r.add_argument("--suites", default="all", help="prompt suites, comma-separated, or 'all' (first prompt of each)")
    r.add_argument("--strategies", default=",".join(gallery_strategies()), help="comma-separated strategies")
    r.add_argument("--rules", default=",".join(RULES), help="greedy, sample, or both (comma-separated)")
    r.add_argument("--gamma", type=int, default=4, help="draft length (1..32)")
    r.add_argument("--max-new-tokens", type=int, default=48, help="tokens per run (modest: the gallery ships)")
    r.add_argument("--temperature", type=float, default=1.0, help="temperature of the sampled runs")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default=str(TRACES_DIR), help=f"folder to write (default: {TRACES_DIR})")
    r.add_argument("--force", action="store_true", help="record again what the folder already has")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    r.add_argument("--debug", action="store_true", help="show tracebacks")
    # what check_args' generation check reads besides the flags above (each rule is recorded with these)
    r.set_defaults(rule="greedy", top_k=0, top_p=1.0, relax=0.0, relax_family="linear", option=[])


def _names(raw: str, known: Any, what: str) -> list[str]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ConfigError(f"unknown {what} {bad[0] if bad else raw!r}; known: {', '.join(known)}")
    return names


def plan(args: argparse.Namespace) -> tuple[list[tuple[str, str, str]], list[str], list[str], list[GenConfig]]:
    """(suite, prompt name, prompt) per suite, the strategies, the rules and their configs; ConfigError names a bad
    flag before anything loads."""
    suites = prompt_suites()
    wanted = list(suites) if args.suites in ("all", "") else _names(args.suites, suites, "suite")
    prompts = []
    for s in wanted:
        if not suites[s]:
            raise ConfigError(f"prompt suite {s!r} has no prompts")
        prompts.append((s, suites[s][0]["name"], suites[s][0]["prompt"]))
    strategies = _names(args.strategies, [s for s in STRATEGIES if s != "plain"], "strategy")
    rules = _names(args.rules, RULES, "rule")
    cfgs = [
        GenConfig(
            gamma=args.gamma,
            rule=rule,
            temperature=args.temperature if rule == "sample" else 1.0,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        ).validated()
        for rule in rules
    ]
    return prompts, strategies, rules, cfgs


def machine() -> dict[str, Any]:
    """The CPU model, its cores, torch's threads and the load average: what the timings depend on."""
    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    import torch

    out: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if hasattr(os, "getloadavg"):
        out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return out


def commit() -> str | None:
    """The repository's HEAD commit, and '+changes' when the working tree differs from it (None outside git)."""
    root = PACKAGE_DIR.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "diff-index", "--quiet", "HEAD", "--"], cwd=root, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.returncode == 1 else "")


def compact(step: dict[str, Any]) -> dict[str, Any]:
    """A step without the fields a replay reads back as their defaults (None), in the step and in its tokens."""
    out = {k: v for k, v in step.items() if v is not None}
    out["tokens"] = [{k: v for k, v in t.items() if v is not None} for t in step["tokens"]]
    return out


def command(args: argparse.Namespace, preset: str) -> str:
    """The command line that records this gallery again."""
    threads = f" --threads {args.threads}" if args.threads else ""
    return (
        f"python -m specviz record --preset {preset} --suites {args.suites} --strategies {args.strategies} "
        f"--rules {args.rules} --gamma {args.gamma} --max-new-tokens {args.max_new_tokens} "
        f"--temperature {args.temperature:g} --seed {args.seed}{threads}"
    )


def write_trace(path: Path, steps: list[StepEvent], summary: RunSummary, meta: dict[str, Any]) -> int:
    """One gzip-compressed compact trace; its size in bytes."""
    meta = meta | {"plain_steps": [compact(s) for s in meta.get("plain_steps", [])]}
    doc = {"meta": meta, "steps": [compact(s.to_dict()) for s in steps], "summary": summary.to_dict()}
    data = gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), compresslevel=9, mtime=0)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return len(data)


def cmd_record(args: argparse.Namespace, out: TextIO) -> int:
    prompts, strategies, _, cfgs = plan(args)  # a bad suite, strategy or rule: one message before the models load
    folder = Path(args.out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    pair = load(args)
    preset = pair.preset or args.preset or default_preset()
    common = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit(),
        "specviz_version": specviz.__version__,
        "recorded_with": command(args, preset),
        "baseline": BASELINE_NOTE,
    }
    order = [_file(p[0], s, c.rule) for p in prompts for c in cfgs for s in strategies]
    failed = 0
    for suite, name, prompt in prompts:
        ids = pair.codec.encode(prompt)
        for cfg in cfgs:
            todo = [s for s in strategies if args.force or not (folder / _file(suite, s, cfg.rule)).is_file()]
            for strategy in todo:
                file = _file(suite, strategy, cfg.rule)
                t0 = time.monotonic()
                try:
                    r = run(
                        pair.target,
                        build_proposer(strategy, pair, cfg),
                        ids,
                        cfg,
                        eos_ids=pair.codec.eos_ids,
                        piece=pair.codec.piece,
                        detail_top=DETAIL_TOP,
                    )
                    steps = list(r)
                except Exception as e:  # noqa: BLE001 - one strategy that cannot run here does not end the gallery
                    failed += 1
                    print(f"{file}: skipped ({type(e).__name__}: {e})", file=sys.stderr)
                    continue
                summary = r.summary
                assert summary is not None
                summary.text = pair.codec.decode(summary.output_ids)
                # its own baseline right after it, as a live run measures one: a machine whose load changes between
                # runs (a shared one) then skews a speedup much less than a baseline shared by several strategies
                plain_steps, plain = _plain(pair, ids, cfg)
                with_plain(summary, plain)
                meta = trace_meta(
                    prompt,
                    preset,
                    strategy,
                    cfg.to_dict(),
                    chat=bool(pair.codec.chat),
                    plain_steps=plain_steps,
                    plain_summary=plain,
                    suite=suite,
                    prompt_name=name,
                    machine=machine(),  # per trace: the load average says how busy the machine was then
                    **common,
                )
                size = write_trace(folder / file, steps, summary, meta)
                write_index(folder, preset, order)  # after every file: a recording cut short leaves a whole index
                speed = f"{summary.speedup:.2f}x" if summary.speedup is not None else "-"
                print(
                    f"{file}: {summary.new_tokens} tokens, {summary.steps} steps, {speed} vs plain, "
                    f"{size / 1024:.1f} KB, {time.monotonic() - t0:.1f} s",
                    file=out,
                    flush=True,
                )
    listed = write_index(folder, preset, order)
    total = sum((folder / e["file"]).stat().st_size for e in listed)
    print(
        f"{len(listed)} recorded runs in {folder} ({total / 2**20:.2f} MB), {time.monotonic() - t_start:.0f} s"
        + (f"; {failed} skipped" if failed else ""),
        file=out,
    )
    return 1 if failed else 0


def entry_of(path: Path) -> dict[str, Any]:
    """A recorded trace's line in index.json, read from the trace itself."""
    doc = json.loads(gzip.decompress(path.read_bytes()))
    meta, summary = doc["meta"], doc["summary"]
    plain = meta.get("plain_summary") or {}
    greedy = meta["config"]["rule"] == "greedy"
    return {
        "file": path.name,
        "suite": meta.get("suite", ""),
        "prompt_name": meta.get("prompt_name", ""),
        "strategy": meta["strategy"],
        "rule": meta["config"]["rule"],
        "tokens": summary["new_tokens"],
        "speedup": round(summary["speedup"], 3) if summary.get("speedup") is not None else None,
        "same_as_plain": summary["output_ids"] == plain.get("output_ids") if greedy else None,
    }


def write_index(folder: Path, preset: str, order: list[str]) -> list[dict[str, Any]]:
    """index.json for every recorded trace in `folder`: those of this recording's plan in its order, then any others
    the folder holds (earlier recordings of other suites or strategies); returns its entries."""
    files = {p.name: p for p in folder.glob("*.json.gz")}
    names = [f for f in order if f in files] + sorted(f for f in files if f not in order)
    entries = [entry_of(files[f]) for f in names]
    tmp = folder / (INDEX + ".tmp")
    tmp.write_text(json.dumps({"preset": preset, "entries": entries}, indent=1) + "\n", encoding="utf-8")
    tmp.replace(folder / INDEX)
    return entries


def _plain(pair: Any, ids: list[int], cfg: GenConfig) -> tuple[list[StepEvent], RunSummary]:
    """The plain baseline's steps and summary (its text decoded)."""
    r = run(pair.target, None, ids, cfg, eos_ids=pair.codec.eos_ids, piece=pair.codec.piece)
    steps = list(r)
    assert r.summary is not None
    r.summary.text = pair.codec.decode(r.summary.output_ids)
    return steps, r.summary


def _file(suite: str, strategy: str, rule: str) -> str:
    return f"{suite}-{strategy}-{rule}.json.gz"
