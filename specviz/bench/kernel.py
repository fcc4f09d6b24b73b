"""`python -m specviz.bench.kernel`: milliseconds for one pass of M rows through the linear layers of the embedded
pair's shapes, our packed kernel against torch's dense matmul and oneDNN, all timed in one run (best of a few)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

# one decoder layer's linear shapes (out, in): q, k, v, o, gate, up, down
LAYERS = {
    "1.5b": [(1536, 1536), (256, 1536), (256, 1536), (1536, 1536), (8960, 1536), (8960, 1536), (1536, 8960)],
    "0.5b": [(896, 896), (128, 896), (128, 896), (896, 896), (4864, 896), (4864, 896), (896, 4864)],
}


def main(argv: list[str] | None = None) -> None:
    from torch.utils.mkldnn import MkldnnLinear

    from specviz.backends.kernels import PackedLinear, kernel

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", choices=sorted(LAYERS), default="1.5b")
    p.add_argument("--copies", type=int, default=8, help="layers timed per pass (8 layers of 1.5B: about 1.5 GB)")
    p.add_argument("--rows", default="1,2,3,4,5,6,8,9,12,16,64", help="comma-separated row counts M")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="our kernel's weight dtype")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    if kernel()[0] is None:
        raise SystemExit(f"kernel unavailable: {kernel()[1]}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    wdt = getattr(torch, args.dtype)
    sides: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {"ours": [], "dense": [], "onednn": []}
    widths = []
    for _ in range(args.copies):
        for n, k in LAYERS[args.model]:
            lin = torch.nn.Linear(k, n, bias=False)
            w = lin.weight.detach().to(wdt)
            sides["ours"].append(PackedLinear(lin, wdt))
            sides["dense"].append(lambda x, w=w: torch.nn.functional.linear(x.to(w.dtype), w).float())
            sides["onednn"].append(MkldnnLinear(lin, torch.float32))
            widths.append(k)
    print(
        f"{args.model} linear shapes x {args.copies} layers, {args.threads} threads, ms per pass (best of {args.reps})"
    )
    print(f"| rows | ours ({args.dtype} packed) | torch dense ({args.dtype}) | oneDNN (float32) |")
    print("|---|---|---|---|")
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
            print(f"| {m} | {ms['ours']:.1f} | {ms['dense']:.1f} | {ms['onednn']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
