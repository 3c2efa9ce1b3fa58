"""Triton kernels of causal attention over the qkv projection's output (``alpha::causal_attention``).

The kernels read q, k and v straight out of the projection's (B, T, 3C) output and write the
output as (B, T, C), so no transposes or copies surround them, and the backward writes one
(B, T, 3C) gradient, so dq, dk and dv are never concatenated. The head dimension need not be a
power of two: it is taken as two column blocks (48 = 32 + 16), each a matrix product of its own,
so a head of 48 costs 48 columns of work instead of the 64 that a power-of-two tile pads it to.

Forward: FlashAttention's online softmax, one program a block of queries and a head, blocks of
keys below the diagonal without masks, the diagonal's with. It stores the log-sum-exp of every
row (natural, as cuDNN's forward does) for the backward. Under dropout the probabilities are
dropped after the row sums and the output scaled by 1 / (1 - p); the mask (``_kept``) is drawn
from the scores' coordinates, so the backward draws the same one in its own tiles.

Backward: FlashAttention-2's split, as in Triton's fused-attention tutorial. After a pass for
D = rowsum(dO ∘ O), one program a block of keys accumulates dk and dv over the queries that see
them, and the same program then accumulates dq for the block of queries at its index over the
keys those see: the two loops' lengths add up to the same in every program, and dq needs neither
atomics nor a float32 buffer. (D computed inside the backward kernel instead, from tiles of O
loaded beside dO's, made the step slower.)
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from alpha.model.attention import head_split

_LOG2E = tl.constexpr(1.4426950408889634)  # natural logarithms to base 2 (in the kernels)
_LN2 = tl.constexpr(0.6931471805599453)  # and back
LOG2E = _LOG2E.value


@triton.jit
def _load_rows(base, rows, stride, c0, c1):
    """A head's two column blocks (c0, c1) of the given rows, ``stride`` apart: (rows, block) tiles."""
    tile = base + rows[:, None] * stride
    return tl.load(tile + c0[None, :]), tl.load(tile + c1[None, :])


@triton.jit
def _load_rows_t(base, rows, stride, c0, c1):
    """The same tiles transposed: (block, rows)."""
    tile = base + rows[None, :] * stride
    return tl.load(tile + c0[:, None]), tl.load(tile + c1[:, None])


@triton.jit
def _store_rows(base, rows, stride, c0, c1, x0, x1, scale, dtype: tl.constexpr):
    """x0 · scale and x1 · scale into the two column blocks of the given rows, in ``dtype``."""
    tile = base + rows[:, None] * stride
    tl.store(tile + c0[None, :], (x0 * scale).to(dtype))
    tl.store(tile + c1[None, :], (x1 * scale).to(dtype))


