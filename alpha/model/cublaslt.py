"""cuBLASLt's GELU epilogues, called through ``ctypes``: the FFN's GELU inside its GEMMs.

PyTorch reaches cuBLASLt's plain GELU epilogue (``torch._addmm_activation``) but not the two a
training step needs: ``GELU_AUX``, which writes ``gelu(x Wᵀ)`` and also the pre-activation
``x Wᵀ`` (the backward's input), and ``DGELU``, which multiplies a product by ``gelu′`` of that
saved pre-activation as it stores it. With both, the FFN's GELU costs no kernel of its own: the
first product writes h and gelu(h), and the second product's input gradient comes out already
multiplied by gelu′(h). cuBLASLt's GELU is the tanh approximation, the model's.

Row-major PyTorch tensors are column-major matrices transposed, so ``y = x Wᵀ`` is asked of
cuBLASLt as ``yᵀ = W xᵀ``, and ``dx = dy W`` as ``dxᵀ = Wᵀ dyᵀ``. Descriptors and the heuristic's
algorithms are cached by shape, dtype and the pointers' alignment. At a shape's first call outside
a CUDA graph capture the heuristic's 8 best algorithms are timed on the real operands and the
fastest is kept (``TUNE``; in the seed model's FFN the heuristic's first choice took 204 µs
forward and 272 µs backward at batch 128, the timed choice 190 and 249). The pointers are set at
every call, so a call captured into a CUDA graph replays with the tensors it was captured with,
as any kernel does.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch

# cublasLt.h / library_types.h
_COMPUTE_32F = 68
_R_32F = 0
_DATA_TYPES = {torch.bfloat16: 14, torch.float16: 2}
_OP_N, _OP_T = 0, 1
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE = 3, 4, 7
_DESC_AUX_POINTER, _DESC_AUX_LD = 11, 12
_PREF_MAX_WORKSPACE = 1
_PREF_MIN_ALIGNMENT = (5, 6, 7, 8)  # A, B, C, D, in bytes
EPILOGUE_GELU_AUX = 32 | 128
EPILOGUE_DGELU = 64 | 128

WORKSPACE_BYTES = 32 * 1024 * 1024
CANDIDATES = 8  # algorithms asked of the heuristic and timed at a shape's first call
TUNE = True  # False: the heuristic's first choice, untimed


class _Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class _HeuristicResult(ctypes.Structure):
    _fields_ = [
        ("algo", _Algo),
        ("workspace_size", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("waves_count", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


class CublasLtError(RuntimeError):
    pass


def _library() -> ctypes.CDLL:
    """libcublasLt as PyTorch loaded it (by soname), or else from the nvidia wheels beside torch."""
    for name in ("libcublasLt.so.13", "libcublasLt.so.12"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    site = os.path.dirname(os.path.dirname(torch.__file__))
    for path in sorted(glob.glob(os.path.join(site, "nvidia", "**", "libcublasLt.so*"), recursive=True)):
        try:
            return ctypes.CDLL(path)
        except OSError:
            pass
    raise CublasLtError("libcublasLt not found")


@cache
def _lib() -> ctypes.CDLL:
    lib = _library()
    p, i, u64, i64, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int64, ctypes.c_size_t
    signatures = {
        "cublasLtCreate": [ctypes.POINTER(p)],
        "cublasLtMatmulDescCreate": [ctypes.POINTER(p), i, i],
        "cublasLtMatmulDescSetAttribute": [p, i, p, sz],
        "cublasLtMatrixLayoutCreate": [ctypes.POINTER(p), i, u64, u64, i64],
        "cublasLtMatmulPreferenceCreate": [ctypes.POINTER(p)],
        "cublasLtMatmulPreferenceSetAttribute": [p, i, p, sz],
        "cublasLtMatmulAlgoGetHeuristic": [*[p] * 7, i, ctypes.POINTER(_HeuristicResult), ctypes.POINTER(i)],
        "cublasLtMatmul": [p, p, p, p, p, p, p, p, p, p, p, p, ctypes.POINTER(_Algo), p, sz, p],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether cuBLASLt can be called here (a CUDA build of PyTorch with a GPU)."""
    if not torch.cuda.is_available():
        return False
    try:
        _lib()
    except (CublasLtError, AttributeError):
        return False
    return True


