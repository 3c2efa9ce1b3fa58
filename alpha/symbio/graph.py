"""Composed activation graphs: small expression trees over five basis functions.

A graph is an immutable tree of ``Basis`` (silu, relu, gelu, identity, square), ``Scale``
(factor · child), ``Add`` and ``Mul`` nodes, applied elementwise to the FFN pre-activation h.
Its JSON form is the reference's (``{"type": "basis", "op": "silu"}``, ``{"type": "scale",
"child": ..., "factor": 0.85}``, ``{"type": "add"|"mul", "left": ..., "right": ...}``) and its
name the reference's ``nameGraph`` (``(relu+0.04·sq)×gelu``), so checkpoints, metrics and
dashboards stay compatible.

This module needs no torch, so configs and flags that hold graphs are checked before torch is
imported; ``alpha.symbio.activation`` evaluates graphs and holds the FFN's ``GraphActivation``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Union

from alpha.errors import ConfigError

BASIS_OPS: tuple[str, ...] = ("silu", "relu", "gelu", "identity", "square")
SHORT_NAMES = {"identity": "id", "square": "sq"}
DEFAULT_MAX_DEPTH = 4
DEFAULT_MAX_NODES = 10
# Parsing refuses anything deeper, whatever the configured limits: a guard against hostile JSON.
PARSE_DEPTH_LIMIT = 64


class GraphError(ConfigError):
    """An activation graph that is malformed, uses an unknown op, or breaks the size limits."""


@dataclass(frozen=True)
class Basis:
    op: str


@dataclass(frozen=True)
class Scale:
    child: Graph
    factor: float


@dataclass(frozen=True)
class Add:
    left: Graph
    right: Graph


@dataclass(frozen=True)
class Mul:
    left: Graph
    right: Graph


Graph = Union[Basis, Scale, Add, Mul]  # noqa: UP007 (a runtime alias used in isinstance-free code)
Path = tuple[str, ...]  # child attribute names from the root, e.g. ("left", "child")


# --------------------------------------------------------------------------- JSON


def from_json(obj: Any, *, max_depth: int | None = None, max_nodes: int | None = None) -> Graph:
    """Parse and validate the reference's JSON tree; optionally enforce size limits."""
    graph = _parse(obj, 1)
    if max_depth is not None or max_nodes is not None:
        check_limits(graph, max_depth=max_depth, max_nodes=max_nodes)
    return graph


