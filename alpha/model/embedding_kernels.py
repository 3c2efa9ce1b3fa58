"""The Triton kernel of ``alpha::embedding_backward``: a lookup's gradient summed by runs of a token.

The tokens are sorted (``torch.sort``), so each token's rows of the gradient form one run of the
sorted order. One program takes CHUNK places of that order and BLOCK_C columns: it gathers those
gradient rows, numbers the runs that start in its chunk (a prefix sum of "the token changed"),
and sums each run's rows with one matrix product, a (run, place) one-hot matrix times the
(place, column) tile, in float32. Only those sums are added into the float32 table, one atomic
add a run and column: a run that spans chunks gets one from each. The one-hot factor is exact
in 16 bits, so the sums are those of the 16-bit gradient in float32, in another order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 64  # places of the sorted order a program
BLOCK_C = 128  # columns a program


@triton.jit
def _run_sums_kernel(GRAD, ORDER, IDS, OUT, N, C, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr):
    start = tl.program_id(0) * CHUNK
    places = start + tl.arange(0, CHUNK)
    valid = places < N
    ids = tl.load(IDS + places, mask=valid, other=-1)
    before = tl.load(IDS + places - 1, mask=valid & (places > start), other=-1)
    run = tl.cumsum((valid & (ids != before)).to(tl.int32), 0) - 1  # the run of each place
    rows = tl.load(ORDER + places, mask=valid, other=0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_cols = cols < C
    tile = GRAD + rows[:, None].to(tl.int64) * C + cols[None, :]
    g = tl.load(tile, mask=valid[:, None] & in_cols[None, :], other=0.0)
    slots = tl.arange(0, CHUNK)
    member = (slots[:, None] == run[None, :]) & valid[None, :]  # (run, place)
    sums = tl.dot(member.to(g.dtype), g)  # (run, column), float32
    run_ids = tl.max(tl.where(member, ids[None, :], -1), 1)  # -1 for slots no run took
    target = OUT + run_ids[:, None].to(tl.int64) * C + cols[None, :]
    tl.atomic_add(target, sums, mask=(run_ids[:, None] >= 0) & in_cols[None, :], sem="relaxed")


def run_sums(grad: torch.Tensor, idx: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The float32 (num_rows, C) sums of the rows of a contiguous 16-bit (N, C) ``grad`` by their
    token in the (N,) ``idx``."""
    N, C = grad.shape
    out = torch.zeros(num_rows, C, device=grad.device, dtype=torch.float32)
    if N == 0:
        return out
    ids, order = torch.sort(idx.to(torch.int32))  # four radix passes instead of eight
    grid = (triton.cdiv(N, CHUNK), triton.cdiv(C, BLOCK_C))
    _run_sums_kernel[grid](grad, order, ids, out, N, C, CHUNK=CHUNK, BLOCK_C=BLOCK_C, num_warps=4)
    return out
