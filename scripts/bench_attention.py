"""Time causal attention for the seed shape: PyTorch's SDPA (cuDNN) against ``alpha::causal_attention``.

    python scripts/bench_attention.py [--batch 20 128] [--sweep] [--dropout 0.1]

Per layer, forward alone and forward + backward, from the qkv projection's (B, T, 3C) output to
its gradient, as a step has them: SDPA on views of q, k and v (its output back to (B, T, C), its
three gradients concatenated by autograd), against the op (which reads and writes those layouts
itself). Eight layers' inputs are gone round (more than an H200's L2 at batch 20), each figure
the mean of 20 replays of a CUDA graph of the eight. ``--sweep`` also times the Triton kernels at
each block configuration and cap on registers a thread (forward and backward apart) and prints
the fastest.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_model_kernels import graph_time  # this script's neighbour in scripts/

from alpha.model import attention
from alpha.model.dropout import dropout_seed

HEADS, HEAD_DIM, T, LAYERS = 8, 48, 512, 8
C = HEADS * HEAD_DIM


def layer_time(fn: Callable[[], object]) -> float:
    """Microseconds per layer of ``fn`` (which runs all LAYERS), replayed in a CUDA graph."""
    return graph_time(fn, [()], calls=1) / LAYERS


DROPOUT = 0.0  # --dropout


def sdpa(qkv: torch.Tensor) -> torch.Tensor:
    B = qkv.shape[0]
    q, k, v = (t.view(B, T, HEADS, HEAD_DIM).transpose(1, 2) for t in qkv.split(C, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=DROPOUT, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C)


def ours(qkv: torch.Tensor) -> torch.Tensor:
    seed = dropout_seed(qkv.device) if DROPOUT > 0 else None
    return attention.causal_attention(qkv, HEADS, DROPOUT, seed)[0]


def time_path(fn: Callable[[torch.Tensor], torch.Tensor], xs: list, grads: list) -> tuple[float, float]:
    def forward() -> None:
        with torch.no_grad():
            for x in xs:
                fn(x)

    def both() -> None:
        for x, g in zip(xs, grads, strict=True):
            torch.autograd.grad(fn(x), x, g)

    return layer_time(forward), layer_time(both)


REGISTERS = [None, 168, 128]  # the sweep's caps on registers a thread (None: the compiler's choice)


def sweep(xs: list, grads: list) -> None:
    from alpha.model import attention_kernels

    inputs = [x.detach() for x in xs]
    seed = dropout_seed(inputs[0].device) if DROPOUT > 0 else None
    saved = [attention.causal_attention(x, HEADS, DROPOUT, seed) for x in inputs]
    results = []
    grid = itertools.product([64, 128], [32, 64, 128], [4, 8], [2, 3, 4], REGISTERS)
    for bm, bn, warps, stages, regs in grid:
        if bn > bm:
            continue
        cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages, "maxnreg": regs}
        try:
            us = layer_time(
                lambda cfg=cfg: [
                    attention_kernels.attention_forward(x, HEADS, DROPOUT, seed, config=cfg) for x in inputs
                ]
            )
        except Exception as e:  # a config the GPU cannot hold (shared memory, registers)
            print(f"  forward {cfg}: {type(e).__name__}", file=sys.stderr)
            continue
        results.append((us, "forward ", cfg))
    blocks = [
        (32, 64, 32),
        (32, 64, 64),
        (64, 64, 64),
        (16, 64, 16),
        (32, 128, 32),
        (64, 128, 64),
        (16, 128, 16),
    ]  # (BLOCK_M1, BLOCK_N1, BLOCK_N2)
    for (m1, n1, n2), warps, stages, regs in itertools.product(blocks, [4, 8], [2, 3, 4], REGISTERS):
        cfg = {
            "BLOCK_M1": m1,
            "BLOCK_N1": n1,
            "BLOCK_N2": n2,
            "num_warps": warps,
            "num_stages": stages,
            "maxnreg": regs,
        }
        try:
            us = layer_time(
                lambda cfg=cfg: [
                    attention_kernels.attention_backward(g, x, o, lse, HEADS, DROPOUT, seed, config=cfg)
                    for x, g, (o, lse) in zip(inputs, grads, saved, strict=True)
                ]
            )
        except Exception as e:
            print(f"  backward {cfg}: {type(e).__name__}", file=sys.stderr)
            continue
        results.append((us, "backward", cfg))
    for kind in ("forward ", "backward"):
        best = sorted(r for r in results if r[1] == kind)[:3]
        for us, _, cfg in best:
            print(f"  {kind} {us:7.1f} us  {cfg}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[20, 128])
    parser.add_argument("--sweep", action="store_true", help="time the kernels' block configurations")
    parser.add_argument("--dropout", type=float, default=0.0, help="attention dropout (both paths)")
    args = parser.parse_args()
    global DROPOUT
    DROPOUT = args.dropout
    if not torch.cuda.is_available():
        print("bench_attention: needs a CUDA GPU", file=sys.stderr)
        sys.exit(2)
    torch.manual_seed(0)
    for batch in args.batch:
        xs = [
            torch.randn(batch, T, 3 * C, device="cuda", dtype=torch.bfloat16).requires_grad_()
            for _ in range(LAYERS)
        ]
        grads = [torch.randn(batch, T, C, device="cuda", dtype=torch.bfloat16) for _ in range(LAYERS)]
        print(f"batch {batch}, T {T}, {HEADS} heads of {HEAD_DIM}, bf16, dropout {DROPOUT}, us per layer:")
        for name, fn in (("sdpa (cuDNN)", sdpa), ("alpha::causal_attention", ours)):
            forward, both = time_path(fn, xs, grads)
            print(f"  {name:24s} forward {forward:6.1f} | forward + backward {both:6.1f}")
        if args.sweep:
            sweep(xs, grads)


if __name__ == "__main__":
    main()
