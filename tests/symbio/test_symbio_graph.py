"""Activation graphs: the reference's JSON and names, strict parsing, fast exact evaluation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alpha.errors import ConfigError
from alpha.symbio.activation import GraphActivation, build_function, evaluate
from alpha.symbio.graph import (
    Add,
    Basis,
    GraphError,
    Mul,
    Scale,
    depth,
    dumps,
    from_json,
    graph_name,
    loads,
    node_count,
    to_json,
)

RELU_SQ_GELU = Mul(Add(Basis("relu"), Scale(Basis("square"), 0.04)), Basis("gelu"))


def test_names_match_the_reference_examples():
    assert graph_name(RELU_SQ_GELU) == "(relu+0.04·sq)×gelu"
    residual = Add(Scale(Basis("silu"), 0.85), Scale(Basis("identity"), 0.15))
    assert graph_name(residual) == "0.85·silu+0.15·id"
    assert graph_name(Add(residual, Scale(Basis("identity"), 0.21))) == "0.85·silu+0.15·id+0.21·id"
    assert graph_name(Mul(residual, Basis("gelu"))) == "(0.85·silu+0.15·id)×gelu"
    assert graph_name(Scale(Add(Basis("silu"), Basis("relu")), 0.5)) == "0.5·(silu+relu)"
    assert graph_name(Scale(Basis("relu"), 1.0004)) == "relu"
    assert graph_name(Scale(Basis("relu"), 0.0)) == "0"
    assert graph_name(Scale(Basis("relu"), 2.0)) == "2·relu"
    assert graph_name(Scale(Basis("relu"), 0.125)) == "0.13·relu"  # JS toFixed rounds ties up
    assert graph_name(Scale(Basis("relu"), 0.30)) == "0.3·relu"


def test_json_round_trip_and_reference_shape():
    text = (
        '{"type":"mul","left":{"type":"add","left":{"type":"basis","op":"relu"},'
        '"right":{"type":"scale","child":{"type":"basis","op":"square"},"factor":0.04}},'
        '"right":{"type":"basis","op":"gelu"}}'
    )
    graph = loads(text)
    assert graph == RELU_SQ_GELU
    assert dumps(graph) == text
    assert from_json(json.loads(json.dumps(to_json(graph)))) == graph
    assert node_count(graph) == 6 and depth(graph) == 4


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"type": "basis", "op": "tanh"}, "unknown basis op 'tanh'"),
        ({"type": "pow", "left": {}}, "node type 'pow'"),
        ({"type": "scale", "child": {"type": "basis", "op": "relu"}}, "missing key 'factor'"),
        ({"type": "basis", "op": "relu", "extra": 1}, "unknown key 'extra'"),
        ({"type": "scale", "child": {"type": "basis", "op": "relu"}, "factor": "2"}, "finite number"),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_graphs_are_config_errors(obj, fragment):
    with pytest.raises(GraphError, match=fragment) as info:
        from_json(obj)
    assert isinstance(info.value, ConfigError)


def test_limits_are_enforced():
    from_json(to_json(RELU_SQ_GELU), max_depth=4, max_nodes=6)
    with pytest.raises(GraphError, match="depth 4 > maxGraphDepth 3"):
        from_json(to_json(RELU_SQ_GELU), max_depth=3)
    with pytest.raises(GraphError, match="6 nodes > maxGraphNodes 5"):
        from_json(to_json(RELU_SQ_GELU), max_nodes=5)
    deep: dict = {"type": "basis", "op": "relu"}
    for _ in range(100):
        deep = {"type": "scale", "child": deep, "factor": 0.5}
    with pytest.raises(GraphError, match="nested deeper"):
        from_json(deep)


def test_evaluation_matches_the_formula_with_tanh_gelu():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    gelu_tanh = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    expected = (torch.relu(x) + 0.04 * x * x) * gelu_tanh
    torch.testing.assert_close(build_function(RELU_SQ_GELU)(x), expected)
    torch.testing.assert_close(evaluate(RELU_SQ_GELU, x), expected)
    shared = Add(Mul(Basis("silu"), Basis("silu")), Scale(Basis("silu"), 0.5))
    torch.testing.assert_close(build_function(shared)(x), evaluate(shared, x))
    assert build_function(Basis("identity"))(x) is x


def test_graph_activation_module_swaps_without_parameters():
    module = GraphActivation(Basis("relu"))
    assert list(module.parameters()) == []
    x = torch.randn(4, 16, requires_grad=True)
    module(x).sum().backward()
    torch.testing.assert_close(x.grad, (x > 0).float())
    module.set_graph(RELU_SQ_GELU)
    torch.testing.assert_close(module(x), evaluate(RELU_SQ_GELU, x))
    assert "(relu+0.04·sq)×gelu" in repr(module)
    swappable = GraphActivation(RELU_SQ_GELU, swappable=True)
    torch.testing.assert_close(swappable(x), module(x))


def test_swapping_graphs_does_not_recompile_a_compiled_model():
    """The search swaps graphs every few steps: a compiled GPT must not be retraced for each."""
    from torch._dynamo.utils import counters

    from alpha.config import ModelConfig
    from alpha.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=2, n_embd=16, n_head=2))
    acts = [GraphActivation(Basis("gelu"), swappable=True, compile=False) for _ in model.layers]
    for block, act in zip(model.layers, acts, strict=True):
        block.mlp.act = act
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    x = torch.randint(0, 50, (2, 8))
    compiled(x, x).backward()
    traced = counters["stats"]["unique_graphs"]
    for graph in [Basis("relu"), RELU_SQ_GELU, Mul(Basis("silu"), Basis("gelu"))]:
        for act in acts:
            act.set_graph(graph)
        loss = compiled(x, x)
        loss.backward()
        torch.testing.assert_close(loss, model(x, x))
    assert counters["stats"]["unique_graphs"] == traced
