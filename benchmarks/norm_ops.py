"""Op-level timing of the norms (Zhang & Sennrich 2019 claim RMSNorm is cheaper than LayerNorm):
forward + backward of each norm on a (tokens, d) activation, the variants interleaved within each
round, median over rounds, ratios against LayerNorm from the same round. CPU by default; --device
cuda on a GPU. One thread by default, as a normbench run on a 2-core CPU gets.

Run: python benchmarks/norm_ops.py [--tokens 2048] [--dims 64 256 1024] [--rounds 7] [--threads 1]
"""
import argparse
import statistics
import time

import torch

from normbench.norms import make_norm

NORMS = ["layernorm", "rmsnorm", "scalenorm", "dyt", "derf"]


def time_op(norm, x, grad, reps: int, device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up
        norm(x).backward(grad)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        norm(x).backward(grad)
    sync()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{args.tokens} tokens, forward + backward, {device}, {torch.get_num_threads()} thread(s), "
          f"median of {args.rounds} rounds x {args.reps} reps; ratio = time / LayerNorm's in the same round")
    for d in args.dims:
        x = torch.randn(args.tokens, d, device=device, requires_grad=True)
        grad = torch.randn(args.tokens, d, device=device)
        mods = {n: make_norm(n, d).to(device) for n in NORMS}
        times = {n: [] for n in NORMS}
        for r in range(args.rounds):
            order = NORMS[r % len(NORMS):] + NORMS[:r % len(NORMS)]
            for n in order:
                times[n].append(time_op(mods[n], x, grad, args.reps, device))
        for n in NORMS:
            ratio = statistics.median(t / ln for t, ln in zip(times[n], times["layernorm"]))
            print(f"d={d:<5} {n:<10} {statistics.median(times[n]) * 1e6:8.1f} us  ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
