"""Linear layers whose weight gradients are computed on a side CUDA stream.

In the backward pass of ``y = x Wᵀ`` the input gradient ``dx = dy W`` is on the critical path (the
layer below needs it next) while the weight gradient ``dW = dyᵀ x`` is needed only by the
optimizer. Once ``WeightGradStream.attach`` has given a model's ``Linear`` layers their slots,
each layer's backward computes ``dx`` on the current stream and ``dW`` on a side stream, as an fp32
product straight into ``weight.grad`` (no bf16 rounding, no cast kernel), so the weight-gradient
GEMMs run alongside the memory-bound kernels of the layers below (LayerNorm, GELU, attention's
backward). ``WeightGradStream.join`` makes the current stream wait for them; call it before
anything reads a gradient.

Gradients accumulate as autograd's do, except that the first backward after ``begin_step``
overwrites ``weight.grad`` instead of adding to it (no zeroing pass).

Inside ``torch.compile`` the backward is one opaque op (``alpha::linear_backward``). Tensors read on
the side stream are protected with ``record_stream`` from the caching allocator, but Inductor
assigns memory itself too, so a model with slots attached is compiled with ``compile_options``:
no buffer reuse and no in-place reuse (which also leaves donated buffers unused: Inductor reuses
them only through those two). On CPU (used by the tests) the weight gradient is computed in place
of the side stream.

The side stream's GEMMs can be held to ``sm_count`` SMs (cuBLASLt's SM-count target). When the
layers' own kernels are small (a short micro-batch fills less than a wave of the GPU), leaving
them SMs to start on at once shortens the step more than it slows the weight gradients; when they
are large it only slows the weight gradients (docs/PERFORMANCE.md has the figures).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alpha.model.inductor_ops import register_fallbacks


def compile_options(model: nn.Module) -> dict[str, Any] | None:
    """``torch.compile`` options for ``model``: with slots attached, Inductor must not hand a buffer
    that the side stream may still be reading to a later kernel. Call it just before compiling:
    it registers our ops with Inductor (``alpha.model.inductor_ops``).

    Where the final sums of Inductor's mix-order reductions are deferred (``alpha.model.column_sums``),
    the LayerNorm backwards of shorter micro-batches take that fused form too: Inductor holds it back
    below 5 Mi elements (e.g. batch 20 of the seed model), where its two final sums would cost more
    than the second pass over the rows that it saves."""
    routed = register_fallbacks()
    if any(isinstance(m, Linear) and m.grad_slot is not None for m in model.modules()):
        options: dict[str, Any] = {"allow_buffer_reuse": False, "inplace_buffers": False}
        if routed and hasattr(torch._inductor.config.triton, "mix_order_reduction_non_strict_mode"):
            options["triton.mix_order_reduction_non_strict_mode"] = True
        return options
    return None


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on this device, or None when autocast is off."""
    if not torch.is_autocast_enabled(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


class Linear(nn.Linear):
    """``nn.Linear`` without bias whose weight gradient goes through a ``WeightGradStream``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.grad_slot: int | None = None  # set by WeightGradStream.attach
        # the weight in the compute dtype, refreshed each step by WeightGradStream.begin_step
        self.register_buffer("weight_shadow", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_slot is None or not (torch.is_grad_enabled() and self.weight.requires_grad):
            return F.linear(x, self.weight)
        return _LinearFunction.apply(x, self.weight, self.weight_shadow, self.grad_slot)


class WeightGradStream:
    """A side stream and the weights whose gradients are computed on it."""

    def __init__(
        self, device: torch.device, sm_count: int | None = None, shadow_dtype: torch.dtype | None = None
    ) -> None:
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.device = device
        # with a dtype: every linear weight keeps a copy in it, refreshed by begin_step in one
        # multi-tensor kernel, which the forward uses instead of casting each weight on its own
        self.shadow_dtype = shadow_dtype
        # False once something else (the optimizer) keeps the shadows current
        self.refresh_each_step = True
        self.sm_count: int | None = None  # SMs the side stream's GEMMs may use; None: all of them
        self._carveout: int | None = None  # SMs they leave to the current stream
        if self.stream is not None and sm_count and hasattr(torch._C, "_set_sm_carveout_experimental"):
            total = torch.cuda.get_device_properties(device).multi_processor_count
            if sm_count < total:
                self.sm_count, self._carveout = sm_count, total - sm_count
                # PyTorch warns once that both switches are experimental (from the backward pass,
                # so the warning surfaces in whatever calls backward): known and chosen here
                for message in ("Setting the SM carveout", "torch.backends.cuda.preferred_blas_library"):
                    warnings.filterwarnings("ignore", message=message)
        self.linears: dict[int, Linear] = {}  # by slot
        self._fresh: set[int] = set()  # slots whose next gradient overwrites weight.grad

    def attach(self, model: nn.Module) -> None:
        """Give every ``Linear`` of ``model`` a slot of this stream."""
        for module in model.modules():
            if isinstance(module, Linear):
                module.grad_slot = len(_SLOTS)
                _SLOTS.append(weakref.ref(self))
                self.linears[module.grad_slot] = module
                if self.shadow_dtype is not None and module.weight.dtype != self.shadow_dtype:
                    module.weight_shadow = torch.empty_like(module.weight, dtype=self.shadow_dtype)

    @property
    def weights(self) -> dict[int, nn.Parameter]:
        """The attached weights, by slot."""
        return {slot: m.weight for slot, m in self.linears.items()}

    def begin_step(self) -> None:
        """The next gradient of each weight overwrites ``weight.grad`` (a step's first micro-batch);
        the shadows are refreshed from the weights unless ``refresh_each_step`` is off."""
        self._fresh = set(self.linears)
        if self.refresh_each_step:
            self.refresh_shadows()

    def refresh_shadows(self) -> None:
        """Copy every linear weight into its shadow (the weights changed since the last step)."""
        pairs = [(m.weight_shadow, m.weight) for m in self.linears.values() if m.weight_shadow is not None]
        if pairs:
            with torch.no_grad():
                torch._foreach_copy_([s for s, _ in pairs], [w for _, w in pairs])

    def join(self) -> None:
        """Make the current stream wait for every weight gradient launched so far. A weight whose
        layer took no part in the step since ``begin_step`` has its gradient zeroed, as a step
        that starts from zeroed gradients would leave it."""
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        for slot in self._fresh:
            grad = self.linears[slot].weight.grad
            if grad is not None:
                grad.zero_()
        self._fresh = set()

    def compute(self, slot: int, dy: torch.Tensor, x: torch.Tensor) -> None:
        """weight.grad of ``slot`` (+)= dyᵀ x, on the side stream; dy (N, out), x (N, in)."""
        weight = self.linears[slot].weight
        if (dy.shape[1], x.shape[1]) != weight.shape:
            raise RuntimeError(f"linear slot {slot} belongs to a weight of another shape")
        overwrite = slot in self._fresh or weight.grad is None
        self._fresh.discard(slot)
        if weight.grad is None:
            weight.grad = torch.empty_like(weight)
        grad = weight.grad
        if self.stream is None:
            _weight_grad_into(grad, dy, x, overwrite)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream), _sm_carveout(self._carveout):
            _weight_grad_into(grad, dy, x, overwrite)
        dy.record_stream(self.stream)
        x.record_stream(self.stream)


# Every slot ever given, process-wide: a model's slots stay valid when another model is attached.
_SLOTS: list[weakref.ref[WeightGradStream]] = []


@contextlib.contextmanager
def _sm_carveout(carveout: int | None) -> Iterator[None]:
    """GEMMs launched inside leave ``carveout`` SMs free (cuBLASLt's SM-count target, which only
    the cuBLASLt path of PyTorch's matmul reads); PyTorch's settings are restored on the way out."""
    if carveout is None:
        yield
        return
    backend = torch.backends.cuda.preferred_blas_library()
    previous = torch._C._get_sm_carveout_experimental()
    torch.backends.cuda.preferred_blas_library("cublaslt")
    torch._C._set_sm_carveout_experimental(carveout)
    try:
        yield
    finally:
        torch._C._set_sm_carveout_experimental(previous)
        torch.backends.cuda.preferred_blas_library(backend)


def _weight_grad_into(grad: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, overwrite: bool) -> None:
    """grad (fp32) = or += dyᵀ x, with dy (N, out) and x (N, in) in the compute dtype."""
    if dy.is_cuda:
        widen = {"out_dtype": torch.float32} if dy.dtype != torch.float32 else {}
        if overwrite:
            torch.mm(dy.t(), x, out=grad, **widen)
        else:
            grad.add_(torch.mm(dy.t(), x, **widen))
    elif overwrite:
        torch.mm(dy.t().float(), x.float(), out=grad)
    else:
        grad.add_(dy.t().float() @ x.float())


@torch.library.custom_op("alpha::linear_backward", mutates_args=())
def linear_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, slot: int) -> torch.Tensor:
    """dx = dy W on the current stream; dW = dyᵀ x launched on the side stream into weight.grad."""
    owner = _SLOTS[slot]()
    if owner is None:
        raise RuntimeError(f"the WeightGradStream of linear slot {slot} is gone")
    dy2 = dy.reshape(-1, dy.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    dx = (dy2 @ weight).view(*dy.shape[:-1], weight.shape[1])
    owner.compute(slot, dy2, x2)
    return dx


@linear_backward.register_fake
def _(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, slot: int) -> torch.Tensor:
    return dy.new_empty(*dy.shape[:-1], weight.shape[1])


class _LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, shadow: torch.Tensor | None, slot: int
    ) -> torch.Tensor:  # type: ignore[override]
        dtype = autocast_dtype(x.device) or x.dtype
        x = x.to(dtype)
        weight = shadow if shadow is not None and shadow.dtype == dtype else weight.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.slot = slot
        return x @ weight.t()

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        return torch.ops.alpha.linear_backward(dy.contiguous(), x, weight, ctx.slot), None, None, None
