"""The LayerNorm weight and bias gradients of Inductor's mix-order reductions, summed once a backward.

For a LayerNorm's backward over many rows (from about 5 Mi elements, e.g. batch 128 of the seed
model) Inductor fuses the input gradient and the weight and bias gradients into one "mix-order
reduction" kernel: each program sums its rows' contributions into a workspace of partial sums,
and two final reductions over that workspace's rows, written into the compiled module as
``ws[a : b].view(n, c).sum(dim=0)``, give the two gradients. Each is ATen's reduce on a few MB
(6 µs alone), but it sits on the critical stream between the norm's kernel and the next GEMM, and
beside the side stream's weight-gradient GEMMs it takes 20–35 µs: two per LayerNorm, 0.9 ms of a
batch-128 step of the seed model.

Nothing in the backward reads those sums: only autograd does, when it accumulates the parameters'
gradients after the compiled backward has returned. ``route_mix_order_sums`` rewrites a final sum
that the graph only returns (and at most views) into ``alpha::column_sum_deferred``. While a
``DeferredSums`` is open on the tensor's device, that op hands back an empty tensor and keeps the
workspace alive; the first gradient hook of the model's parameters (which autograd calls before
it accumulates a gradient) or the end of the scope then computes every pending sum with one
Triton kernel (``alpha.model.column_sum_kernels``) on the current stream. With no scope open the
op sums at once. With the sums deferred, the fused form pays below Inductor's 5 Mi-element floor
too, so ``compile_options`` (``alpha.model.linear``) lifts it for our models; only graphs that
call our ops get the rewrite, so a plain PyTorch model compiled in the same process keeps
Inductor's code. The rewrite is a patch of Inductor's internals, so it checks that the method it
wraps is there and leaves Inductor alone otherwise (``ALPHA_MIX_ORDER_SUMS=0`` turns it off); the
compile caches are keyed by it (``alpha.model.inductor_ops``).

It assumes what holds for a model whose (C,)-shaped weights are parameters: a column sum that a
compiled backward returns is a parameter's gradient, so a hook sees it before anything reads it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from alpha.model.kernel_support import kernels_available

ENV = "ALPHA_MIX_ORDER_SUMS"

# the line Inductor writes for a mix-order reduction's final sum (as in torch 2.11 and 2.13; a GPU
# test checks the installed one):
#   buf3 = ws[0 : 2048 * 384].view(2048, 384).sum(dim=0)[.view([384])][.to(torch.bfloat16)]
_FINAL_SUM = re.compile(r"^(?P<out>\w+) = (?P<rows>\w+\[[^\]]+\]\.view\([^()]+\))\.sum\(dim=0\)(?P<rest>.*)$")
# what may follow the sum on a line for the sum to be deferred: only a view of it, no kernel
_VIEWS_ONLY = re.compile(r"^(\.view\(\[[^\]]*\]\))?$")


class DeferredSums:
    """The column sums deferred on one device, and when they are computed."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.deferred = 0  # sums deferred so far
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (partial sums, their sum)
        self._hooked: set[int] = set()  # ids of the parameters that flush us before accumulating

    @contextlib.contextmanager
    def open(self, model: nn.Module) -> Iterator[None]:
        """Defer the column sums of backward passes run inside; every parameter of ``model`` that
        takes a gradient gets a hook that computes them before autograd accumulates it."""
        self.attach(model)
        key = _device_key(self.device)
        previous = _OPEN.get(key)
        _OPEN[key] = weakref.ref(self)
        try:
            yield
        finally:
            if previous is None:
                del _OPEN[key]
            else:
                _OPEN[key] = previous
            self.flush()

    def attach(self, model: nn.Module) -> None:
        """Hook every parameter of ``model`` that takes a gradient and is not hooked yet."""
        hook = functools.partial(_flush_before_accumulating, weakref.ref(self))
        for p in model.parameters():
            if p.requires_grad and id(p) not in self._hooked:
                p.register_hook(hook)
                self._hooked.add(id(p))
                weakref.finalize(p, self._hooked.discard, id(p))

    def defer(self, x: torch.Tensor) -> torch.Tensor:
        """An empty tensor that ``flush`` fills with ``x.sum(dim=0)``; x is kept until then."""
        y = x.new_empty(x.shape[1:])
        self._pending.append((x, y))
        self.deferred += 1
        return y

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Compute every pending sum, on the current stream."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        sum_columns_into([x for x, _ in pending], [y for _, y in pending])


# The open scope of each device, by ``_device_key``.
_OPEN: dict[tuple[str, int | None], weakref.ref[DeferredSums]] = {}


