"""`python -m specviz.bench.kernel`: milliseconds for one pass of M rows through the linear layers of the embedded
pair's shapes, our quantised kernel (random blocks of each layer's GGUF type) and our packed float32 kernel against
torch's dense matmul and oneDNN, all timed in one run (best of a few)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

# one decoder layer's linear shapes (out, in): q, k, v, o, gate, up, down
LAYERS = {
    "1.5b": [(1536, 1536), (256, 1536), (256, 1536), (1536, 1536), (8960, 1536), (8960, 1536), (1536, 8960)],
    "0.5b": [(896, 896), (128, 896), (128, 896), (896, 896), (4864, 896), (4864, 896), (896, 4864)],
}
# their GGUF block types in the embedded Q4_K_M files (most layers; a few v and down layers differ)
TYPES = {"1.5b": ["Q4_K"] * 6 + ["Q6_K"], "0.5b": ["Q5_0"] * 6 + ["Q6_K"]}


def _side(name: str, lin: torch.nn.Linear, wdt: torch.dtype, kind: str, seed: int) -> Callable:
    """One layer of column `name`: lin's shape, random weights (the quantised kernel: random blocks of `kind`)."""
    from torch.utils.mkldnn import MkldnnLinear

    from specviz.backends.kernels import PackedLinear
    from specviz.backends.kernels import quant as qk

    n, k = lin.out_features, lin.in_features
    if name == "quant":
        t = getattr(qk, kind)
        return qk.QuantLinear.from_gguf(qk.random_blocks(t, n, k, seed), t, n, k)
    if name == "ours":
        return PackedLinear(lin, wdt)
    if name == "dense":
        w = lin.weight.detach().to(wdt)
        return lambda x: torch.nn.functional.linear(x.to(w.dtype), w).float()
    return MkldnnLinear(lin, torch.float32)


def main(argv: list[str] | None = None) -> None:
    from specviz.backends.kernels import kernel

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", choices=sorted(LAYERS), default="1.5b")
    p.add_argument("--copies", type=int, default=8, help="layers timed per pass (8 layers of 1.5B: about 1.5 GB)")
    p.add_argument("--rows", default="1,2,3,4,5,6,8,9,12,16,64", help="comma-separated row counts M")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="our kernel's weight dtype")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--sides", default="quant,ours,dense,onednn", help="comma-separated columns to time")
    p.add_argument("--isa", default="", help="the quantised kernel's path (portable, avx2, avx512; default: best)")
    args = p.parse_args(argv)
    if kernel()[0] is None:
        raise SystemExit(f"kernel unavailable: {kernel()[1]}")
    from specviz.backends.kernels import quant as qk

    if args.isa:
        os.environ["SPECVIZ_KERNEL_ISA"] = args.isa
    if qk.quant_kernel()[0] is None:
        raise SystemExit(f"quantised kernel unavailable: {qk.quant_kernel()[1]}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    wdt = getattr(torch, args.dtype)
    names = [n.strip() for n in args.sides.split(",") if n.strip()]
    sides: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {n: [] for n in names}
    widths = []
    for c in range(args.copies):
        for i, ((n, k), kind) in enumerate(zip(LAYERS[args.model], TYPES[args.model])):
            lin = torch.nn.Linear(k, n, bias=False)
            for name in names:
                sides[name].append(_side(name, lin, wdt, kind, c * 7 + i))
            widths.append(k)
    isa = qk.isa_name(qk.quant_kernel()[0].isa)
    print(
        f"{args.model} linear shapes x {args.copies} layers, {args.threads} threads, ms per pass (best of {args.reps})"
    )
    heads = {
        "quant": f"ours, quantised ({'/'.join(sorted(set(TYPES[args.model])))}, {isa})",
        "ours": f"ours ({args.dtype} packed)",
        "dense": f"torch dense ({args.dtype})",
        "onednn": "oneDNN (float32)",
    }
    print("| rows | " + " | ".join(heads[n] for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    with torch.inference_mode():
        for m in (int(r) for r in args.rows.split(",")):
            xs = {k: torch.randn(1, m, k) for k in set(widths)}
            ms = {}
            for name, fns in sides.items():
                best = float("inf")
                for _ in range(args.reps + 1):  # the first pass warms up
                    t0 = time.perf_counter()
                    for fn, k in zip(fns, widths):
                        fn(xs[k])
                    best = min(best, time.perf_counter() - t0)
                ms[name] = best * 1000
            print(f"| {m} | " + " | ".join(f"{ms[n]:.1f}" for n in names) + " |", flush=True)


if __name__ == "__main__":
    main()
