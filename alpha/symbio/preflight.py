"""What a symbio run checks before it starts: its config, that the search fits the run, and the
graph that founds a composed search. No torch here, so ``alpha train`` answers a bad
``--symbio-config`` before importing it; the search (``alpha.symbio.search``) reads the results.
"""

from __future__ import annotations

from alpha.config import ModelConfig, TrainConfig
from alpha.errors import ConfigError
from alpha.symbio.config import SymbioConfig, load_symbio_config
from alpha.symbio.graph import Graph, loads
from alpha.symbio.population import plan_budget


def prepare_config(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Load and validate ``--symbio-config`` (or the defaults) and check it fits the run.

    Stores the merged config (reference wire form) in ``train_cfg.symbio_config`` and the one-time
    warnings in ``train_cfg.extra["symbio_warnings"]``. Raises ConfigError (exit 2) when the search
    cannot run.
    """
    config = load_symbio_config(train_cfg.symbio_config_path)
    train_cfg.symbio_config = config.to_wire()
    warnings = config.no_effect_warnings() + check_fits(config, model_cfg, train_cfg)
    train_cfg.extra["symbio_warnings"] = warnings
    if train_cfg.symbio_resume_graph is not None:
        resume_graph(config, train_cfg.symbio_resume_graph)


def resume_graph(config: SymbioConfig, text: str) -> Graph:
    """The ``--symbio-resume-graph`` graph, checked against the config's limits."""
    if not config.composed:
        raise ConfigError("--symbio-resume-graph needs searchMode composed-activation-search")
    try:
        return loads(text, max_depth=config.max_graph_depth, max_nodes=config.max_graph_nodes)
    except ConfigError as exc:
        raise ConfigError(f"--symbio-resume-graph: {exc}") from None


def check_fits(config: SymbioConfig, model_cfg: ModelConfig, train_cfg: TrainConfig) -> list[str]:
    """ConfigError when the search cannot run; warnings (with real step counts) when it is cut."""
    if not config.searching:
        return []
    if model_cfg.ffn_activation == "swiglu":
        raise ConfigError(
            "--symbio swaps element-wise FFN activations; --activation swiglu is gated "
            "(use gelu, relu, silu or relu2 as the starting activation)"
        )
    budget = plan_budget(config, train_cfg.iters)
    s, p, g = budget.steps_per_candidate, config.population_size, config.generations
    if 2 * s > train_cfg.iters:
        raise ConfigError(
            f"symbio search cannot run: one generation needs at least 2 candidates × {s} steps = "
            f"{2 * s} steps, but --iters is {train_cfg.iters}"
        )
    if budget.max_steps <= train_cfg.iters:
        return []
    adaptive = f" ({budget.min_steps:,} to {budget.max_steps:,} with population adaptation)"
    return [
        f"symbio search: {p} candidates × {s} steps × {g} generations = {budget.nominal_steps:,} steps"
        + (adaptive if budget.min_steps != budget.max_steps else "")
        + f", but --iters is {train_cfg.iters:,}: the search stops at the last generation that fits "
        "(a final generation may be smaller)"
    ]
