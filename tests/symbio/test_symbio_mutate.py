"""Mutation operators: real changes or an honest clone; simplification preserves the function."""

from __future__ import annotations

import random

import torch

from alpha.symbio.activation import evaluate
from alpha.symbio.graph import BASIS_OPS, Add, Basis, Mul, Scale, graph_name, node_count, walk
from alpha.symbio.mutate import OPERATORS, ZERO, crossover, mutate, prune, simplify

POOL = list(BASIS_OPS)
X = torch.linspace(-4, 4, 4001, dtype=torch.float64)


def _same_function(a, b) -> bool:
    return torch.allclose(evaluate(a, X), evaluate(b, X), rtol=1e-9, atol=1e-9)


def _random_graph(rng: random.Random, depth: int = 4):
    """Any tree, including the shapes simplification must handle: zeros, factor 1, nested scales."""
    if depth == 1 or rng.random() < 0.25:
        return Basis(rng.choice(POOL))
    kind = rng.choice(["scale", "add", "mul"])
    if kind == "scale":
        factor = rng.choice([0.0, 1.0, 0.5, -0.3, 0.02, 1.7, rng.uniform(-2, 2)])
        return Scale(_random_graph(rng, depth - 1), factor)
    left, right = _random_graph(rng, depth - 1), _random_graph(rng, depth - 1)
    return Add(left, right) if kind == "add" else Mul(left, right)


def test_simplify_preserves_the_function_on_random_graphs():
    rng = random.Random(7)
    for _ in range(400):
        graph = _random_graph(rng, 5)
        simple = simplify(graph)
        assert _same_function(graph, simple), graph_name(graph)
        assert node_count(simple) <= node_count(graph) + 1
        assert simplify(simple) == simple


def test_simplify_merges_like_terms_and_keeps_mul_by_identity():
    unmerged = Add(
        Add(Scale(Basis("silu"), 0.85), Scale(Basis("identity"), 0.15)), Scale(Basis("identity"), 0.21)
    )
    assert graph_name(simplify(unmerged)) == "0.85·silu+0.36·id"
    gated = Mul(Basis("silu"), Basis("identity"))
    assert simplify(gated) == gated  # f×id is not f
    assert simplify(Scale(Scale(Basis("relu"), 0.5), 2.0)) == Basis("relu")
    assert simplify(Add(Basis("relu"), Scale(Basis("gelu"), 0.0))) == Basis("relu")
    assert simplify(Mul(Basis("relu"), Scale(Basis("gelu"), 0.0))) == ZERO


def test_prune_removes_near_zero_branches():
    assert (
        graph_name(prune(Mul(Add(Basis("relu"), Scale(Basis("square"), 0.04)), Basis("gelu")))) == "relu×gelu"
    )
    kept = Add(Basis("relu"), Scale(Basis("square"), 0.3))
    assert prune(kept) == kept


def test_every_labelled_mutation_changes_the_tree_and_fits_the_limits():
    rng = random.Random(0)
    labels: dict[str, int] = {}
    graph = Basis("silu")
    for i in range(1500):
        parent = graph if i % 5 else Basis(rng.choice(POOL))
        child = mutate(parent, rng, POOL, 4, 10)
        labels[child.label] = labels.get(child.label, 0) + 1
        if child.label != "clone":
            assert child.graph != parent and child.graph != simplify(parent)
        assert node_count(child.graph) <= 10
        graph = child.graph
    assert set(OPERATORS) <= set(labels), labels
    assert labels.get("clone", 0) < 30


def test_swap_basis_replaces_a_root_leaf_and_perturb_is_multiplicative():
    rng = random.Random(1)
    roots = set()
    for _ in range(200):
        child = mutate(Basis("relu"), rng, POOL, 4, 10)
        if child.label == "swap_basis":
            roots.add(child.graph)
        if child.label == "perturb_scale":
            raise AssertionError("a graph without scales cannot be perturbed")
    assert roots == {Basis(op) for op in POOL if op != "relu"}
    parent = Add(Basis("relu"), Scale(Basis("square"), 0.5))
    for _ in range(200):
        child = mutate(parent, rng, POOL, 4, 10)
        if child.label == "perturb_scale":
            factors = [n.factor for _, n in walk(child.graph) if isinstance(n, Scale)]
            assert len(factors) == 1 and 0.4 - 1e-9 <= factors[0] <= 0.6 + 1e-9 and factors[0] != 0.5


def test_gate_pool_without_gates_and_single_op_pool_do_not_break():
    rng = random.Random(2)
    for _ in range(100):
        child = mutate(Basis("square"), rng, ["identity", "square"], 4, 10)
        assert child.label != "inject_gate"
    child = mutate(Basis("relu"), rng, ["relu"], 1, 1)
    assert child.label == "clone" and child.graph == Basis("relu")


def test_crossover_blends_or_clones_when_too_big():
    rng = random.Random(3)
    child = crossover(Basis("relu"), Basis("gelu"), rng, 4, 10)
    assert child.label == "crossover"
    assert _same_function(
        child.graph,
        Add(Scale(Basis("relu"), child.graph.left.factor), Scale(Basis("gelu"), child.graph.right.factor)),
    )
    big = Mul(Add(Basis("relu"), Scale(Basis("square"), 0.04)), Basis("gelu"))
    child = crossover(big, big, rng, 4, 10)
    assert child.label == "clone" and child.graph == big


def test_same_seed_same_mutations():
    def chain(seed: int) -> list[str]:
        rng, graph, out = random.Random(seed), Basis("gelu"), []
        for _ in range(50):
            m = mutate(graph, rng, POOL, 4, 10)
            out.append(f"{m.label}:{graph_name(m.graph)}")
            graph = m.graph
        return out

    assert chain(11) == chain(11)
    assert chain(11) != chain(12)
