"""`python -m specviz bench --targets gpu`: the GPU fast path measured on random weights of the embedded pair's exact
shapes (preset qwen-coder-1.5b-shapes; the real weights are not on the GPU machine): plain decoding against Hugging Face
generate (dynamic cache, static cache, static cache compiled), the cost of each pass, instrumentation, and every
strategy's time per step. Random weights cost what the real ones cost per pass but guess nothing, so speedups on real
text are predicted from these times and tokens per pass measured on CPU with the real pair, and labelled so."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from specviz.backends.loading import ModelPair, load_pair
from specviz.bench.targets import TargetRow
from specviz.core.config import ConfigError, GenConfig
from specviz.core.engine import run
from specviz.proposers import STRATEGIES, build_proposer

PRESET = "qwen-coder-1.5b-shapes"
Log = Callable[[str], None]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], reps: int) -> tuple[float, Any]:
    """Median seconds of `reps` calls (after one untimed call), and the last result."""
    out = fn()
    times = []
    for _ in range(reps):
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _hf(model: Any, ids: list[int], n: int, **extra: Any) -> list[int]:
    x = torch.tensor([ids], device=model.device)
    with torch.inference_mode():
        out = model.generate(
            x,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            attention_mask=torch.ones_like(x),
            pad_token_id=0,
            top_p=None,
            top_k=None,
            temperature=None,
            **extra,
        )
    return out[0, len(ids) :].tolist()


def _pass_ms(lm: Any, ids: list[int], t: int, positions: int, reps: int) -> float:
    """ms for one pass of t tokens after the prompt `ids` (the run reserved for `positions`): median of reps x 20."""
    lm.reset()
    lm.reserve(positions)
    lm.forward(ids, keep=1)
    base = lm.length

    def twenty() -> None:
        for _ in range(20):
            lm.crop(base)
            lm.forward(ids[:t])

    s, _ = _timed(twenty, reps)
    return s / 20 * 1e3


def _per_token(t_n: float, t_1: float, n: int) -> float:
    """ms per decoded token: (time for n tokens - time for 1 token) / (n - 1), so prefill drops out."""
    return (t_n - t_1) / (n - 1) * 1e3


def gpu_report(
    tokens: int = 128,
    prompt_len: int = 256,
    gamma: int = 4,
    reps: int = 2,
    log: Log = print,
    budget_s: float = 300,
    preset: str = PRESET,
    device: str = "cuda",
    sections: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every GPU measurement, as a dict (sections that fail record their error and the rest go on; `sections`: only
    these). preset and device exist to try this code on a CPU with a tiny preset; its numbers mean nothing there."""
    from specviz.backends.static_lm import StaticLM

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("target gpu needs a CUDA device, and torch sees none here")
    t_start = time.perf_counter()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    rep: dict[str, Any] = {"device": name, "preset": preset, "torch": torch.__version__}
    import transformers

    rep["transformers"] = transformers.__version__
    pair = load_pair(preset, device=device, fast=device == "cuda")
    if not isinstance(pair.target, StaticLM):  # trying this on a CPU
        pair.target = StaticLM(pair.target.model, "target")
        pair.draft = StaticLM(pair.draft.model, "draft") if pair.draft is not None else None
    rep["load"] = {k: pair.info.get(k) for k in ("linear", "load_s", "dtype")}  # load_s includes compiling
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(32000, pair.target.vocab_size), (prompt_len,), generator=g).tolist()
    cfg = GenConfig(gamma=gamma, max_new_tokens=tokens)
    model = pair.target.model
    rep["setup"] = {"tokens": tokens, "prompt_len": prompt_len, "gamma": gamma, "reps": reps}

    def section(name: str, fn: Callable[[], Any]) -> None:
        if sections is not None and name not in sections:
            return
        if time.perf_counter() - t_start > budget_s:
            rep[name] = {"skipped": f"over the {budget_s:.0f} s budget"}
            return
        t0 = time.perf_counter()
        try:
            rep[name] = fn()
        except Exception as e:  # one failing section must not lose the others' results
            rep[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        log(f"gpu: {name} ({time.perf_counter() - t0:.1f} s): {rep[name]}")

    proposers: dict[str, Any] = {}  # one per strategy: a layer-skip draft's graphs are captured once, not per run

    def ours(strategy: str, n: int, instrument: bool = True) -> Any:
        c = cfg.with_(max_new_tokens=n)
        if strategy not in proposers:
            proposers[strategy] = build_proposer(strategy, pair, c)
        return run(pair.target, proposers[strategy], ids, c, instrument=instrument).run()

    def plain() -> dict[str, Any]:
        t_n, s = _timed(lambda: ours("plain", tokens), reps)
        t_1, _ = _timed(lambda: ours("plain", 1), reps)
        rep["_plain_ids"] = s.output_ids
        return {"total_s": t_n, "ms_per_token": _per_token(t_n, t_1, tokens), "prefill_ms": s.prefill_ms}

    def hf(**extra: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        first = _hf(model, ids, tokens, **extra)
        first_s = time.perf_counter() - t0
        t_n, out = _timed(lambda: _hf(model, ids, tokens, **extra), reps)
        t_1, _ = _timed(lambda: _hf(model, ids, 1, **extra), reps)
        return {
            "total_s": t_n,
            "ms_per_token": _per_token(t_n, t_1, tokens),
            "first_call_s": first_s,
            "same_as_ours": out == rep.get("_plain_ids"),
            "agree_first": _agree(out, rep.get("_plain_ids", [])),
            "runs_equal": out == first,
        }

    def passes() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, lm in (
            ("target", pair.target),
            ("draft", pair.draft),
            ("layerskip", pair.target.with_layers(_default_kept(pair))),
        ):
            for t in (1, 5, 9, 16) if name == "target" else (1,):
                out[f"{name}_{t}_ms"] = _pass_ms(lm, ids, t, prompt_len + tokens, reps)
        out["c_draft"] = out["draft_1_ms"] / out["target_1_ms"]
        out["c_layerskip"] = out["layerskip_1_ms"] / out["target_1_ms"]
        out["bytes_per_pass_gb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
        return out

    def strategies() -> dict[str, Any]:
        _medusa_heads(pair)
        out = {}
        plain_s = rep["plain"]["total_s"]
        for name in STRATEGIES:
            if name == "plain":
                continue
            try:
                t, s = _timed(lambda name=name: ours(name, tokens), max(1, reps - 1))
                out[name] = {
                    "total_s": t,
                    "ms_per_step": t * 1e3 / s.steps,
                    "tokens_per_step": s.tokens_per_step,
                    "acceptance": s.acceptance_rate,
                    "speedup_random_weights": plain_s / t,
                    "identical": s.output_ids == rep["_plain_ids"],
                }
            except Exception as e:
                out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            log(f"gpu:   {name}: {out[name]}")
        return out

    def overhead() -> dict[str, Any]:
        on, s_on = _timed(lambda: ours("draft", tokens, True), reps)
        off, s_off = _timed(lambda: ours("draft", tokens, False), reps)
        return {"on_s": on, "off_s": off, "ratio": on / off, "identical": s_on.output_ids == s_off.output_ids}

    def assisted() -> dict[str, Any]:
        n = 32
        draft = pair.draft.model
        gc = draft.generation_config
        gc.num_assistant_tokens, gc.num_assistant_tokens_schedule, gc.assistant_confidence_threshold = (
            gamma,
            "constant",
            0.0,
        )
        t_hf, _ = _timed(lambda: _hf(model, ids, n, assistant_model=draft), 1)
        t_ours, _ = _timed(lambda: ours("draft", n), 1)
        return {"tokens": n, "hf_assisted_s": t_hf, "ours_draft_s": t_ours, "ratio": t_hf / t_ours}

    def variant(name: str, **kw: Any) -> dict[str, Any]:
        """Plain decoding and a one-token pass on another build of our pass (graphs alone, or no padding)."""
        lm = StaticLM(model, name, **kw)
        c = cfg.with_(max_new_tokens=tokens)
        t_n, s = _timed(lambda: run(lm, None, ids, c).run(), reps)
        t_1, _ = _timed(lambda: run(lm, None, ids, c.with_(max_new_tokens=1)).run(), reps)
        return {
            "total_s": t_n,
            "ms_per_token": _per_token(t_n, t_1, tokens),
            "pass_1_ms": _pass_ms(lm, ids, 1, prompt_len + tokens, reps),
            "same_as_ours": s.output_ids == rep["_plain_ids"],
        }

    section("plain", plain)
    section("hf_dynamic", hf)
    section("hf_static_compiled", lambda: hf(cache_implementation="static"))
    section("passes", passes)
    section("strategies", strategies)
    section("overhead", overhead)
    section("graphs_only", lambda: variant("graphs only", use_compile=False))
    section("unpadded", lambda: variant("unpadded", pad=1, use_compile=False))
    section("assisted", assisted)
    section("hf_static", lambda: hf(cache_implementation="static", disable_compile=True))
    rep.pop("_plain_ids", None)
    rep["wall_s"] = time.perf_counter() - t_start
    return rep


def _agree(a: list[int], b: list[int]) -> int:
    """How many leading tokens two outputs share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _default_kept(pair: ModelPair) -> list[int]:
    from specviz.proposers.layer_skip import default_skip, kept_layers

    n = len(pair.target.model.model.layers)
    return kept_layers(n, None, default_skip(n))


def _medusa_heads(pair: ModelPair) -> None:
    """The trained heads of the embedded pair (same hidden size and vocabulary) on the random target: they guess
    nothing useful here, but cost what they cost."""
    from specviz.core.presets import PACKAGE_DIR, model_preset
    from specviz.medusa import heads_for, lm_head_rows
    from specviz.medusa.heads import load_heads

    if pair.info.get("heads_spec"):  # a preset with heads of its own (trying this on a CPU)
        heads_for(pair)
        return
    spec = model_preset("qwen-coder-1.5b")["heads"]
    cfg = pair.target.model.config
    heads = load_heads(PACKAGE_DIR / spec["file"], cfg.hidden_size, cfg.vocab_size, None, spec.get("sha256"))
    pair.heads = heads.bind(lm_head_rows(pair.target.model)).to(pair.device)


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
