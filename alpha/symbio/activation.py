"""Activation graphs as PyTorch code: their evaluation, generated functions and the FFN's module.

``alpha.symbio.graph`` is the graphs themselves (structure, JSON, names, limits) and needs no torch;
this module runs them. Evaluation generates one Python function per graph (shared subtrees
computed once). On CUDA that function is wrapped in ``torch.compile`` once per distinct graph, so
a composite such as ``(relu+0.04·sq)×gelu`` is one fused kernel; on CPU it runs eagerly.
``GraphActivation`` is the ``nn.Module`` the FFN holds; swapping its graph never touches a
parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alpha.symbio.graph import Add, Basis, Graph, Scale, dumps, graph_name


def evaluate(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """Plain recursive evaluation: the definition the generated code must agree with."""
    if isinstance(graph, Basis):
        return _BASIS_FN[graph.op](x)
    if isinstance(graph, Scale):
        return graph.factor * evaluate(graph.child, x)
    if isinstance(graph, Add):
        return evaluate(graph.left, x) + evaluate(graph.right, x)
    return evaluate(graph.left, x) * evaluate(graph.right, x)


_BASIS_FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "relu": F.relu,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "identity": lambda x: x,
    "square": lambda x: x * x,
}
_BASIS_SRC = {
    "silu": "F.silu(x)",
    "relu": "F.relu(x)",
    "gelu": 'F.gelu(x, approximate="tanh")',
    "identity": "x",
    "square": "x * x",
}


def to_source(graph: Graph) -> str:
    """Python source of ``def composed_activation(x)``; each distinct subtree is computed once."""
    names: dict[Graph, str] = {}
    lines: list[str] = []

    def emit(node: Graph) -> str:
        if node in names:
            return names[node]
        if isinstance(node, Basis) and node.op == "identity":
            return "x"
        if isinstance(node, Basis):
            expr = _BASIS_SRC[node.op]
        elif isinstance(node, Scale):
            expr = f"{float(node.factor)!r} * {emit(node.child)}"
        else:
            op = "+" if isinstance(node, Add) else "*"
            expr = f"{emit(node.left)} {op} {emit(node.right)}"
        names[node] = f"t{len(names)}"
        lines.append(f"    {names[node]} = {expr}")
        return names[node]

    result = emit(graph)
    return "\n".join(["def composed_activation(x):", *lines, f"    return {result}", ""])


def build_function(graph: Graph) -> Callable[[torch.Tensor], torch.Tensor]:
    """A new function (with its own code object, so torch.compile caches it separately)."""
    namespace: dict[str, Any] = {"F": F}
    code = compile(to_source(graph), f"<activation {graph_name(graph)}>", "exec")
    exec(code, namespace)  # noqa: S102 (source generated from a validated tree, no user text)
    return namespace["composed_activation"]


_EAGER: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
_COMPILED: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def eager_function(graph: Graph) -> Callable[[torch.Tensor], torch.Tensor]:
    key = dumps(graph)
    if key not in _EAGER:
        _EAGER[key] = build_function(graph)
    return _EAGER[key]


def compiled_function(graph: Graph) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` of the graph's function, built once per distinct graph per process."""
    key = dumps(graph)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(build_function(graph), fullgraph=True)
    return _COMPILED[key]


class GraphActivation(nn.Module):
    """Elementwise activation defined by a graph. No parameters: swapping graphs is free.

    ``swappable=True`` (during a search) lets the graph change without retracing a compiled model.
    With ``program_capacity`` the graph is data: its program (``alpha.symbio.program``) sits in
    a buffer that one op reads, so the model and a captured step graph serve every graph that
    fits. Without it the activation stays outside the compiled graph (one graph break per block)
    and changing the graph recompiles only this small function. ``swappable=False`` lets a
    compiled model inline and fuse the graph. ``compile`` (None: on CUDA only) compiles the
    activation itself when it sits behind the graph break.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        swappable: bool = False,
        compile: bool | None = None,
        program_capacity: int | None = None,
    ) -> None:
        super().__init__()
        self.swappable = swappable
        self.compile = compile
        if program_capacity is None:
            program = None
        else:
            from alpha.symbio.program import buffer_size

            program = torch.zeros(buffer_size(program_capacity))
        self.register_buffer("program", program, persistent=False)
        self.set_graph(graph)

    def set_graph(self, graph: Graph, program: torch.Tensor | None = None) -> None:
        """``program``: the graph's program buffer, already built on the host (a search builds it
        once for every block); copied without waiting when it is in pinned memory."""
        self.graph = graph
        self.name = graph_name(graph)
        self._fn = eager_function(graph)
        if self.program is not None:
            from alpha.symbio.program import capacity_of, program_tensor  # also registers the op

            if program is None:
                program = program_tensor(graph, capacity_of(self.program))
            with torch.no_grad():
                self.program.copy_(program, non_blocking=program.is_pinned())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swappable and self.program is not None:
            return torch.ops.alpha.program_activation(x, self.program)
        if self.swappable:
            return self._isolated(x)
        return self._fn(x)

    @torch.compiler.disable
    def _isolated(self, x: torch.Tensor) -> torch.Tensor:
        use_compile = x.is_cuda if self.compile is None else self.compile
        fn = compiled_function(self.graph) if use_compile else self._fn
        return fn(x)

    def extra_repr(self) -> str:
        return self.name
