"""The speed targets as benchmarks: each measures one ratio in one run (fair baseline against Hugging Face generate,
instrumentation overhead, draft model against HF assisted generation, CPU speedups, start-up and memory) and says
whether it holds. Never a timed test: `python -m specviz bench --targets ...` prints the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from specviz.backends.loading import ModelPair, load_pair
from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.core.presets import PACKAGE_DIR, suite_prompts
from specviz.proposers import build_proposer

TARGETS = ("baseline", "overhead", "assisted", "speedups", "startup", "gpu")
Log = Callable[[str], None]


@dataclass
class TargetRow:
    """One comparison: `ratio` against `bound` (op '<=' or '>='), with the two measured sides spelled out."""

    target: str
    comparison: str
    ratio: float
    op: str
    bound: float
    measured: str
    identical: bool | None = None

    @property
    def holds(self) -> bool:
        ops = {"<=": self.ratio <= self.bound, "<": self.ratio < self.bound, ">=": self.ratio >= self.bound}
        ok = ops[self.op]
        return ok and self.identical is not False

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "holds": self.holds}


def chosen(arg: str) -> list[str]:
    """The targets a --targets value names; 'all' is every target this machine can measure (gpu needs CUDA)."""
    if arg == "all":
        return [t for t in TARGETS if t != "gpu" or torch.cuda.is_available()]
    return [t.strip() for t in arg.split(",") if t.strip()]


def _prompts(suite: str, limit: int) -> list[tuple[str, str, str]]:
    ps = suite_prompts(suite)
    return ps[:limit] if limit else ps


def hf_generate(
    pair: ModelPair,
    ids: Sequence[int],
    n: int,
    assistant_gamma: int | None = None,
    hf_defaults: bool = False,
    modules: tuple[Any, Any] | None = None,
) -> tuple[list[int], float]:
    """Greedy `model.generate()` on the pair's own target module (same weights, dtype, linear kernels as ours), or on
    `modules` (target, draft) given; with assistant_gamma, assisted generation with the draft at a constant draft
    length and no confidence stop (hf_defaults: the assistant's stock settings instead). -> (new ids, wall seconds)."""
    model = pair.target.model if modules is None else modules[0]
    x = torch.tensor([list(ids)], device=pair.device)
    eos = sorted(pair.codec.eos_ids) or None
    kw: dict[str, Any] = dict(
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos[0] if eos else None,
        attention_mask=torch.ones_like(x),
        top_p=None,
        top_k=None,
        temperature=None,
    )
    saved: dict[str, Any] = {}
    if assistant_gamma is not None:
        assert pair.draft is not None
        draft = pair.draft.model if modules is None else modules[1]
        gc_ = draft.generation_config
        tokens, threshold = (20, 0.4) if hf_defaults else (assistant_gamma, 0.0)
        settings = {
            "num_assistant_tokens": tokens,
            "num_assistant_tokens_schedule": "constant",
            "assistant_confidence_threshold": threshold,
        }
        saved = {k: getattr(gc_, k, None) for k in settings}
        for k, v in settings.items():
            setattr(gc_, k, v)
        kw["assistant_model"] = draft
    try:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(x, **kw)
        wall = time.perf_counter() - t0
    finally:  # the draft's own settings are left as they were
        for k, v in saved.items():
            setattr(gc_, k, v)
    return out[0, x.shape[1] :].tolist(), wall


def _ours(pair: ModelPair, strategy: str, ids: list[int], cfg: GenConfig, instrument: bool = True):
    kw = dict(eos_ids=pair.codec.eos_ids, piece=pair.codec.piece, instrument=instrument)
    return run(pair.target, build_proposer(strategy, pair, cfg), ids, cfg, **kw).run()


def _warm(pair: ModelPair, ids: list[int]) -> None:
    """One short run of each path first: oneDNN builds its kernels on first use, which no side should pay."""
    cfg = GenConfig(max_new_tokens=4)
    _ours(pair, "plain", ids, cfg)
    if pair.draft is not None:
        _ours(pair, "draft", ids, cfg)
        hf_generate(pair, ids, 4, assistant_gamma=2)
    hf_generate(pair, ids, 4)


def check_baseline(pair: ModelPair, cfg: GenConfig, suite: str, limit: int, log: Log) -> TargetRow:
    """Our plain decoding against HF generate, same prompts and token counts, alternating which goes first."""
    ours_s = hf_s = 0.0
    same, tokens = True, 0
    for i, (_, name, prompt) in enumerate(_prompts(suite, limit)):
        ids = pair.codec.encode(prompt)
        log(f"baseline: {name}")
        for first_ours in (True, False) if i % 2 == 0 else (False, True):
            if first_ours:
                s = _ours(pair, "plain", ids, cfg)
                ours_s, out = ours_s + s.wall_s, s.output_ids
            else:
                hf_ids, w = hf_generate(pair, ids, cfg.max_new_tokens)
                hf_s += w
        same &= out == hf_ids
        tokens += len(out)
    return TargetRow(
        "1 fair baseline",
        "specviz plain / HF generate (time)",
        ours_s / hf_s,
        "<=",
        1.05,
        f"{ours_s:.2f} s vs {hf_s:.2f} s, {tokens} tokens",
        same,
    )


def check_overhead(pair: ModelPair, cfg: GenConfig, suite: str, limit: int, strategy: str, log: Log) -> TargetRow:
    """The same run with full per-step events against events off (no p, q, TV, token text)."""
    on = off = 0.0
    same = True
    for i, (_, name, prompt) in enumerate(_prompts(suite, limit)):
        ids = pair.codec.encode(prompt)
        log(f"overhead: {name}")
        runs = {}
        for instrument in (True, False) if i % 2 == 0 else (False, True):
            runs[instrument] = _ours(pair, strategy, ids, cfg, instrument=instrument)
        on, off = on + runs[True].wall_s, off + runs[False].wall_s
        same &= runs[True].output_ids == runs[False].output_ids
    return TargetRow(
        "2 instrumentation",
        f"{strategy} events on / events off (time)",
        on / off,
        "<=",
        1.05,
        f"{on:.2f} s vs {off:.2f} s",
        same,
    )


def stock_modules(pair: ModelPair) -> tuple[Any, Any] | None:
    """The pair as transformers loads it, for the reference: nn.Linear modules in the pair's dtype, no kernel of ours
    (a second copy in memory, about 8 GB for the embedded pair). None for a preset without a draft."""
    if pair.draft is None:
        return None
    stock = load_pair(pair.preset, pair.info["device"], pair.info["dtype"], fast=False)
    assert stock.draft is not None
    return stock.target.model.eval(), stock.draft.model.eval()


def check_assisted(pair: ModelPair, cfg: GenConfig, suite: str, limit: int, log: Log) -> list[TargetRow]:
    """Our draft strategy against HF assisted generation at the same constant draft length: on the pair as
    transformers loads it (the reference a user runs), and, for information, on our own modules (the loop alone)
    and with HF's stock assisted settings. Tokens/s ours over theirs; outputs compared token for token."""
    log("assisted: loading the pair as transformers does (the reference)")
    stock = stock_modules(pair)
    kinds = ["ours", "hf", "hfd"] + (["stock"] if stock is not None else [])
    if stock is not None:
        hf_generate(pair, pair.codec.encode("def add(a, b):"), 4, assistant_gamma=2, modules=stock)  # warm-up
    wall = dict.fromkeys(kinds, 0.0)
    count = dict.fromkeys(kinds, 0)
    same = dict.fromkeys(kinds, True)
    for i, (_, name, prompt) in enumerate(_prompts(suite, limit)):
        ids = pair.codec.encode(prompt)
        log(f"assisted: {name}")
        res: dict[str, tuple[list[int], float]] = {}
        for who in kinds if i % 2 == 0 else kinds[::-1]:
            if who == "ours":
                s = _ours(pair, "draft", ids, cfg)
                res[who] = (s.output_ids, s.wall_s)
            else:
                mods = stock if who == "stock" else None
                res[who] = hf_generate(pair, ids, cfg.max_new_tokens, cfg.gamma, hf_defaults=who == "hfd", modules=mods)
        for who in kinds:
            wall[who] += res[who][1]
            count[who] += len(res[who][0])
            same[who] &= res[who][0] == res["ours"][0]
    del stock
    tps = {who: count[who] / wall[who] if wall[who] else 0.0 for who in kinds}
    rows = []
    labels = {
        "stock": (
            "3 vs HF assisted",
            f"HF assisted on the pair as transformers loads it (gamma {cfg.gamma}, constant)",
        ),
        "hf": ("3 (info) loop only", f"HF assisted on our own modules and kernels (gamma {cfg.gamma}, constant)"),
        "hfd": ("3 (info) HF settings", "HF assisted on our modules, HF's stock settings (20 tokens, confidence 0.4)"),
    }
    for who in ("stock", "hf", "hfd"):
        if who in tps:
            target, what = labels[who]
            rows.append(
                TargetRow(
                    target,
                    f"draft tokens/s / {what}",
                    tps["ours"] / tps[who],
                    ">=",
                    1.1,
                    f"{tps['ours']:.2f} vs {tps[who]:.2f} tokens/s",
                    same[who],
                )
            )
    return rows


WHOLE_ANSWERS = 256  # new tokens that let every edit-suite answer finish (the longest measured 160)


def check_speedups(pair: ModelPair, cfg: GenConfig, limit: int, ngram_gamma: int, log: Log) -> list[TargetRow]:
    """Draft on the code suite (>= 1.5x) and prompt lookup on the edit suite (>= 2x), each against plain; prompt
    lookup also on whole edit answers (up to WHOLE_ANSWERS tokens), whose copying runs past the first 64 tokens."""
    from specviz.bench.suite import aggregate, bench_rows

    rows = []
    runs = [
        ("code", "draft", 1.5, cfg.gamma, cfg.max_new_tokens),
        ("edit", "ngram", 2.0, ngram_gamma, cfg.max_new_tokens),
        ("edit", "ngram", 2.0, ngram_gamma, WHOLE_ANSWERS),
    ]
    for suite, strategy, bound, gamma, tokens in runs:
        log(f"speedups: {strategy} on {suite}, {tokens} tokens")
        c = cfg.with_(gamma=gamma, max_new_tokens=tokens)
        per_prompt = bench_rows(pair, _prompts(suite, limit), [strategy], c)
        agg = next(r for r in aggregate(per_prompt, "suite") if r["strategy"] == strategy)
        whole = " (whole answers)" if tokens == WHOLE_ANSWERS else ""
        rows.append(
            TargetRow(
                f"4 {strategy} speedup{whole}",
                f"plain time / {strategy} time on suite {suite} (gamma {gamma}, up to {tokens} tokens)",
                agg["speedup"],
                ">=",
                bound,
                f"{agg['tokens']} tokens, {agg['tokens_per_s']:.2f} tokens/s, {agg['tokens_per_step']:.2f} tokens "
                f"per pass, acceptance {agg['acceptance']:.0%}",
                agg["identical"],
            )
        )
    return rows


def _probe(preset: str) -> None:
    """Run in a child process: load the pair, generate 8 tokens, print load time and memory as one JSON line."""
    import resource

    t0 = time.perf_counter()
    pair = load_pair(preset)
    load_s = time.perf_counter() - t0
    ready_at = time.time()  # wall clock: the parent compares it with when it started this process
    rss_loaded, file_loaded = _rss_gb(), _rss_gb("RssFile")
    _ours(
        pair,
        "draft" if pair.draft is not None else "plain",
        pair.codec.encode("def add(a, b):"),
        GenConfig(max_new_tokens=8),
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(
        json.dumps(
            {
                "load_s": load_s,
                "ready_at": ready_at,
                "rss_loaded_gb": rss_loaded,
                "rss_after_gen_gb": _rss_gb(),
                "peak_gb": peak,
                "file_loaded_gb": file_loaded,
                # a cold start's cache build, per model and stage (assemble, metadata, tokenizer, dequantise, write)
                "builds": {r: pair.info[r].get("build_stages") for r in ("target", "draft") if r in pair.info},
            }
        )
    )


def _rss_gb(field: str = "VmRSS") -> float:
    """Resident GiB from /proc/self/status: VmRSS (all), RssAnon (process memory), RssFile (mapped file pages)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kb / 2**20


def _child(preset: str, env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """(probe's JSON, seconds from starting the process to a ready pair: interpreter, imports and load_pair; the
    short generation after it, there for peak memory, is not counted)."""
    t0 = time.time()
    code = f"from specviz.targets import _probe; _probe({preset!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False, cwd=PACKAGE_DIR.parent)
    if out.returncode != 0:
        raise RuntimeError(f"start-up probe failed: {out.stderr.strip()[-800:]}")
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    return probe, probe["ready_at"] - t0


def check_startup(preset: str, cold: bool, log: Log) -> list[TargetRow]:
    """Warm start (from the cache) and, with cold=True, a cold start into an empty cache (assemble, verify,
    dequantise, write, build the kernel), each in a fresh Python process; peak memory of the loaded pair after a short
    generation. After a cold start the warm start reads the cache it just built, as a user's second start would."""
    with tempfile.TemporaryDirectory(prefix="specviz-cold-") as tmp:
        env = {**os.environ}
        rows = []
        if cold:
            log("startup: cold start into an empty cache (minutes)")
            # nothing cached: neither the models nor our compiled kernel
            env.update(SPECVIZ_CACHE=tmp, TORCH_EXTENSIONS_DIR=f"{tmp}/kernels")
            probe, wall = _child(preset, env)
            rows.append(
                TargetRow(
                    "6 cold start",
                    "seconds to a ready pair, empty cache",
                    wall,
                    "<=",
                    150,
                    f"load_pair {probe['load_s']:.1f} s; cache builds: {_stages(probe.get('builds', {}))}",
                )
            )
        log("startup: warm start")
        probe, wall = _child(preset, env)
    where = "the cache the cold start built" if cold else "cached"
    rows.append(
        TargetRow(
            "6 warm start", f"seconds to a ready pair, {where}", wall, "<=", 20, f"load_pair {probe['load_s']:.1f} s"
        )
    )
    rows.append(
        TargetRow(
            "6 memory",
            "peak resident GiB, pair loaded + one generation",
            probe["peak_gb"],
            "<=",
            11,
            f"resident after load {probe['rss_loaded_gb']:.2f} GiB (of it mapped file pages "
            f"{probe['file_loaded_gb']:.2f}), after generating {probe['rss_after_gen_gb']:.2f} GiB",
        )
    )
    return rows


def _stages(builds: dict[str, Any]) -> str:
    """'target 40 s (assemble 5, dequantise 20, ...), draft ...' from a cold probe's build stages."""
    parts = []
    for role, stages in builds.items():
        if stages:
            each = ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in stages.items())
            parts.append(f"{role} {sum(stages.values()):.0f} s ({each})")
    return "; ".join(parts) or "none"


def check_gpu(report: dict[str, Any]) -> list[TargetRow]:
    """The GPU rows from gpu_bench.gpu_report(): targets 5 (plain ms per token, against HF's static cache), 1 and 2
    on the GPU, and HF assisted generation there; random weights of the embedded pair's shapes."""
    rows: list[TargetRow] = []
    where = f"{report['device']}, random weights of the pair's shapes, {report.get('load', {}).get('dtype')}"
    plain = report.get("plain", {})
    if "ms_per_token" not in plain:
        return [TargetRow("5 GPU plain decoding", f"not measured: {plain}", float("nan"), "<=", 3.0, where)]
    ours = plain["ms_per_token"]
    rows.append(TargetRow("5 GPU plain decoding", "specviz plain, ms per token", ours, "<=", 3.0, where))
    hf_static = [(k, report[k]) for k in ("hf_static_compiled", "hf_static") if "ms_per_token" in report.get(k, {})]
    if hf_static:
        name, best = min(hf_static, key=lambda kv: kv[1]["ms_per_token"])
        rows.append(
            TargetRow(
                "5 GPU vs HF static cache",
                f"specviz plain / HF generate with a static cache{' compiled' if 'compiled' in name else ''} (ms per "
                "token, the faster HF variant)",
                ours / best["ms_per_token"],
                "<",
                1.0,
                f"{ours:.2f} vs {best['ms_per_token']:.2f} ms per token; same tokens as HF for the first "
                f"{best['agree_first']} of {report['setup']['tokens']} (bf16, two implementations)",
            )
        )
    if "total_s" in report.get("hf_dynamic", {}):
        hf = report["hf_dynamic"]
        rows.append(
            TargetRow(
                "1 fair baseline (GPU)",
                "specviz plain / HF generate (time)",
                plain["total_s"] / hf["total_s"],
                "<=",
                1.05,
                f"{plain['total_s']:.3f} s vs {hf['total_s']:.3f} s, {report['setup']['tokens']} tokens; same tokens "
                f"as HF for the first {hf['agree_first']} (bf16, two implementations)",
            )
        )
    if "ratio" in report.get("overhead", {}):
        o = report["overhead"]
        rows.append(
            TargetRow(
                "2 instrumentation (GPU)",
                "draft events on / events off (time)",
                o["ratio"],
                "<=",
                1.05,
                f"{o['on_s']:.3f} s vs {o['off_s']:.3f} s",
                o["identical"],
            )
        )
    if "ratio" in report.get("assisted", {}):
        a = report["assisted"]
        rows.append(
            TargetRow(
                "3 vs HF assisted (GPU)",
                "HF assisted time / specviz draft time (random weights: nothing accepted on either side)",
                a["ratio"],
                ">=",
                1.1,
                f"{a['hf_assisted_s']:.3f} s vs {a['ours_draft_s']:.3f} s, {a['tokens']} tokens",
            )
        )
    st = {k: v for k, v in report.get("strategies", {}).items() if isinstance(v, dict) and "identical" in v}
    if st:
        differ = [k for k, v in st.items() if not v["identical"]]
        rows.append(
            TargetRow(
                "lossless (GPU)",
                "strategies whose greedy output is plain's, of those run (bf16)",
                (len(st) - len(differ)) / len(st),
                ">=",
                1.0,
                f"{len(st) - len(differ)} of {len(st)}" + (f"; differ: {', '.join(differ)}" if differ else ""),
            )
        )
    return rows


def format_gpu_details(report: dict[str, Any]) -> str:
    """Pass costs and each strategy's measured time per step on the GPU (random weights), as markdown."""
    lines = [f"GPU details: {report['device']}, torch {report['torch']}, transformers {report['transformers']}"]
    p = report.get("passes", {})
    if "target_1_ms" in p:
        lines += [
            "",
            "| pass | ms |",
            "|---|---|",
            *(f"| {k.removesuffix('_ms')} | {v:.3f} |" for k, v in p.items() if k.endswith("_ms")),
            f"| c (draft / target, one token) | {p['c_draft']:.2f} |",
            f"| c (layer skip / target) | {p['c_layerskip']:.2f} |",
        ]
    st = report.get("strategies", {})
    if "error" in st or "skipped" in st:
        lines.append(f"\nstrategies: {st}")
    elif st:
        lines += [
            "",
            "| strategy | ms per step | tokens per step | speedup (random weights) | identical |",
            "|---|---|---|---|---|",
        ]
        for name, r in st.items():
            if "error" in r:
                lines.append(f"| {name} | error: {r['error']} | | | |")
            else:
                lines.append(
                    f"| {name} | {r['ms_per_step']:.2f} | {r['tokens_per_step']:.2f} | "
                    f"{r['speedup_random_weights']:.2f} | {r['identical']} |"
                )
    names = {
        "plain": f"specviz ({report.get('load', {}).get('linear')})",
        "graphs_only": "specviz, CUDA graphs without torch.compile",
        "unpadded": "specviz, graphs without compile, passes not padded",
        "hf_dynamic": "HF generate, dynamic cache",
        "hf_static": "HF generate, static cache",
        "hf_static_compiled": "HF generate, static cache, compiled",
    }
    lines += ["", "| plain decoding | ms per token | one-token pass, ms | first call, s |", "|---|---|---|---|"]
    for k, label in names.items():
        r = report.get(k)
        if r is None:
            continue
        if "ms_per_token" not in r:
            lines.append(f"| {label} | {r} | | |")
            continue
        pass_ms = r.get("pass_1_ms", p.get("target_1_ms") if k == "plain" else None)
        first = r.get("first_call_s")
        lines.append(
            f"| {label} | {r['ms_per_token']:.2f} | {'' if pass_ms is None else f'{pass_ms:.2f}'} | "
            f"{'' if first is None else f'{first:.1f}'} |"
        )
    return "\n".join(lines)


def format_targets(rows: Sequence[TargetRow]) -> str:
    """A markdown table: target, comparison, ratio, bound, holds, measured sides."""
    head = "| target | comparison | measured | bound | holds | detail |\n|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        same = "" if r.identical is None else f"; identical output: {r.identical}"
        lines.append(
            f"| {r.target} | {r.comparison} | {r.ratio:.3g} | {r.op} {r.bound:g} | {'yes' if r.holds else 'NO'} | "
            f"{r.measured}{same} |"
        )
    return "\n".join(lines)
