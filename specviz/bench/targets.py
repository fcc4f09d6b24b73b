"""The speed targets as benchmarks: each measures one ratio in one run (fair baseline against Hugging Face generate,
instrumentation overhead, draft model against HF assisted generation, CPU speedups, the quantised kernel against the
float32 path, start-up and memory) and says whether it holds. Never a timed test: `python -m specviz bench --targets
...` prints the table."""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from specviz.backends.gguf_quant import is_quant
from specviz.backends.loading import ModelPair, float32_twin, int8_twin, load_pair
from specviz.bench.suite import aggregate, bench_rows
from specviz.core.config import GenConfig
from specviz.core.engine import run
from specviz.core.events import RunSummary
from specviz.core.presets import suite_prompts
from specviz.proposers import build_proposer

TARGETS = ("baseline", "overhead", "attention", "assisted", "speedups", "quant", "int8", "llamacpp", "startup", "gpu")
INT8_DEFAULT_GAIN = 1.5  # what the int8 path's plain decoding must gain over the exact path to earn the default
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
    """The targets a --targets value names; 'all' is every target this machine can measure (gpu needs CUDA,
    llamacpp the optional llama_cpp package)."""
    if arg == "all":
        can = {"gpu": torch.cuda.is_available(), "llamacpp": importlib.util.find_spec("llama_cpp") is not None}
        return [t for t in TARGETS if can.get(t, True)]
    return [t.strip() for t in arg.split(",") if t.strip()]


def prompts_of(suite: str, limit: int) -> list[tuple[str, str, str]]:
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


def run_strategy(pair: ModelPair, strategy: str, ids: list[int], cfg: GenConfig, instrument: bool = True) -> RunSummary:
    """One run of `strategy` on the pair, to its summary."""
    kw = dict(eos_ids=pair.codec.eos_ids, piece=pair.codec.piece, instrument=instrument)
    return run(pair.target, build_proposer(strategy, pair, cfg), ids, cfg, **kw).run()


def warm_up(pair: ModelPair, ids: list[int]) -> None:
    """One short run of each path first: oneDNN builds its kernels on first use, which no side should pay."""
    cfg = GenConfig(max_new_tokens=4)
    run_strategy(pair, "plain", ids, cfg)
    if pair.draft is not None:
        run_strategy(pair, "draft", ids, cfg)
        hf_generate(pair, ids, 4, assistant_gamma=2)
    hf_generate(pair, ids, 4)


def check_baseline(pair: ModelPair, cfg: GenConfig, suite: str, limit: int, log: Log) -> TargetRow:
    """Our plain decoding against HF generate, same prompts and token counts, alternating which goes first."""
    ours_s = hf_s = 0.0
    same, tokens = True, 0
    for i, (_, name, prompt) in enumerate(prompts_of(suite, limit)):
        ids = pair.codec.encode(prompt)
        log(f"baseline: {name}")
        for first_ours in (True, False) if i % 2 == 0 else (False, True):
            if first_ours:
                s = run_strategy(pair, "plain", ids, cfg)
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
    for i, (_, name, prompt) in enumerate(prompts_of(suite, limit)):
        ids = pair.codec.encode(prompt)
        log(f"overhead: {name}")
        runs = {}
        for instrument in (True, False) if i % 2 == 0 else (False, True):
            runs[instrument] = run_strategy(pair, strategy, ids, cfg, instrument=instrument)
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


