"""The symbio JSON config: every key of the reference, validated once, with documented effects.

A config file is a JSON object of the reference's camelCase keys (``configs/symbio-composed-
novels.json`` is the seed's file). Keys it omits take the defaults below. An unknown key, a value
of the wrong type or out of range is a ``ConfigError`` that names the key (one line, exit 2).

Every key either changes what the search does (docs/SYMBIO.md lists the effect of each) or, when
it asks for something this implementation deliberately does not do (the reference's dead keys,
its Kuramoto controller, decorative metrics), ``no_effect_warnings`` says so once, in one line.

Defaults are the reference's, except where its defaults could never finish: ``populationSize`` 4,
``generations`` 4 and ``stepsPerCandidate`` "auto" (so that the search at its base population takes
about half of ``--iters`` and the winner trains for the rest), and ``activationPool`` gelu, relu,
silu (the activations a search over one set of weights can swap; see ``FIXED_UNSWAPPABLE``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from alpha.config import load_json_object, snake_to_camel
from alpha.errors import ConfigError
from alpha.symbio.graph import BASIS_OPS, DEFAULT_MAX_DEPTH, DEFAULT_MAX_NODES

SEARCH_MODES = ("ffn-activation-search", "composed-activation-search", "none")
FIXED_ACTIVATIONS = ("gelu", "relu", "silu", "swiglu", "universal", "kan_spline")
# These change the FFN's parameter set (extra gate matrices or per-channel coefficients), so they
# cannot be swapped in and out of one model whose parameters and optimizer state stay fixed.
FIXED_UNSWAPPABLE = ("swiglu", "universal", "kan_spline")
COMPLEXITY_MODES = ("params", "entropy", "mdl")
DIVERSITY_DECAYS = ("none", "linear", "cosine")
SEARCH_STRATEGIES = ("evolutionary", "exhaustive")
SELECTION_STRATEGIES = ("topk", "tournament")
RANK_BY = ("valLoss", "fitness")


@dataclass(frozen=True)
class SymbioConfig:
    """Field names are the snake_case of the reference keys; ``to_wire`` gives them back."""

    # monitors
    cusum_sensitivity: float = 4.0
    cusum_baseline_window: int = 10
    metrics_interval: int = 50
    track_weight_entropy: bool = True
    track_effective_rank: bool = True
    track_free_energy: bool = True
    track_mi_profiles: bool = False
    track_population_metrics: bool = True
    free_energy_beta: float = 0.01
    mi_num_bins: int = 30
    # adaptive batch (dead in the reference too)
    adaptive_batch: bool = False
    batch_min: int = 8
    batch_max: int = 64
    batch_step: int = 4
    calm_steps_before_restore: int = 200
    # population adaptation
    population_adaptation: bool = True
    population_scale_min: float = 0.5
    population_scale_max: float = 2.0
    population_scale_step: float = 0.1
    population_adaptation_cooldown: int = 20
    mutation_rate_min: float = 0.05
    mutation_rate_max: float = 0.9
    # fitness
    fitness_alpha: float = 1.0
    complexity_mode: str = "entropy"
    diversity_bonus: float = 0.05
    diversity_decay: str = "cosine"
    # search
    search_mode: str = "ffn-activation-search"
    activation_pool: tuple[str, ...] = ("gelu", "relu", "silu")
    search_strategy: str = "evolutionary"
    population_size: int = 4
    generations: int = 4
    selection_strategy: str = "topk"
    tournament_k: int = 3
    mutation_rate: float = 0.25
    steps_per_candidate: int | None = None  # None: auto, from --iters (see module docstring)
    rank_by: str = "valLoss"
    perf_weight: float = 0.0
    stability_weight: float = 0.0
    # continuity
    preserve_weights_across_candidates: bool = True
    carry_optimizer_state_across_candidates: bool = True
    constant_ffn_dim_across_candidates: bool = True
    # fusion
    fuse_weights_each_step: bool = True
    fusion_shadow_ema: float = 0.02
    fusion_base_strength: float = 0.001
    fusion_max_strength: float = 0.02
    kuramoto_coupling: float = 0.4
    kuramoto_dt: float = 0.1
    kuramoto_damping: float = 0.05
    # composed mode
    basis_pool: tuple[str, ...] = BASIS_OPS
    max_graph_depth: int = DEFAULT_MAX_DEPTH
    max_graph_nodes: int = DEFAULT_MAX_NODES
    # artifacts
    write_report: bool = True
    write_candidates: bool = True
    write_summary: bool = True
    # which keys the file gave explicitly (not part of the wire form)
    given: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def composed(self) -> bool:
        return self.search_mode == "composed-activation-search"

    @property
    def searching(self) -> bool:
        return self.search_mode != "none"

    @property
    def fixed_pool(self) -> tuple[str, ...]:
        """The fixed-mode activations that can actually be searched."""
        return tuple(a for a in self.activation_pool if a not in FIXED_UNSWAPPABLE)

    def to_wire(self) -> dict[str, Any]:
        """The reference's camelCase object (config.json's ``trainConfig.symbioConfig``)."""
        wire: dict[str, Any] = {}
        for key, name in WIRE_KEYS.items():
            value = getattr(self, name)
            wire[key] = list(value) if isinstance(value, tuple) else value
        return wire

    def no_effect_warnings(self) -> list[str]:
        """One line per group of given keys that change nothing here (empty when all act)."""
        inert = [key for key, asks in _NO_EFFECT.items() if key in self.given and asks(self)]
        lines = []
        if inert:
            lines.append(
                "symbio config: these keys have no effect in alpha (docs/SYMBIO.md says why): "
                + ", ".join(inert)
            )
        dropped = [a for a in self.activation_pool if a in FIXED_UNSWAPPABLE]
        if "activationPool" in self.given and dropped and not self.composed:
            lines.append(
                f"symbio config: activationPool entries {', '.join(dropped)} change the FFN's parameters "
                "and are skipped; the search swaps " + ", ".join(self.fixed_pool)
            )
        return lines


def _wire_name(snake: str) -> str:
    return {"track_mi_profiles": "trackMIProfiles"}.get(snake, snake_to_camel(snake))


WIRE_KEYS: dict[str, str] = {_wire_name(f.name): f.name for f in fields(SymbioConfig) if f.name != "given"}

# key -> "given with this value, the key asks for something alpha does not do".
_NO_EFFECT: dict[str, Callable[[SymbioConfig], bool]] = {
    "trackWeightEntropy": lambda c: True,
    "trackFreeEnergy": lambda c: True,
    "freeEnergyBeta": lambda c: True,
    "trackMIProfiles": lambda c: True,
    "miNumBins": lambda c: True,
    "adaptiveBatch": lambda c: True,
    "batchMin": lambda c: True,
    "batchMax": lambda c: True,
    "batchStep": lambda c: True,
    "calmStepsBeforeRestore": lambda c: True,
    "diversityBonus": lambda c: True,
    "diversityDecay": lambda c: True,
    "searchStrategy": lambda c: c.search_strategy != "evolutionary",
    "perfWeight": lambda c: True,
    "stabilityWeight": lambda c: True,
    "preserveWeightsAcrossCandidates": lambda c: not c.preserve_weights_across_candidates,
    "constantFfnDimAcrossCandidates": lambda c: not c.constant_ffn_dim_across_candidates,
    "fusionBaseStrength": lambda c: c.fuse_weights_each_step,
    "kuramotoCoupling": lambda c: c.fuse_weights_each_step,
    "kuramotoDt": lambda c: c.fuse_weights_each_step,
    "kuramotoDamping": lambda c: c.fuse_weights_each_step,
    "activationPool": lambda c: c.composed,
    "basisPool": lambda c: not c.composed,
    "maxGraphDepth": lambda c: not c.composed,
    "maxGraphNodes": lambda c: not c.composed,
}


# --------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _type_of(default: Any, name: str) -> str:
    if name == "steps_per_candidate":  # the one field whose default (None: auto) has no type
        return "int"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "number"
    if isinstance(default, tuple):
        return "list"
    return "str"


_ENUMS: dict[str, tuple[str, ...]] = {
    "complexity_mode": COMPLEXITY_MODES,
    "diversity_decay": DIVERSITY_DECAYS,
    "search_mode": SEARCH_MODES,
    "search_strategy": SEARCH_STRATEGIES,
    "selection_strategy": SELECTION_STRATEGIES,
    "rank_by": RANK_BY,
}
_POOLS: dict[str, tuple[str, ...]] = {"activation_pool": FIXED_ACTIVATIONS, "basis_pool": BASIS_OPS}
# Optional keys where JSON null means "the default" (the reference's ``undefined``).
_NULLABLE = ("steps_per_candidate", "basis_pool", "max_graph_depth", "max_graph_nodes")


def _check_value(key: str, name: str, value: Any) -> Any:
    kind = _type_of(getattr(SymbioConfig, name, None), name)
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"symbio config: {key} must be true or false (got {value!r})")
    if kind == "int" and not _is_int(value):
        raise ConfigError(f"symbio config: {key} must be an integer (got {value!r})")
    if kind == "number" and not _is_number(value):
        raise ConfigError(f"symbio config: {key} must be a finite number (got {value!r})")
    if kind == "number":
        value = float(value)
    if kind == "str":
        allowed = _ENUMS[name]
        if value not in allowed:
            raise ConfigError(f"symbio config: {key} must be one of {', '.join(allowed)} (got {value!r})")
    if kind == "list":
        allowed = _POOLS[name]
        if not isinstance(value, list) or not value:
            raise ConfigError(f"symbio config: {key} must be a non-empty list (got {value!r})")
        for entry in value:
            if entry not in allowed:
                raise ConfigError(f"symbio config: {key} entry {entry!r} is not one of {', '.join(allowed)}")
        value = tuple(value)
    return value


# (condition, message) pairs checked on the merged config; messages name the key.
_RANGES: list[tuple[Callable[[SymbioConfig], bool], str]] = [
    (lambda c: c.cusum_sensitivity > 0, "cusumSensitivity must be > 0"),
    (lambda c: c.cusum_baseline_window >= 2, "cusumBaselineWindow must be >= 2"),
    (lambda c: c.metrics_interval >= 1, "metricsInterval must be >= 1"),
    (lambda c: c.free_energy_beta >= 0, "freeEnergyBeta must be >= 0"),
    (lambda c: c.mi_num_bins >= 2, "miNumBins must be >= 2"),
    (lambda c: c.batch_min >= 1, "batchMin must be >= 1"),
    (lambda c: c.batch_max >= c.batch_min, "batchMax must be >= batchMin"),
    (lambda c: c.batch_step >= 1, "batchStep must be >= 1"),
    (lambda c: c.calm_steps_before_restore >= 0, "calmStepsBeforeRestore must be >= 0"),
    (lambda c: c.population_scale_min > 0, "populationScaleMin must be > 0"),
    (
        lambda c: c.population_scale_max >= c.population_scale_min,
        "populationScaleMax must be >= populationScaleMin",
    ),
    (lambda c: c.population_scale_step > 0, "populationScaleStep must be > 0"),
    (lambda c: c.population_adaptation_cooldown >= 0, "populationAdaptationCooldown must be >= 0"),
    (lambda c: 0 <= c.mutation_rate_min <= 1, "mutationRateMin must be in [0, 1]"),
    (
        lambda c: c.mutation_rate_min <= c.mutation_rate_max <= 1,
        "mutationRateMax must be in [mutationRateMin, 1]",
    ),
    (lambda c: c.fitness_alpha >= 0, "fitnessAlpha must be >= 0"),
    (lambda c: c.diversity_bonus >= 0, "diversityBonus must be >= 0"),
    (lambda c: c.population_size >= 2, "populationSize must be >= 2"),
    (lambda c: c.generations >= 1, "generations must be >= 1"),
    (lambda c: c.tournament_k >= 1, "tournamentK must be >= 1"),
    (lambda c: 0 <= c.mutation_rate <= 1, "mutationRate must be in [0, 1]"),
    (lambda c: c.steps_per_candidate is None or c.steps_per_candidate >= 1, "stepsPerCandidate must be >= 1"),
    (lambda c: 0 <= c.fusion_shadow_ema <= 1, "fusionShadowEma must be in [0, 1]"),
    (lambda c: 0 <= c.fusion_base_strength <= 1, "fusionBaseStrength must be in [0, 1]"),
    (
        lambda c: c.fusion_base_strength <= c.fusion_max_strength <= 1,
        "fusionMaxStrength must be in [fusionBaseStrength, 1]",
    ),
    (lambda c: c.kuramoto_coupling >= 0, "kuramotoCoupling must be >= 0"),
    (lambda c: c.kuramoto_dt > 0, "kuramotoDt must be > 0"),
    (lambda c: 0 <= c.kuramoto_damping < 1, "kuramotoDamping must be in [0, 1)"),
    (lambda c: c.max_graph_depth >= 1, "maxGraphDepth must be >= 1"),
    (lambda c: c.max_graph_nodes >= 1, "maxGraphNodes must be >= 1"),
    (
        lambda c: c.search_mode != "ffn-activation-search" or bool(c.fixed_pool),
        "activationPool has no activation that can be swapped (gelu, relu or silu)",
    ),
]


def parse_symbio_config(obj: dict[str, Any], source: str = "symbio config") -> SymbioConfig:
    """Validate a reference-shaped object (already parsed JSON) into a SymbioConfig."""
    values: dict[str, Any] = {}
    for key, value in obj.items():
        if key not in WIRE_KEYS:
            close = difflib.get_close_matches(key, list(WIRE_KEYS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        name = WIRE_KEYS[key]
        if value is None and name in _NULLABLE:
            continue
        values[name] = _check_value(key, name, value)
    config = SymbioConfig(**values, given=frozenset(obj))
    for ok, message in _RANGES:
        if not ok(config):
            raise ConfigError(f"{source}: {message}")
    return config


def load_symbio_config(path: str | None) -> SymbioConfig:
    """The config of ``--symbio-config PATH``, or the documented defaults without a path."""
    if path is None:
        return SymbioConfig()
    return parse_symbio_config(load_json_object(path, "symbio config"), f"symbio config {path}")


def from_wire(wire: dict[str, Any] | None) -> SymbioConfig:
    """Rebuild a config stored in config.json or a checkpoint (its warnings were given at the start)."""
    if wire is None:
        return SymbioConfig()
    stored = parse_symbio_config(wire, "stored symbio config")
    return replace(stored, given=frozenset())