def _device_key(device: torch.device) -> tuple[str, int | None]:
    """``cuda`` and ``cuda:0`` (on a process whose current GPU is 0) are one device."""
    index = device.index
    if index is None and device.type == "cuda":
        index = torch.cuda.current_device()
    return device.type, index


def open_sums(device: torch.device) -> DeferredSums | None:
    """The ``DeferredSums`` open on ``device``, or None."""
    ref = _OPEN.get(_device_key(device))
    return None if ref is None else ref()


def _flush_before_accumulating(owner_ref: weakref.ref[DeferredSums], grad: torch.Tensor) -> None:
    owner = owner_ref()
    if owner is not None and owner.pending:
        owner.flush()


def sum_columns_into(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
    """``y.copy_(x.sum(dim=0))`` for every pair: on CUDA with one kernel launch per shape and dtype."""
    if xs and kernels_available(xs[0].device):
        from alpha.model.column_sum_kernels import sum_columns_into as kernel

        kernel(xs, ys)
        return
    for x, y in zip(xs, ys, strict=True):
        torch.sum(x, dim=0, out=y)


@torch.library.custom_op("alpha::column_sum_deferred", mutates_args=())
def column_sum_deferred(x: torch.Tensor) -> torch.Tensor:
    """``x.sum(dim=0)`` of a 2-D tensor; while a ``DeferredSums`` is open on x's device, an empty
    tensor that the scope fills before autograd accumulates it (only for a sum its graph merely
    returns)."""
    owner = open_sums(x.device)
    if owner is None or x.dim() != 2:
        return x.sum(dim=0)
    return owner.defer(x)


@column_sum_deferred.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[1:])


def rewrite_final_sum(line: Any, returned_only: Callable[[str], bool]) -> Any:
    """``line`` with a mix-order reduction's final ``.sum(dim=0)`` routed to
    ``alpha::column_sum_deferred`` where ``returned_only`` says that the graph does nothing with the
    sum but return it and the line only views it; any other line (or a non-string line object)
    unchanged."""
    if not isinstance(line, str):
        return line
    match = _FINAL_SUM.match(line)
    if match is None or _VIEWS_ONLY.match(match["rest"]) is None or not returned_only(match["out"]):
        return line
    return f"{match['out']} = torch.ops.alpha.column_sum_deferred({match['rows']}){match['rest']}"


def returned_only(scheduler: Any, name: str) -> bool:
    """Whether the buffer ``name`` is among the graph's outputs and nothing in the graph reads it
    (every reader Inductor's ``scheduler`` knows of is the output, or only orders after it)."""
    from torch._inductor.scheduler import OutputNode

    buffer = getattr(scheduler, "name_to_buf", {}).get(name)
    if buffer is None:
        return False
    users = list(buffer.users)
    returned = any(isinstance(user.node, OutputNode) for user in users)
    return returned and all(isinstance(user.node, OutputNode) or user.is_weak for user in users)


def calls_our_ops(graph: Any) -> bool:
    """Whether the FX graph that Inductor is lowering (``graph.graph``) calls an ``alpha`` op: only
    our models' graphs get the rewrite, so a plain PyTorch model compiled in the same process
    (``alpha bench --baseline``) keeps Inductor's code."""
    nodes = getattr(getattr(graph, "graph", None), "nodes", ())
    return any(getattr(node.target, "namespace", None) == "alpha" for node in nodes)


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def route_mix_order_sums() -> bool:
    """Install the rewrite in Inductor (once); False where this Inductor has no such method or the
    variable turned it off."""
    if not enabled():
        return False
    try:
        from torch._inductor.codegen.simd import SIMDScheduling
    except ImportError:
        return False
    original = getattr(SIMDScheduling, "codegen_mix_order_reduction", None)
    if original is None:
        return False
    if not getattr(original, "_alpha_routed", False):
        SIMDScheduling.codegen_mix_order_reduction = routed(original)  # type: ignore[method-assign]
    return True


def routed(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` (a scheduling method that writes wrapper lines) with every line it writes to the
    graph's wrapper code passed through ``rewrite_final_sum``."""
    from torch._inductor.virtualized import V

    @functools.wraps(original)
    def codegen(self: Any, *args: Any) -> Any:
        if not enabled() or not calls_our_ops(V.graph):
            return original(self, *args)
        wrapper = V.graph.wrapper_code
        shadowed = wrapper.__dict__.get("writeline")
        writeline: Callable[[Any], None] = wrapper.writeline
        only_returned = functools.partial(returned_only, getattr(self, "scheduler", None))
        wrapper.writeline = lambda line: writeline(rewrite_final_sum(line, only_returned))
        try:
            return original(self, *args)
        finally:
            if shadowed is None:
                del wrapper.writeline
            else:
                wrapper.writeline = shadowed

    codegen._alpha_routed = True  # type: ignore[attr-defined]
    return codegen