def _parse(obj: Any, level: int) -> Graph:
    if level > PARSE_DEPTH_LIMIT:
        raise GraphError(f"activation graph is nested deeper than {PARSE_DEPTH_LIMIT} levels")
    if not isinstance(obj, dict):
        raise GraphError(f"activation graph node must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    expected = {
        "basis": {"op"},
        "scale": {"child", "factor"},
        "add": {"left", "right"},
        "mul": {"left", "right"},
    }
    if kind not in expected:
        raise GraphError(f"activation graph node type {kind!r} is not one of basis, scale, add, mul")
    keys = set(obj) - {"type"}
    if keys != expected[kind]:
        extra, missing = sorted(keys - expected[kind]), sorted(expected[kind] - keys)
        detail = f"unknown key {extra[0]!r}" if extra else f"missing key {missing[0]!r}"
        raise GraphError(f"activation graph {kind} node: {detail}")
    if kind == "basis":
        op = obj["op"]
        if op not in BASIS_OPS:
            raise GraphError(
                f"unknown basis op {op!r} in activation graph (expected one of {', '.join(BASIS_OPS)})"
            )
        return Basis(op)
    if kind == "scale":
        factor = obj["factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
            raise GraphError(f"activation graph scale factor must be a finite number, got {factor!r}")
        return Scale(_parse(obj["child"], level + 1), float(factor))
    left, right = _parse(obj["left"], level + 1), _parse(obj["right"], level + 1)
    return Add(left, right) if kind == "add" else Mul(left, right)


def to_json(graph: Graph) -> dict[str, Any]:
    if isinstance(graph, Basis):
        return {"type": "basis", "op": graph.op}
    if isinstance(graph, Scale):
        return {"type": "scale", "child": to_json(graph.child), "factor": graph.factor}
    kind = "add" if isinstance(graph, Add) else "mul"
    return {"type": kind, "left": to_json(graph.left), "right": to_json(graph.right)}


def dumps(graph: Graph) -> str:
    """Canonical compact JSON: the cache key of a graph and its form in metrics and checkpoints."""
    return json.dumps(to_json(graph), separators=(",", ":"))


def loads(text: str, *, max_depth: int | None = None, max_nodes: int | None = None) -> Graph:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GraphError(f"activation graph is not valid JSON: {exc}") from None
    return from_json(obj, max_depth=max_depth, max_nodes=max_nodes)


# --------------------------------------------------------------------------- structure


def children(graph: Graph) -> list[tuple[str, Graph]]:
    if isinstance(graph, Basis):
        return []
    if isinstance(graph, Scale):
        return [("child", graph.child)]
    return [("left", graph.left), ("right", graph.right)]


def node_count(graph: Graph) -> int:
    return 1 + sum(node_count(child) for _, child in children(graph))


def depth(graph: Graph) -> int:
    """A basis has depth 1; every scale/add/mul adds one to its deepest child."""
    return 1 + max((depth(child) for _, child in children(graph)), default=0)


def check_limits(graph: Graph, *, max_depth: int | None, max_nodes: int | None) -> None:
    if max_depth is not None and depth(graph) > max_depth:
        raise GraphError(
            f"activation graph {graph_name(graph)} has depth {depth(graph)} > maxGraphDepth {max_depth}"
        )
    if max_nodes is not None and node_count(graph) > max_nodes:
        raise GraphError(
            f"activation graph {graph_name(graph)} has {node_count(graph)} nodes > maxGraphNodes {max_nodes}"
        )


def within_limits(graph: Graph, max_depth: int, max_nodes: int) -> bool:
    return depth(graph) <= max_depth and node_count(graph) <= max_nodes


def walk(graph: Graph, path: Path = ()) -> Iterator[tuple[Path, Graph]]:
    """Every node with its path, parents before children (pre-order)."""
    yield path, graph
    for name, child in children(graph):
        yield from walk(child, (*path, name))


def replace_at(graph: Graph, path: Path, new: Graph) -> Graph:
    """A copy of ``graph`` with the node at ``path`` replaced (the root when path is empty)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(graph, Scale) and head == "child":
        return Scale(replace_at(graph.child, rest, new), graph.factor)
    if isinstance(graph, (Add, Mul)) and head in ("left", "right"):
        left = replace_at(graph.left, rest, new) if head == "left" else graph.left
        right = replace_at(graph.right, rest, new) if head == "right" else graph.right
        return type(graph)(left, right)
    raise ValueError(f"path {path} does not exist in {graph_name(graph)}")


# --------------------------------------------------------------------------- names


def format_factor(factor: float) -> str:
    """The reference's factor text: an integer as is, else 2 decimals (JS toFixed) trimmed."""
    if float(factor).is_integer():
        return str(int(factor))
    text = str(Decimal(factor).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
    return text.rstrip("0").rstrip(".")


def graph_name(graph: Graph) -> str:
    """``nameGraph``: silu, id, sq; ``0.85·silu+0.15·id``; ``(relu+0.04·sq)×gelu``."""
    if isinstance(graph, Basis):
        return SHORT_NAMES.get(graph.op, graph.op)
    if isinstance(graph, Scale):
        if abs(graph.factor - 1) < 0.001:
            return graph_name(graph.child)
        if abs(graph.factor) < 0.001:
            return "0"
        inner = graph_name(graph.child)
        if isinstance(graph.child, Add):
            inner = f"({inner})"
        return f"{format_factor(graph.factor)}·{inner}"
    if isinstance(graph, Add):
        return f"{graph_name(graph.left)}+{graph_name(graph.right)}"
    left, right = graph_name(graph.left), graph_name(graph.right)
    if isinstance(graph.left, Add):
        left = f"({left})"
    if isinstance(graph.right, Add):
        right = f"({right})"
    return f"{left}×{right}"
