"""The start-up target: warm and cold starts to a ready pair, each in a fresh Python process, with peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from specviz.backends.cache import cache_bytes
from specviz.backends.loading import load_pair
from specviz.bench.targets import Log, TargetRow, run_strategy
from specviz.core.config import GenConfig
from specviz.core.presets import PACKAGE_DIR


def probe(preset: str) -> None:
    """Run in a child process: load the pair, generate 8 tokens, print load time and memory as one JSON line."""
    import resource

    t0 = time.perf_counter()
    pair = load_pair(preset)
    load_s = time.perf_counter() - t0
    ready_at = time.time()  # wall clock: the parent compares it with when it started this process
    rss_loaded, file_loaded = _rss_gb(), _rss_gb("RssFile")
    run_strategy(
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
                # bytes on disk of the cache folders the pair was loaded from
                "cache_bytes": sum(
                    cache_bytes(Path(pair.info[r]["path"]))
                    for r in ("target", "draft")
                    if pair.info.get(r, {}).get("path")
                ),
                "linear": [pair.info.get("linear"), pair.info.get("draft_linear")],
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
    code = f"from specviz.bench.startup import probe; probe({preset!r})"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False, cwd=PACKAGE_DIR.parent
    )
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
                    30,
                    f"load_pair {probe['load_s']:.1f} s; cache builds: {_stages(probe.get('builds', {}))}",
                )
            )
        log("startup: warm start")
        probe, wall = _child(preset, env)
    where = "the cache the cold start built" if cold else "cached"
    rows.append(
        TargetRow(
            "6 warm start",
            f"seconds to a ready pair, {where}",
            wall,
            "<=",
            5,
            f"load_pair {probe['load_s']:.1f} s; {' / '.join(str(x) for x in probe.get('linear', []))}",
        )
    )
    rows.append(
        TargetRow(
            "6 memory",
            "peak resident GiB, pair loaded + one generation",
            probe["peak_gb"],
            "<=",
            2.5,
            f"resident after load {probe['rss_loaded_gb']:.2f} GiB (of it mapped file pages "
            f"{probe['file_loaded_gb']:.2f}), after generating {probe['rss_after_gen_gb']:.2f} GiB",
        )
    )
    rows.append(
        TargetRow(
            "6 cache on disk",
            "GB on disk of the pair's cache folders",
            probe.get("cache_bytes", 0) / 1e9,
            "<=",
            2.0,
            f"{probe.get('cache_bytes', 0):,} bytes",
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
