"""Triton kernel of ``alpha::logsumexp_target`` (see ``alpha.model.losses``).

One program a row: the whole row (the vocabulary, up to ``BLOCK`` logits) is loaded once into
registers, so the maximum and the sum of exponentials are two reductions over registers and the
logits are read from memory once. Inductor's kernel for ``torch.logsumexp`` loops over the row
twice (the row is longer than it keeps in registers), reading the logits twice. The same program
picks the target's logit out of the row it holds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

WARPS = 4


@triton.jit
def _logsumexp_target_kernel(LOGITS, TARGETS, LSE, TARGET_LOGIT, stride, V, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    base = LOGITS + row.to(tl.int64) * stride
    x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
    m = tl.max(x, axis=0)
    s = tl.sum(tl.exp(x - m), axis=0)
    tl.store(LSE + row, m + tl.log(s))
    target = tl.load(TARGETS + row)
    tl.store(TARGET_LOGIT + row, tl.load(base + target).to(tl.float32))


def logsumexp_target(
    logits: torch.Tensor, targets: torch.Tensor, warps: int = WARPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logsumexp of each row, the target's logit), fp32, for (N, V) logits with unit column stride."""
    n, v = logits.shape
    lse = torch.empty(n, device=logits.device, dtype=torch.float32)
    target_logit = torch.empty_like(lse)
    block = triton.next_power_of_2(v)
    _logsumexp_target_kernel[(n,)](
        logits, targets, lse, target_logit, logits.stride(0), v, BLOCK=block, num_warps=warps
    )
    return lse, target_logit