def check_attention(pair: ModelPair, cfg: GenConfig, suite: str, limit: int, log: Log) -> list[TargetRow]:
    """What exactness costs: plain decoding and the draft strategy with exact per-row attention (a row's result
    independent of the pass, specviz/backends/attention.py) against the model's own SDPA with a dense mask
    (SPECVIZ_EXACT_ATTENTION=0), runs interleaved."""
    import os

    rows = []
    for strategy in ("plain", "draft"):
        exact = dense = 0.0
        same = True
        for i, (_, name, prompt) in enumerate(prompts_of(suite, limit)):
            ids = pair.codec.encode(prompt)
            log(f"attention: {strategy} on {name}")
            out = {}
            for mode in ("1", "0") if i % 2 == 0 else ("0", "1"):
                os.environ["SPECVIZ_EXACT_ATTENTION"] = mode
                try:
                    out[mode] = run_strategy(pair, strategy, ids, cfg, instrument=False)
                finally:
                    os.environ.pop("SPECVIZ_EXACT_ATTENTION", None)
            exact, dense = exact + out["1"].wall_s, dense + out["0"].wall_s
            same &= out["1"].output_ids == out["0"].output_ids
        rows.append(
            TargetRow(
                "2b exact attention",
                f"{strategy}: exact per-row attention / SDPA with a dense mask (time)",
                exact / dense,
                "<=",
                1.10,
                f"{exact:.2f} s vs {dense:.2f} s",
                same,
            )
        )
    return rows


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
    for i, (_, name, prompt) in enumerate(prompts_of(suite, limit)):
        ids = pair.codec.encode(prompt)
        log(f"assisted: {name}")
        res: dict[str, tuple[list[int], float]] = {}
        for who in kinds if i % 2 == 0 else kinds[::-1]:
            if who == "ours":
                s = run_strategy(pair, "draft", ids, cfg)
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
    rows = []
    runs = [
        ("code", "draft", 1.5, cfg.gamma, cfg.max_new_tokens),
        ("edit", "ngram", 2.0, ngram_gamma, cfg.max_new_tokens),
        ("edit", "ngram", 2.0, ngram_gamma, WHOLE_ANSWERS),
    ]
    for suite, strategy, bound, gamma, tokens in runs:
        log(f"speedups: {strategy} on {suite}, {tokens} tokens")
        c = cfg.with_(gamma=gamma, max_new_tokens=tokens)
        per_prompt = bench_rows(pair, prompts_of(suite, limit), [strategy], c)
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


@dataclass
class SideBySide:
    """Plain decoding of the same prompts on two pairs in one run, each prompt by both in turn (alternating which goes
    first): per side, wall seconds, the prompts' passes' seconds (part of wall) and tokens."""

    names: tuple[str, str]
    wall: dict[str, float] = dataclasses.field(default_factory=dict)
    prefill: dict[str, float] = dataclasses.field(default_factory=dict)
    tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    prompts: int = 0
    prompt_tokens: int = 0

    def run(self, pairs: dict[str, ModelPair], ids: list[int], cfg: GenConfig) -> dict[str, list[int]]:
        """Both sides on one prompt; -> each side's output ids."""
        out = {}
        for side in self.names if self.prompts % 2 == 0 else self.names[::-1]:
            s = run_strategy(pairs[side], "plain", ids, cfg, instrument=False)
            self.wall[side] = self.wall.get(side, 0.0) + s.wall_s
            self.prefill[side] = self.prefill.get(side, 0.0) + s.prefill_ms / 1e3
            self.tokens[side] = self.tokens.get(side, 0) + s.new_tokens
            out[side] = s.output_ids
        self.prompts += 1
        self.prompt_tokens += len(ids)
        return out

    def tokens_per_s(self, side: str) -> float:
        """With the prompts' passes."""
        return self.tokens[side] / self.wall[side] if self.wall.get(side) else 0.0

    def decoding(self, side: str) -> float:
        """Decoding alone: the passes after each prompt's (its first token comes with the prompt's pass)."""
        busy = self.wall.get(side, 0.0) - self.prefill.get(side, 0.0)
        return (self.tokens[side] - self.prompts) / busy if busy > 0 else 0.0

    def prefill_rate(self, side: str) -> float:
        """Prompt tokens per second of the prompts' passes."""
        return self.prompt_tokens / self.prefill[side] if self.prefill.get(side) else 0.0

    def detail(self) -> str:
        a, b = self.names
        return (
            f"decoding {self.decoding(a):.2f} vs {self.decoding(b):.2f} tokens/s; with the prompts' passes "
            f"{self.tokens_per_s(a):.2f} vs {self.tokens_per_s(b):.2f}; prefill {self.prefill_rate(a):.0f} vs "
            f"{self.prefill_rate(b):.0f} prompt tokens/s"
        )


