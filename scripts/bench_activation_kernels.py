"""Time the search's activation kernels against Inductor's fused code, on the seed's FFN shape.

    python scripts/bench_activation_kernels.py [--rows 10240] [--cols 1536]

For each graph: the program-activation kernels (``alpha.symbio.program_kernels``), forward and
backward, and the same graph compiled by Inductor (forward + backward together, as a model would
run it after the search); GELU and a plain copy of the tensor for scale. bf16, one CUDA graph of
ten calls replayed, µs per call. Kernel times, not step times (that is ``alpha bench
--activation-graph G --activation-program``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from alpha.model.kernel_support import kernels_available
from alpha.symbio.activation import evaluate
from alpha.symbio.graph import Add, Basis, Graph, Mul, Scale
from alpha.symbio.program import program_tensor

GRAPHS: dict[str, Graph] = {
    "(relu+0.04·sq)×gelu": Mul(Add(Basis("relu"), Scale(Basis("square"), 0.04)), Basis("gelu")),
    "silu+0.12·sq": Add(Basis("silu"), Scale(Basis("square"), 0.12)),
    "relu": Basis("relu"),
    "(relu+0.04·sq)×gelu×silu (instructions)": Mul(
        Mul(Add(Basis("relu"), Scale(Basis("square"), 0.04)), Basis("gelu")), Basis("silu")
    ),
}


def timed(fn: Callable[[], object], reps: int = 50) -> float:
    """µs per call of ``fn``, from a CUDA graph of ten calls."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(10):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps / 10 * 1e6


def compiled_forward_backward(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dy: torch.Tensor
) -> float:
    compiled = torch.compile(fn)
    leaf = x.clone().requires_grad_(True)

    def run() -> None:
        leaf.grad = None
        compiled(leaf).backward(dy)

    return timed(run)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=10240, help="tokens (batch 20 × 512)")
    p.add_argument("--cols", type=int, default=1536, help="FFN width")
    args = p.parse_args()
    if not kernels_available(torch.device("cuda")):
        print("bench_activation_kernels: needs CUDA and Triton", file=sys.stderr)
        sys.exit(2)
    from alpha.symbio import program_kernels

    x = (torch.randn(args.rows, args.cols, device="cuda") * 2).to(torch.bfloat16)
    dy = torch.randn_like(x)
    print(f"{args.rows} × {args.cols} bf16, µs per call")
    print(f"copy: {timed(lambda: x.clone()):.1f}")
    gelu = compiled_forward_backward(lambda t: F.gelu(t, approximate="tanh"), x, dy)
    print(f"GELU, Inductor, forward + backward: {gelu:.1f}")
    for name, graph in GRAPHS.items():
        program = program_tensor(graph, capacity=10).cuda()
        forward = timed(lambda p=program: program_kernels.forward(x, p))
        backward = timed(lambda p=program: program_kernels.backward(dy, x, p))
        fused = compiled_forward_backward(lambda t, g=graph: evaluate(g, t.float()).to(t.dtype), x, dy)
        total = forward + backward
        print(f"{name}: kernels {forward:.1f} + {backward:.1f} = {total:.1f}; Inductor {fused:.1f}")


if __name__ == "__main__":
    main()