@triton.jit
def _forward_over_keys(
    q0, q1, acc0, acc1, m_i, l_i, k_base, v_base, row, qk_scale, offs_m, c0, c1,
    first_key, end_key, seed, bh, first_query, T, p_drop,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr, DROPOUT: tl.constexpr,
):  # fmt: skip
    """The online softmax of a block of queries (BLOCK_M from first_query: offs_m) over the keys
    [first_key, end_key), BLOCK_N at a time; CAUSAL_MASK where some of those keys lie after some
    of the queries; under DROPOUT the probabilities summed into the output drop by the mask."""
    for start_n in range(first_key, end_key, BLOCK_N):
        keys = start_n + tl.arange(0, BLOCK_N)
        kt0, kt1 = _load_rows_t(k_base, keys, row, c0, c1)
        s = tl.dot(q0, kt0)
        s = tl.dot(q1, kt1, s) * qk_scale
        if CAUSAL_MASK:
            s = tl.where(offs_m[:, None] >= keys[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v0, v1 = _load_rows(v_base, keys, row, c0, c1)
        if DROPOUT:
            p = tl.where(_kept(seed, bh, first_query, start_n, T, p_drop, BLOCK_M, BLOCK_N), p, 0.0)
        p16 = p.to(v0.dtype)
        acc0 = tl.dot(p16, v0, acc0 * alpha[:, None])
        acc1 = tl.dot(p16, v1, acc1 * alpha[:, None])
        m_i = m_new
    return acc0, acc1, m_i, l_i


@triton.jit
def _hash(x):
    """A 32-bit integer hash (Wellons' lowbias32): two multiplies and three xor-shifts."""
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    return x


@triton.jit
def _head_key(seed, bh):
    """The hash that the seed and the batch-head mix into every place's."""
    return _hash(seed.to(tl.uint32) ^ _hash(bh.to(tl.uint32) + 0x9E3779B9))


@triton.jit
def _kept(seed, bh, first_query, first_key, T, p_drop, BQ: tl.constexpr, BK: tl.constexpr):
    """Attention dropout's mask of the (BQ, BK) tile of scores at (first_query, first_key) of head
    ``bh``: True where the probability is kept. Each pair of neighbouring keys (2j, 2j + 1) of a
    query takes one 32-bit hash of its place in the head (query · T/2 + j) mixed with the seed's
    and the head's; its low 16 bits decide key 2j, its high 16 bits key 2j + 1 (kept when at
    least p_drop · 2¹⁶). So the mask depends only on the seed, the head, the query and the key:
    every tiling sees the same one, and ``_kept_t`` draws its transpose. A hash is far less integer
    work than Philox (ten rounds of multiplies for four numbers), and one for two scores half of a
    hash each; with a head of 48 this integer work weighs as much as the matrix products."""
    queries = first_query + tl.arange(0, BQ)
    pairs = first_key // 2 + tl.arange(0, BK // 2)
    h = _hash((queries[:, None] * (T // 2) + pairs[None, :]).to(tl.uint32) ^ _head_key(seed, bh))
    threshold = tl.cast(p_drop * 65536.0, tl.uint32)
    return tl.reshape(tl.join((h & 0xFFFF) >= threshold, (h >> 16) >= threshold), (BQ, BK))


@triton.jit
def _kept_t(seed, bh, first_query, first_key, T, p_drop, BQ: tl.constexpr, BK: tl.constexpr):
    """``_kept``'s mask transposed, as (BK, BQ): each score hashes its own pair and takes its half,
    which costs a hash a score but keeps the tile in the layout of the matrix product that uses it
    (gathering halves across the transposed tile would go through shared memory)."""
    queries = first_query + tl.arange(0, BQ)
    keys = first_key + tl.arange(0, BK)
    h = _hash((queries[None, :] * (T // 2) + (keys // 2)[:, None]).to(tl.uint32) ^ _head_key(seed, bh))
    half = tl.where((keys % 2 == 1)[:, None], h >> 16, h & 0xFFFF)
    return half >= tl.cast(p_drop * 65536.0, tl.uint32)


@triton.jit
def _attention_forward_kernel(
    QKV,
    OUT,
    LSE,
    SEED,
    T,
    H,
    C,
    qk_scale,
    p_drop,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    D0: tl.constexpr,
    D1: tl.constexpr,
    DROPOUT: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    row = 3 * C
    q_base = QKV + b.to(tl.int64) * T * row + h * (D0 + D1)
    k_base = q_base + C
    v_base = q_base + 2 * C
    offs_m = start_m + tl.arange(0, BLOCK_M)
    c0 = tl.arange(0, D0)
    c1 = D0 + tl.arange(0, D1)
    q0, q1 = _load_rows(q_base, offs_m, row, c0, c1)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc0 = tl.zeros([BLOCK_M, D0], tl.float32)
    acc1 = tl.zeros([BLOCK_M, D1], tl.float32)
    if DROPOUT:
        seed = tl.load(SEED)
    else:
        seed = 0
    # keys below the block's first query, visible to every row; then the diagonal's, masked
    acc0, acc1, m_i, l_i = _forward_over_keys(
        q0, q1, acc0, acc1, m_i, l_i, k_base, v_base, row, qk_scale, offs_m, c0, c1,
        0, start_m, seed, bh, start_m, T, p_drop, BLOCK_M, BLOCK_N, False, DROPOUT,
    )  # fmt: skip
    acc0, acc1, m_i, l_i = _forward_over_keys(
        q0, q1, acc0, acc1, m_i, l_i, k_base, v_base, row, qk_scale, offs_m, c0, c1,
        start_m, start_m + BLOCK_M, seed, bh, start_m, T, p_drop, BLOCK_M, BLOCK_N, True, DROPOUT,
    )  # fmt: skip
    o_base = OUT + b.to(tl.int64) * T * C + h * (D0 + D1)
    inv = 1.0 / l_i
    if DROPOUT:
        inv = inv / (1.0 - p_drop)
    _store_rows(o_base, offs_m, C, c0, c1, acc0, acc1, inv[:, None], OUT.dtype.element_ty)
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, (m_i + tl.math.log2(l_i)) * _LN2)


@triton.jit
def _attention_delta_kernel(OUT, DO, DELTA, N, BLOCK: tl.constexpr, HD: tl.constexpr, D: tl.constexpr):
    """DELTA[b, t, h] = Σ_d O[b, t, h, d] dO[b, t, h, d], for BLOCK of the N (b, t, h) rows a
    program. O and dO are read as they lie (rows of HD one after another), and with HD known to
    the compiler their loads are 16-byte vectors; DELTA is written in the same order."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, D)
    mask = (rows[:, None] < N) & (cols[None, :] < HD)
    offs = rows[:, None].to(tl.int64) * HD + cols[None, :]
    o = tl.load(OUT + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + rows, tl.sum(o * do, 1), mask=rows < N)


@triton.jit
def _attention_backward_kernel(
    QKV,
    DO,
    DQKV,
    LSE,
    DELTA,
    SEED,
    T,
    H,
    C,
    qk_scale,
    sm_scale,
    p_drop,
    BLOCK_M1: tl.constexpr,
    BLOCK_N1: tl.constexpr,
    BLOCK_N2: tl.constexpr,
    D0: tl.constexpr,
    D1: tl.constexpr,
    DROPOUT: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    row = 3 * C
    head = h * (D0 + D1)
    q_base = QKV + b.to(tl.int64) * T * row + head
    k_base = q_base + C
    v_base = q_base + 2 * C
    do_base = DO + b.to(tl.int64) * T * C + head
    dq_base = DQKV + b.to(tl.int64) * T * row + head
    lse_base = LSE + bh.to(tl.int64) * T
    delta_base = DELTA + b.to(tl.int64) * T * H + h  # (B, T, H)
    c0 = tl.arange(0, D0)
    c1 = D0 + tl.arange(0, D1)
    if DROPOUT:
        seed = tl.load(SEED)
    else:
        seed = 0
    keep_scale = 1.0 / (1.0 - p_drop)

    # dk, dv of the keys [start_n, start_n + BLOCK_N1), over the queries at or after them
    start_n = pid * BLOCK_N1
    keys = start_n + tl.arange(0, BLOCK_N1)
    k0, k1 = _load_rows(k_base, keys, row, c0, c1)
    v0, v1 = _load_rows(v_base, keys, row, c0, c1)
    dk0 = tl.zeros([BLOCK_N1, D0], tl.float32)
    dk1 = tl.zeros([BLOCK_N1, D1], tl.float32)
    dv0 = tl.zeros([BLOCK_N1, D0], tl.float32)
    dv1 = tl.zeros([BLOCK_N1, D1], tl.float32)
    offs_m1 = tl.arange(0, BLOCK_M1)
    for start_m in range(start_n, T, BLOCK_M1):
        queries = start_m + offs_m1
        qt0, qt1 = _load_rows_t(q_base, queries, row, c0, c1)
        lse = tl.load(lse_base + queries) * _LOG2E
        st = tl.dot(k0, qt0)
        st = tl.dot(k1, qt1, st)
        pt = tl.math.exp2(st * qk_scale - lse[None, :])
        if start_m < start_n + BLOCK_N1:
            pt = tl.where(queries[None, :] >= keys[:, None], pt, 0.0)
        do0, do1 = _load_rows(do_base, queries, C, c0, c1)
        if DROPOUT:
            kept = _kept_t(seed, bh, start_m, start_n, T, p_drop, BLOCK_M1, BLOCK_N1)
            pt16 = tl.where(kept, pt * keep_scale, 0.0).to(do0.dtype)
        else:
            pt16 = pt.to(do0.dtype)
        dv0 = tl.dot(pt16, do0, dv0)
        dv1 = tl.dot(pt16, do1, dv1)
        delta = tl.load(delta_base + queries * H)
        dpt = tl.dot(v0, tl.trans(do0))
        dpt = tl.dot(v1, tl.trans(do1), dpt)
        if DROPOUT:
            dpt = tl.where(kept, dpt * keep_scale, 0.0)
        dst = (pt * (dpt - delta[None, :])).to(qt0.dtype)
        dk0 = tl.dot(dst, tl.trans(qt0), dk0)
        dk1 = tl.dot(dst, tl.trans(qt1), dk1)
    dtype = DQKV.dtype.element_ty
    _store_rows(dq_base + C, keys, row, c0, c1, dk0, dk1, sm_scale, dtype)
    _store_rows(dq_base + 2 * C, keys, row, c0, c1, dv0, dv1, 1.0, dtype)

    # dq of the queries [start_m, start_m + BLOCK_N1), over the keys at or before them
    start_m = pid * BLOCK_N1
    queries = start_m + tl.arange(0, BLOCK_N1)
    q0, q1 = _load_rows(q_base, queries, row, c0, c1)
    do0, do1 = _load_rows(do_base, queries, C, c0, c1)
    lse = tl.load(lse_base + queries) * _LOG2E
    delta = tl.load(delta_base + queries * H)
    dq0 = tl.zeros([BLOCK_N1, D0], tl.float32)
    dq1 = tl.zeros([BLOCK_N1, D1], tl.float32)
    offs_n2 = tl.arange(0, BLOCK_N2)
    for start_k in range(0, start_m + BLOCK_N1, BLOCK_N2):
        ks = start_k + offs_n2
        kt0, kt1 = _load_rows_t(k_base, ks, row, c0, c1)
        vt0, vt1 = _load_rows_t(v_base, ks, row, c0, c1)
        s = tl.dot(q0, kt0)
        s = tl.dot(q1, kt1, s)
        p = tl.math.exp2(s * qk_scale - lse[:, None])
        if start_k >= start_m:
            p = tl.where(queries[:, None] >= ks[None, :], p, 0.0)
        dp = tl.dot(do0, vt0)
        dp = tl.dot(do1, vt1, dp)
        if DROPOUT:
            kept = _kept(seed, bh, start_m, start_k, T, p_drop, BLOCK_N1, BLOCK_N2)
            dp = tl.where(kept, dp * keep_scale, 0.0)
        ds = (p * (dp - delta[:, None])).to(q0.dtype)
        dq0 = tl.dot(ds, tl.trans(kt0), dq0)
        dq1 = tl.dot(ds, tl.trans(kt1), dq1)
    _store_rows(dq_base, queries, row, c0, c1, dq0, dq1, sm_scale, dtype)


# The fastest of sweeps on an H200 at batch 20 and 128 (seed shape: T 512, 8 heads of 48).
# ``maxnreg`` caps the registers of a thread, so that more programs share an SM and one's matrix
# products run while another's exponentials do: the backward at 158 registers a thread fits
# three programs of 4 warps on an SM, at 128 four (a few spilled registers cost less than that).
# With dropout the backward holds more (the hash), and 168 keeps three.
FORWARD = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "maxnreg": 128}
BACKWARD = {"BLOCK_M1": 32, "BLOCK_N1": 64, "BLOCK_N2": 64, "num_warps": 4, "num_stages": 3, "maxnreg": 128}
BACKWARD_DROPOUT = {**BACKWARD, "maxnreg": 168}
DELTA_BLOCK = 128


def attention_forward(
    qkv: torch.Tensor,
    n_head: int,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the output as (B, T, C), the rows' log-sum-exp as (B, H, T) fp32) of causal attention over a
    contiguous (B, T, 3C) qkv; with ``dropout_p`` > 0 the probabilities are dropped by the mask
    that the one-element integer tensor ``seed`` draws (``dropout_mask``)."""
    cfg = config or FORWARD
    B, T, C3 = qkv.shape
    C = C3 // 3
    d0, d1 = head_split(C // n_head)
    out = torch.empty(B, T, C, device=qkv.device, dtype=qkv.dtype)
    lse = torch.empty(B, n_head, T, device=qkv.device, dtype=torch.float32)
    scale = 1.0 / math.sqrt(C // n_head)
    grid = (T // cfg["BLOCK_M"], B * n_head)
    _attention_forward_kernel[grid](
        qkv,
        out,
        lse,
        lse if seed is None else seed,
        T,
        n_head,
        C,
        scale * LOG2E,
        dropout_p,
        BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"],
        D0=d0,
        D1=d1,
        DROPOUT=dropout_p > 0,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
        maxnreg=cfg.get("maxnreg"),
    )
    return out, lse


def attention_backward(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    n_head: int,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """The (B, T, 3C) gradient of causal attention's qkv, from the contiguous output gradient
    (and the forward's dropout and seed)."""
    cfg = config or (BACKWARD_DROPOUT if dropout_p > 0 else BACKWARD)
    B, T, C3 = qkv.shape
    C = C3 // 3
    hd = C // n_head
    d0, d1 = head_split(hd)
    rows = B * T * n_head
    delta = torch.empty(B, T, n_head, device=qkv.device, dtype=torch.float32)
    _attention_delta_kernel[(triton.cdiv(rows, DELTA_BLOCK),)](
        out,
        grad_out,
        delta,
        rows,
        BLOCK=DELTA_BLOCK,
        HD=hd,
        D=triton.next_power_of_2(hd),
        num_warps=4,
    )
    dqkv = torch.empty_like(qkv)
    scale = 1.0 / math.sqrt(hd)
    grid = (T // cfg["BLOCK_N1"], B * n_head)
    _attention_backward_kernel[grid](
        qkv,
        grad_out,
        dqkv,
        lse,
        delta,
        lse if seed is None else seed,
        T,
        n_head,
        C,
        scale * LOG2E,
        scale,
        dropout_p,
        BLOCK_M1=cfg["BLOCK_M1"],
        BLOCK_N1=cfg["BLOCK_N1"],
        BLOCK_N2=cfg["BLOCK_N2"],
        D0=d0,
        D1=d1,
        DROPOUT=dropout_p > 0,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
        maxnreg=cfg.get("maxnreg"),
    )
    return dqkv


@triton.jit
def _dropout_mask_kernel(SEED, MASK, T, p_drop, BQ: tl.constexpr, BK: tl.constexpr):
    first_query = tl.program_id(0) * BQ
    first_key = tl.program_id(1) * BK
    bh = tl.program_id(2)
    kept = _kept(tl.load(SEED), bh, first_query, first_key, T, p_drop, BQ, BK)
    queries = first_query + tl.arange(0, BQ)
    keys = first_key + tl.arange(0, BK)
    tl.store(MASK + (bh.to(tl.int64) * T + queries[:, None]) * T + keys[None, :], kept)


def dropout_mask(seed: torch.Tensor, batch: int, n_head: int, T: int, dropout_p: float) -> torch.Tensor:
    """The (B, H, T, T) boolean mask of kept probabilities that the kernels draw from ``seed``."""
    mask = torch.empty(batch, n_head, T, T, device=seed.device, dtype=torch.bool)
    _dropout_mask_kernel[(T // 32, T // 32, batch * n_head)](seed, mask, T, dropout_p, BQ=32, BK=32)
    return mask