def _check(status: int, what: str) -> None:
    if status != 0:
        raise CublasLtError(f"{what} failed with cuBLAS status {status}")


@cache
def _handle(device: int) -> ctypes.c_void_p:
    handle = ctypes.c_void_p()
    with torch.cuda.device(device):
        _check(_lib().cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
    return handle


def _set(
    setter: Callable[..., int], obj: ctypes.c_void_p, attribute: int, value: ctypes._SimpleCData
) -> None:
    _check(setter(obj, attribute, ctypes.byref(value), ctypes.sizeof(value)), f"attribute {attribute}")


def _alignment(*tensors: torch.Tensor) -> int:
    """The largest power of two up to 256 that divides every tensor's address."""
    align = 256
    for t in tensors:
        while t.data_ptr() % align:
            align //= 2
    return align


@dataclass
class _Plan:
    desc: ctypes.c_void_p
    layouts: tuple[ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    candidates: list[_Algo]  # the heuristic's, best first
    chosen: _Algo | None = None  # the fastest of them, once timed


@cache
def _plan(
    device: int,
    dtype: torch.dtype,
    transa: int,
    a_shape: tuple[int, int],
    b_shape: tuple[int, int],
    m: int,
    n: int,
    epilogue: int,
    align: int,
) -> _Plan:
    """Descriptors and the heuristic's best algorithm for D (m × n, column-major) = op(A) B."""
    lib = _lib()
    data_type = _DATA_TYPES[dtype]
    desc = ctypes.c_void_p()
    _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), _COMPUTE_32F, _R_32F), "cublasLtMatmulDescCreate")
    _set(lib.cublasLtMatmulDescSetAttribute, desc, _DESC_TRANSA, ctypes.c_int32(transa))
    _set(lib.cublasLtMatmulDescSetAttribute, desc, _DESC_TRANSB, ctypes.c_int32(_OP_N))
    _set(lib.cublasLtMatmulDescSetAttribute, desc, _DESC_EPILOGUE, ctypes.c_uint32(epilogue))
    _set(lib.cublasLtMatmulDescSetAttribute, desc, _DESC_AUX_LD, ctypes.c_int64(m))
    layouts = []
    for rows, cols in (a_shape, b_shape, (m, n)):  # column-major, packed: ld = rows
        layout = ctypes.c_void_p()
        _check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), data_type, rows, cols, rows), "layout")
        layouts.append(layout)
    pref = ctypes.c_void_p()
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
    _set(
        lib.cublasLtMatmulPreferenceSetAttribute, pref, _PREF_MAX_WORKSPACE, ctypes.c_uint64(WORKSPACE_BYTES)
    )
    for attribute in _PREF_MIN_ALIGNMENT:
        _set(lib.cublasLtMatmulPreferenceSetAttribute, pref, attribute, ctypes.c_uint32(align))
    results, count = (_HeuristicResult * CANDIDATES)(), ctypes.c_int(0)
    a, b, d = layouts
    with torch.cuda.device(device):
        _check(
            lib.cublasLtMatmulAlgoGetHeuristic(
                _handle(device), desc, a, b, d, d, pref, CANDIDATES, results, ctypes.byref(count)
            ),
            "cublasLtMatmulAlgoGetHeuristic",
        )
    candidates = [results[i].algo for i in range(count.value) if results[i].state == 0]
    if not candidates:
        raise CublasLtError(f"no cuBLASLt algorithm for epilogue {epilogue} at {m}x{n}")
    return _Plan(desc, (a, b, d), candidates)


_ONE, _ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)


