"""Time the FFN's GELU inside cuBLASLt's GEMM epilogues against a GEMM and our GELU kernel (CUDA).

    python scripts/bench_ffn_gelu.py [--rows 10240 65536] [--cold]

Forward: ``h = x W1ᵀ`` (cuBLAS) then ``gelu(h)`` (``alpha::gelu``'s kernel), against
``alpha.model.cublaslt.linear_gelu`` (one GEMM writing gelu(h) and h). Backward: ``g = dy W2`` then
``g · gelu′(h)``, against ``linear_input_grad_dgelu`` (one GEMM, DGELU epilogue). Seed model
shapes (384 → 1536 → 384), bf16. Each figure is one call inside a CUDA graph (see
``bench_model_kernels.graph_time``). Also prints each fused result's largest difference from an
fp32 reference, beside the unfused path's.
"""

from __future__ import annotations

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_model_kernels import _copies, graph_time, rows_arguments  # noqa: E402

from alpha.model.gelu import reference_backward  # noqa: E402


def _gelu_fp32(h: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(h.float(), approximate="tanh")


def report(rows: int, cold: bool, dim: int = 384, hidden: int = 1536) -> None:
    from alpha.model import cublaslt
    from alpha.model.gelu_kernels import gelu_backward, gelu_forward

    def inputs() -> tuple[torch.Tensor, ...]:
        x = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16)
        w1 = torch.randn(hidden, dim, device="cuda", dtype=torch.bfloat16) * dim**-0.5
        w2 = torch.randn(dim, hidden, device="cuda", dtype=torch.bfloat16) * hidden**-0.5
        dy = torch.randn(rows, dim, device="cuda", dtype=torch.bfloat16)
        h = x @ w1.t()
        return x, w1, w2, dy, h

    sets = _copies(inputs, cold)
    x, w1, w2, dy, h = sets[0]
    act, pre = cublaslt.linear_gelu(x, w1)
    ref_pre = x.float() @ w1.float().t()
    dh = cublaslt.linear_input_grad_dgelu(dy, w2, h)
    ref_dh = reference_backward(dy.float() @ w2.float(), h.float())
    plain_dh = gelu_backward(dy @ w2, h)
    print(f"FFN GELU, {rows} rows, {dim} -> {hidden} -> {dim} bf16, {len(sets)} input set(s):")
    print(
        f"  max |diff| from fp32: pre {(pre.float() - ref_pre).abs().max():.3g}, "
        f"gelu {(act.float() - _gelu_fp32(ref_pre)).abs().max():.3g} "
        f"(unfused {(gelu_forward(x @ w1.t()).float() - _gelu_fp32(ref_pre)).abs().max():.3g}), "
        f"dh {(dh.float() - ref_dh).abs().max():.3g} (unfused {(plain_dh.float() - ref_dh).abs().max():.3g})"
    )

    def fwd_plain(x: torch.Tensor, w1: torch.Tensor, *_: torch.Tensor) -> None:
        gelu_forward(x @ w1.t())

    def fwd_fused(x: torch.Tensor, w1: torch.Tensor, *_: torch.Tensor) -> None:
        cublaslt.linear_gelu(x, w1)

    def bwd_plain(
        x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, dy: torch.Tensor, h: torch.Tensor
    ) -> None:
        gelu_backward(dy @ w2, h)

    def bwd_fused(
        x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, dy: torch.Tensor, h: torch.Tensor
    ) -> None:
        cublaslt.linear_input_grad_dgelu(dy, w2, h)

    def gemm_only(
        x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, dy: torch.Tensor, h: torch.Tensor
    ) -> None:
        x @ w1.t()

    def bgemm_only(
        x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, dy: torch.Tensor, h: torch.Tensor
    ) -> None:
        dy @ w2

    for label, plain, fused, alone in (
        ("forward ", fwd_plain, fwd_fused, gemm_only),
        ("backward", bwd_plain, bwd_fused, bgemm_only),
    ):
        t_plain, t_gemm = (graph_time(f, sets) for f in (plain, alone))
        fused_times = []
        for tune in (False, True):  # the heuristic's first algorithm, then the fastest of its 8
            cublaslt.TUNE = tune
            cublaslt._plan.cache_clear()
            fused_times.append(graph_time(fused, sets))
        print(
            f"  {label} gemm+gelu {t_plain:7.1f} us | fused {fused_times[0]:7.1f} us, timed choice "
            f"{fused_times[1]:7.1f} us | gemm alone {t_gemm:7.1f} us"
        )


def main() -> None:
    args = rows_arguments(__doc__, "bench_ffn_gelu")
    for rows in args.rows:
        report(rows, args.cold)


if __name__ == "__main__":
    main()
