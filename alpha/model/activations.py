"""FFN activations: a registry of named element-wise activations and the MLP that uses them.

``gelu`` is the tanh approximation (as in GPT-2 and the reference), ``relu2`` is squared ReLU,
``swiglu`` is gated (``silu(x W_g) * x W_u``), ``composed`` is an activation graph
(``ModelConfig.activation_graph``, see alpha.symbio.graph). New activations register a factory
here. Every non-gated activation shares the same ``fc1``/``fc2`` shapes, so swapping the
activation of a live model never changes a parameter or optimizer tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alpha.config import ModelConfig
from alpha.model import ffn_gelu
from alpha.model.dropout import Dropout
from alpha.model.gelu import gelu as gelu_op
from alpha.model.kernel_support import kernels_available
from alpha.model.linear import Linear
from alpha.symbio.activation import GraphActivation
from alpha.symbio.graph import from_json


class Elementwise(nn.Module):
    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.name = name
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    if kernels_available(x.device):
        return gelu_op(x)  # Triton kernels forward and backward (alpha.model.gelu)
    return F.gelu(x, approximate="tanh")


def plain_gelu(x: torch.Tensor) -> torch.Tensor:
    """PyTorch's own GELU (tanh approximation), compiled by Inductor like any pointwise op."""
    return F.gelu(x, approximate="tanh")


def _relu2(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


ActivationFactory = Callable[[ModelConfig], nn.Module]


def _composed(cfg: ModelConfig) -> nn.Module:
    """The activation graph stored in the config (a symbio search's candidate or winner)."""
    if cfg.activation_graph is None:
        raise ValueError("ffn_activation 'composed' needs an activation_graph")
    return GraphActivation(from_json(cfg.activation_graph))


ACTIVATIONS: dict[str, ActivationFactory] = {
    "gelu": lambda cfg: Elementwise("gelu", _gelu_tanh),
    "relu": lambda cfg: Elementwise("relu", F.relu),
    "silu": lambda cfg: Elementwise("silu", F.silu),
    "relu2": lambda cfg: Elementwise("relu2", _relu2),
    "swiglu": lambda cfg: Elementwise("silu", F.silu),  # the gate's nonlinearity
    "composed": _composed,
}
GATED = {"swiglu"}


def register_activation(name: str, factory: ActivationFactory) -> None:
    ACTIVATIONS[name] = factory


def make_activation(cfg: ModelConfig) -> nn.Module:
    try:
        factory = ACTIVATIONS[cfg.ffn_activation]
    except KeyError:
        raise ValueError(f"unknown activation {cfg.ffn_activation!r}") from None
    return factory(cfg)


class MLP(nn.Module):
    """fc2(act(fc1 x)), or for gated activations fc2(act(x W_g) * x W_u) with fc1 = [W_g; W_u]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.ffn_activation in GATED
        hidden = cfg.ffn_hidden
        self.fc1 = Linear(cfg.n_embd, hidden * (2 if self.gated else 1))
        self.fc2 = Linear(hidden, cfg.n_embd)
        self.act = make_activation(cfg)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            isinstance(self.act, Elementwise)
            and self.act.fn is _gelu_tanh
            and ffn_gelu.applies(x, self.fc1, self.fc2)
        ):
            return self.dropout(ffn_gelu.gelu_ffn(x, self.fc1, self.fc2))  # GELU in the GEMMs
        h = self.fc1(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.dropout(self.fc2(h))

    def describe(self) -> dict[str, Any]:
        return {"gated": self.gated, "activation": repr(self.act)}