def _matmul(
    a: torch.Tensor,
    transa: int,
    a_shape: tuple[int, int],
    b: torch.Tensor,
    b_shape: tuple[int, int],
    out: torch.Tensor,
    m: int,
    n: int,
    epilogue: int,
    aux: torch.Tensor,
) -> None:
    device = out.device.index or 0
    plan = _plan(device, out.dtype, transa, a_shape, b_shape, m, n, epilogue, _alignment(a, b, out, aux))
    lib = _lib()
    _set(lib.cublasLtMatmulDescSetAttribute, plan.desc, _DESC_AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
    stream = torch.cuda.current_stream(out.device).cuda_stream
    # from the caching allocator at every call, so it belongs to this stream (and, inside a
    # capture, to the graph's pool) like any tensor a kernel uses for a moment
    workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=out.device)
    la, lb, ld = plan.layouts

    def launch(algo: _Algo) -> int:
        return lib.cublasLtMatmul(
            _handle(device), plan.desc, ctypes.byref(_ONE), a.data_ptr(), la, b.data_ptr(), lb,
            ctypes.byref(_ZERO), out.data_ptr(), ld, out.data_ptr(), ld, ctypes.byref(algo),
            workspace.data_ptr(), WORKSPACE_BYTES, stream,
        )  # fmt: skip

    algo = plan.chosen
    if algo is None:
        if not TUNE or torch.cuda.is_current_stream_capturing():  # no timing inside a capture
            algo = plan.candidates[0]
        else:
            algo = plan.chosen = _fastest(plan.candidates, launch)
    _check(launch(algo), "cublasLtMatmul")


def _fastest(candidates: list[_Algo], launch: Callable[[_Algo], int], runs: int = 5) -> _Algo:
    """The candidate whose launches take the least time, timed on the current stream (the
    heuristic's first where only one runs)."""
    if len(candidates) == 1:
        return candidates[0]
    best, best_ms = candidates[0], float("inf")
    for algo in candidates:
        if launch(algo) != 0:  # an algorithm the heuristic offered but that declines these operands
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(runs):
            launch(algo)
        end.record()
        end.synchronize()
        if start.elapsed_time(end) < best_ms:
            best, best_ms = algo, start.elapsed_time(end)
    return best


def _check_operands(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if not (t.is_cuda and t.is_contiguous() and t.dtype in _DATA_TYPES):
            raise CublasLtError("cuBLASLt epilogues take contiguous bf16 or fp16 CUDA tensors")
    if len({t.dtype for t in tensors}) != 1:
        raise CublasLtError("cuBLASLt epilogues take operands of one dtype")


def linear_gelu(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gelu(x Wᵀ), x Wᵀ) for x (N, in) and W (out, in), from one GEMM."""
    _check_operands(x, weight)
    rows, (out_features, in_features) = x.shape[0], weight.shape
    act = x.new_empty(rows, out_features)
    pre = x.new_empty(rows, out_features)
    # actᵀ (out × N) = W (as the transpose of its column-major in × out) · xᵀ (in × N)
    _matmul(
        weight,
        _OP_T,
        (in_features, out_features),
        x,
        (in_features, rows),
        act,
        out_features,
        rows,
        EPILOGUE_GELU_AUX,
        pre,
    )
    return act, pre


def linear_input_grad_dgelu(dy: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """(dy W) ⊙ gelu′(pre) for dy (N, out), W (out, in) and pre (N, in), from one GEMM."""
    _check_operands(dy, weight, pre)
    rows, (out_features, in_features) = dy.shape[0], weight.shape
    dx = dy.new_empty(rows, in_features)
    # dxᵀ (in × N) = Wᵀ (column-major in × out, as stored) · dyᵀ (out × N)
    _matmul(
        weight,
        _OP_N,
        (in_features, out_features),
        dy,
        (out_features, rows),
        dx,
        in_features,
        rows,
        EPILOGUE_DGELU,
        pre,
    )
    return dx