def check_quant(pair: ModelPair, cfg: GenConfig, suite: str, limit: int, log: Log) -> list[TargetRow]:
    """The quantised kernel against the float32 path on the same target, in one run: plain decoding's tokens/s with
    the prompts interleaved (alternating which goes first) and the output token for token, and the logits of each
    prompt's prefill bit for bit. The float32 side is the target rebuilt as SPECVIZ_QUANT=0 runs it (every weight
    dequantised, the float32 packed kernel; about 7 GB more for the embedded target)."""
    if not is_quant(pair.target.model):
        log(f"quant: skipped, the target runs {pair.info.get('linear', 'another kernel')}, not the quantised kernel")
        return []
    log("quant: building the float32 path's target from the same GGUF")
    f32 = dataclasses.replace(pair, target=float32_twin(pair))
    prompts = prompts_of(suite, limit)
    run_strategy(f32, "plain", pair.codec.encode(prompts[0][2]), GenConfig(max_new_tokens=4))  # its warm-up
    sides = SideBySide(("quant", "f32"))
    same, differing, values, worst = True, 0, 0, 0.0
    for _, name, prompt in prompts:
        ids = pair.codec.encode(prompt)
        log(f"quant: {name}")
        out = sides.run({"quant": pair, "f32": f32}, ids, cfg)
        same &= out["quant"] == out["f32"]
        logits = []
        for lm in (pair.target, f32.target):
            lm.reset()
            logits.append(lm.forward(ids))
        differing += int((logits[0] != logits[1]).sum())
        values += logits[0].numel()
        worst = max(worst, float((logits[0] - logits[1]).abs().max()))
    del f32
    return [
        TargetRow(
            "7 quantised kernel",
            f"plain decoding tokens/s, quantised kernel / float32 path ({pair.info.get('linear', '?')})",
            sides.decoding("quant") / sides.decoding("f32") if sides.decoding("f32") else 0.0,
            ">=",
            3.0,
            f"{sides.detail()}; {sides.tokens['quant']} tokens",
            same,
        ),
        TargetRow(
            "7 same numbers",
            "prefill logits that differ from the float32 path's",
            differing,
            "<=",
            0,
            f"{differing} of {values} values, largest difference {worst:g}",
        ),
    ]


def check_int8(pair: ModelPair, cfg: GenConfig, suite: str, limit: int, log: Log) -> list[TargetRow]:
    """The int8 path against the exact quantised kernel, in one run: plain decoding and prefill tokens/s (prompts
    interleaved, alternating which goes first), how far its prefill logits and greedy tokens are from the exact
    path's, and the draft model's speedup over plain on it (its greedy output identical to its own plain decoding)."""
    if not is_quant(pair.target.model):
        log(f"int8: skipped, the target runs {pair.info.get('linear', 'another kernel')}, not the quantised kernel")
        return []
    log("int8: building the int8 path's pair from the same GGUFs")
    on8 = int8_twin(pair)
    prompts = prompts_of(suite, limit)
    warm_up(on8, pair.codec.encode(prompts[0][2])[:64])
    sides = SideBySide(("int8", "exact"))
    same_tokens, compared, agree, positions, rel = 0, 0, 0, 0, 0.0
    spec_wall, spec_same, spec_tokens, passes = 0.0, True, 0, 0
    for _, name, prompt in prompts:
        ids = pair.codec.encode(prompt)
        log(f"int8: {name}")
        out = sides.run({"int8": on8, "exact": pair}, ids, cfg)
        a, b = out["int8"], out["exact"]
        same_tokens += next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        compared += len(b)
        logits = []
        for lm in (pair.target, on8.target):
            lm.reset()
            logits.append(lm.forward(ids))
        agree += int((logits[0].argmax(-1) == logits[1].argmax(-1)).sum())
        positions += len(ids)
        rel = max(rel, float((logits[1] - logits[0]).norm() / logits[0].norm()))
        spec = run_strategy(on8, "draft", ids, cfg, instrument=False)
        spec_wall += spec.wall_s
        spec_same &= spec.output_ids == out["int8"]
        spec_tokens, passes = spec_tokens + spec.new_tokens, passes + spec.steps
    del on8
    speedup = sides.wall["int8"] / spec_wall if spec_wall else 0.0
    return [
        TargetRow(
            "7 int8 path",
            f"plain decoding tokens/s, int8 path / exact quantised kernel (default at >= {INT8_DEFAULT_GAIN:g})",
            sides.decoding("int8") / sides.decoding("exact") if sides.decoding("exact") else 0.0,
            ">=",
            INT8_DEFAULT_GAIN,
            sides.detail(),
        ),
        TargetRow(
            "7 int8 numbers",
            "prefill positions whose top token is the exact path's",
            agree / positions if positions else 0.0,
            ">=",
            0.99,
            f"{agree} of {positions}; logits' relative difference up to {rel:.3%}; greedy tokens the same as the "
            f"exact path's for the first {same_tokens} of {compared} (summed over prompts)",
        ),
        TargetRow(
            "4 draft speedup (int8 path)",
            f"int8 plain time / int8 draft time on suite {suite} (gamma {cfg.gamma})",
            speedup,
            ">=",
            1.5,
            f"{spec_tokens} tokens at {spec_tokens / spec_wall if spec_wall else 0:.2f} tokens/s, "
            f"{spec_tokens / passes if passes else 0:.2f} tokens per pass; plain {sides.tokens_per_s('int8'):.2f} tokens/s",
            spec_same,
        ),
    ]


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
