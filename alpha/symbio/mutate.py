"""Mutation, simplification and crossover of activation graphs.

The six operators keep the reference's labels and parameter ranges, without its no-ops:

| label           | effect                                    | randomness                          |
|-----------------|-------------------------------------------|-------------------------------------|
| inject_residual | f -> a·f + (1-a)·id                       | a ~ U(0.6, 0.9)                     |
| inject_gate     | f -> f × g                                | g ~ pool minus {identity, square}   |
| add_term        | f -> f + w·g                              | g ~ pool, w ~ U(0.05, 0.3)          |
| swap_basis      | one leaf (the root too) -> another op     | leaf uniform, op uniform among rest |
| perturb_scale   | one scale factor × (1 + u)                | u ~ U(-0.2, 0.2)                    |
| prune           | drop add terms with abs(factor) < 0.05    | none                                |

New factors are rounded to 2 decimals, as in the reference. Every result is simplified; a result
that is identical to its parent or breaks the depth/node limits is rejected and another operator
is drawn. After ``MAX_ATTEMPTS`` rejections the child is an honest ``clone``, never a "mutation"
that changed nothing.

``simplify`` only applies rewrites that preserve the function: factor-1 scales vanish, nested
scales multiply, zero terms and zero factors collapse, like terms of a sum merge
(``0.85·silu+0.15·id+0.21·id`` -> ``0.85·silu+0.36·id``). It does not rewrite ``f×id`` to ``f``
(the reference did, which changed the function).

All randomness comes from the ``random.Random`` passed in, so one seed gives one search.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from alpha.symbio.graph import (
    Add,
    Basis,
    Graph,
    Mul,
    Path,
    Scale,
    replace_at,
    walk,
    within_limits,
)

OPERATORS: tuple[str, ...] = (
    "inject_residual",
    "inject_gate",
    "add_term",
    "swap_basis",
    "perturb_scale",
    "prune",
)
CLONE = "clone"
CROSSOVER = "crossover"
GATE_EXCLUDED = frozenset({"identity", "square"})
PRUNE_THRESHOLD = 0.05
MAX_ATTEMPTS = 12
ZERO: Graph = Scale(Basis("identity"), 0.0)


def _tidy(value: float) -> float:
    """12 significant digits: far below any effect on the function, enough to keep 0.15 + 0.21
    from being stored as 0.36000000000000004."""
    return float(f"{value:.12g}")


@dataclass(frozen=True)
class Mutation:
    graph: Graph
    label: str  # an operator label, "clone" or "crossover"


# --------------------------------------------------------------------------- simplification


def is_zero(graph: Graph) -> bool:
    return isinstance(graph, Scale) and graph.factor == 0.0


def _terms(graph: Graph) -> list[tuple[float, Graph]]:
    """A simplified graph as a sum of coefficient × base terms."""
    if isinstance(graph, Add):
        return _terms(graph.left) + _terms(graph.right)
    if isinstance(graph, Scale):
        return [(graph.factor, graph.child)]
    return [(1.0, graph)]


def _from_terms(terms: list[tuple[float, Graph]]) -> Graph:
    nodes = [base if coef == 1.0 else Scale(base, coef) for coef, base in terms]
    if not nodes:
        return ZERO
    result = nodes[0]
    for node in nodes[1:]:
        result = Add(result, node)
    return result


def simplify(graph: Graph) -> Graph:
    """Bottom-up, semantics-preserving rewrites (see the module docstring)."""
    if isinstance(graph, Basis):
        return graph
    if isinstance(graph, Scale):
        child, factor = simplify(graph.child), graph.factor
        if isinstance(child, Scale):
            factor, child = _tidy(factor * child.factor), child.child
        if factor == 0.0 or is_zero(child):
            return ZERO
        if factor == 1.0:
            return child
        return Scale(child, factor)
    if isinstance(graph, Mul):
        left, right = simplify(graph.left), simplify(graph.right)
        if is_zero(left) or is_zero(right):
            return ZERO
        return Mul(left, right)
    merged: dict[Graph, float] = {}  # insertion order keeps the first occurrence's position
    for coef, base in _terms(simplify(graph.left)) + _terms(simplify(graph.right)):
        merged[base] = _tidy(merged.get(base, 0.0) + coef)
    return _from_terms([(coef, base) for base, coef in merged.items() if coef != 0.0])


def prune(graph: Graph, threshold: float = PRUNE_THRESHOLD) -> Graph:
    """Drop every sum term whose factor is below ``threshold`` in magnitude (keeping at least one)."""
    graph = simplify(graph)
    if isinstance(graph, Basis):
        return graph
    if isinstance(graph, Scale):
        return simplify(Scale(prune(graph.child, threshold), graph.factor))
    if isinstance(graph, Mul):
        return simplify(Mul(prune(graph.left, threshold), prune(graph.right, threshold)))
    terms = [(coef, prune(base, threshold)) for coef, base in _terms(graph)]
    kept = [(coef, base) for coef, base in terms if abs(coef) >= threshold]
    if not kept:
        kept = [max(terms, key=lambda term: abs(term[0]))]
    return simplify(_from_terms(kept))


# --------------------------------------------------------------------------- operators


def _factor(rng: random.Random, low: float, high: float) -> float:
    return round(rng.uniform(low, high), 2)


def _apply(op: str, graph: Graph, rng: random.Random, pool: Sequence[str]) -> Graph | None:
    """One operator on ``graph``; None when the operator cannot apply to it."""
    if op == "inject_residual":
        a = _factor(rng, 0.6, 0.9)
        return Add(Scale(graph, a), Scale(Basis("identity"), round(1 - a, 2)))
    if op == "inject_gate":
        gates = [g for g in pool if g not in GATE_EXCLUDED]
        return Mul(graph, Basis(rng.choice(gates))) if gates else None
    if op == "add_term":
        return Add(graph, Scale(Basis(rng.choice(list(pool))), _factor(rng, 0.05, 0.3)))
    if op == "swap_basis":
        leaves: list[tuple[Path, Basis]] = [(p, n) for p, n in walk(graph) if isinstance(n, Basis)]
        swappable = [(p, n) for p, n in leaves if any(op != n.op for op in pool)]
        if not swappable:
            return None
        path, leaf = rng.choice(swappable)
        return replace_at(graph, path, Basis(rng.choice([op for op in pool if op != leaf.op])))
    if op == "perturb_scale":
        scales = [(p, n) for p, n in walk(graph) if isinstance(n, Scale) and n.factor != 0.0]
        if not scales:
            return None
        path, node = rng.choice(scales)
        factor = round(node.factor * (1 + rng.uniform(-0.2, 0.2)), 2)
        if factor == 0.0:
            factor = 0.01 if node.factor > 0 else -0.01
        return replace_at(graph, path, Scale(node.child, factor))
    if op == "prune":
        return prune(graph)
    raise ValueError(f"unknown mutation operator {op!r}")


def mutate(graph: Graph, rng: random.Random, pool: Sequence[str], max_depth: int, max_nodes: int) -> Mutation:
    """A child that really differs from ``graph`` and fits the limits, or an honest clone."""
    parent = simplify(graph)
    for _ in range(MAX_ATTEMPTS):
        op = rng.choice(OPERATORS)
        result = _apply(op, parent, rng, pool)
        if result is None:
            continue
        child = simplify(result)
        if child != parent and child != graph and within_limits(child, max_depth, max_nodes):
            return Mutation(child, op)
    return Mutation(graph, CLONE)


def crossover(a: Graph, b: Graph, rng: random.Random, max_depth: int, max_nodes: int) -> Mutation:
    """α·a + (1-α)·b with α ~ U(0.3, 0.7); when that breaks the limits, a clone of one parent."""
    alpha = _factor(rng, 0.3, 0.7)
    child = simplify(Add(Scale(a, alpha), Scale(b, round(1 - alpha, 2))))
    if within_limits(child, max_depth, max_nodes) and child not in (a, b):
        return Mutation(child, CROSSOVER)
    return Mutation(a if rng.random() < 0.5 else b, CLONE)


def mutate_activation(name: str, rng: random.Random, pool: Sequence[str]) -> Mutation | None:
    """Fixed mode: a uniformly chosen different activation of the pool (None if there is none)."""
    others = [other for other in pool if other != name]
    if not others:
        return None
    return Mutation(Basis(rng.choice(others)), "swap_activation")
