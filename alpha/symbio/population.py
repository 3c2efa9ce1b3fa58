"""Candidates, their names, ranking, parent selection, breeding and population adaptation.

Pure logic over plain data and one ``random.Random``: nothing here trains. ``search`` measures
each candidate (train from the generation's snapshot, then evaluate on the fixed val windows) and
fills in its results; this module turns measured generations into the next one.

Ids are ``gen{g}_{activation}_{n}`` with a counter per search. Names follow the reference:
``silu-Alpha`` in generation 0, ``(relu+0.04·sq)×gelu-Beta.1`` for a child (the parent's Greek
suffix plus the generation), fixed-mode names ``S-Alpha`` / ``S-Alpha.1``.

Winner: the best candidate of the latest evaluated generation, by ``rankBy`` (lowest val loss, or
highest fitness), ties to the earlier candidate. Every generation starts from the previous
winner's trained weights, so candidates of different generations were measured at different
points of training and are never compared with each other. The same definition is used by the
log, the SymbioGeneration event, the artifacts and the graph that trains after the search.

Fitness (recorded always, ranked on with ``rankBy: "fitness"``):
``fitnessAlpha / (1 + valLoss) - complexity``, where complexity is 0 for ``params`` (all candidates
have the same parameters), ``0.001 · H`` for ``entropy`` (H: Shannon entropy in bits of the graph's
node kinds) and ``0.0001 · 3 · nodes`` for ``mdl`` (3 bits per node kind): a small tie-breaker
toward simpler graphs.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from alpha.symbio.config import SymbioConfig
from alpha.symbio.graph import Basis, Graph, from_json, graph_name, node_count, to_json, walk
from alpha.symbio.mutate import CLONE, Mutation, mutate, mutate_activation

GREEK = (
    "Alpha",
    "Beta",
    "Gamma",
    "Delta",
    "Epsilon",
    "Zeta",
    "Eta",
    "Theta",
    "Iota",
    "Kappa",
    "Lambda",
    "Mu",
)
FIXED_PREFIX = {"gelu": "G", "silu": "S", "relu": "R", "swiglu": "Sw", "universal": "U", "kan_spline": "K"}
# A generation whose winner improves the previous winner's val loss by less than this fraction
# counts as stagnating (the population grows to explore); more, as improving (it shrinks).
STAGNATION_REL = 0.001


@dataclass
class Candidate:
    id: str
    name: str
    activation: str  # "composed" in composed mode (as in the ids), else the activation's name
    generation: int
    graph: Graph
    parent_id: str | None = None
    parent_name: str | None = None
    lineage: list[str] = field(default_factory=list)
    mutation_applied: str | None = None
    best_loss: float = math.inf
    val_loss: float = math.nan
    fitness: float = math.nan
    steps: int = 0
    tokens_per_sec: float = math.nan
    alive: bool = True

    @property
    def formula(self) -> str:
        return graph_name(self.graph)

    def to_record(self) -> dict[str, Any]:
        """The artifact / SymbioGeneration shape (reference field names; NaN/Inf become null)."""
        return {
            "id": self.id,
            "name": self.name,
            # the formula or the fixed activation's name, like symbio_candidate_activation (the
            # reference wrote "composed" here, which no reader could use)
            "activation": self.formula if self.activation == "composed" else self.activation,
            "generation": self.generation,
            "parentId": self.parent_id,
            "parentName": self.parent_name,
            "lineage": list(self.lineage),
            "activationGraph": to_json(self.graph),
            "mutationApplied": self.mutation_applied,
            "bestLoss": _finite(self.best_loss),
            "bestValLoss": _finite(self.val_loss),
            "valLoss": _finite(self.val_loss),
            "fitnessScore": _finite(self.fitness),
            "steps": self.steps,
            "tokensPerSec": _finite(self.tokens_per_sec),
            "alive": self.alive,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Candidate:
        def num(value: Any, default: float) -> float:
            return default if value is None else float(value)

        kind = record["id"].split("_")[1]  # ids are gen{g}_{composed|activation}_{n}
        return cls(
            id=record["id"],
            name=record["name"],
            activation="composed" if kind == "composed" else record["activation"],
            generation=int(record["generation"]),
            graph=from_json(record["activationGraph"]),
            parent_id=record["parentId"],
            parent_name=record["parentName"],
            lineage=list(record["lineage"]),
            mutation_applied=record["mutationApplied"],
            best_loss=num(record["bestLoss"], math.inf),
            val_loss=num(record["valLoss"], math.nan),
            fitness=num(record["fitnessScore"], math.nan),
            steps=int(record["steps"]),
            tokens_per_sec=num(record["tokensPerSec"], math.nan),
            alive=bool(record["alive"]),
        )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- naming


def _short_formula(graph: Graph) -> str:
    formula = graph_name(graph)
    return formula if len(formula) <= 30 else formula[:27] + "..."


def _greek_suffix(parent_name: str) -> str:
    return parent_name.rsplit("-", 1)[-1]


class Namer:
    """Ids and names; the counter belongs to one search and is part of its saved state."""

    def __init__(self, composed: bool, counter: int = 0) -> None:
        self.composed = composed
        self.counter = counter

    def _id(self, generation: int, activation: str) -> str:
        self.counter += 1
        return f"gen{generation}_{activation}_{self.counter}"

    def founder(self, index: int, generation: int, graph: Graph, activation: str) -> Candidate:
        greek = GREEK[index % len(GREEK)]
        if self.composed:
            name = f"{_short_formula(graph)}-{greek}"
        else:
            name = f"{FIXED_PREFIX.get(activation, activation[:1].upper())}-{greek}"
        cid = self._id(generation, activation)
        return Candidate(
            id=cid, name=name, activation=activation, generation=generation, graph=graph, lineage=[cid]
        )

    def child(self, parent: Candidate, generation: int, mutation: Mutation) -> Candidate:
        if self.composed:
            activation = "composed"
            name = f"{_short_formula(mutation.graph)}-{_greek_suffix(parent.name)}.{generation}"
        else:
            assert isinstance(mutation.graph, Basis)
            activation = mutation.graph.op
            rest = parent.name.split("-", 1)[1] if "-" in parent.name else parent.name
            name = f"{FIXED_PREFIX.get(activation, activation[:1].upper())}-{rest}.{generation}"
        cid = self._id(generation, activation)
        return Candidate(
            id=cid,
            name=name,
            activation=activation,
            generation=generation,
            graph=mutation.graph,
            parent_id=parent.id,
            parent_name=parent.name,
            lineage=[*parent.lineage, cid],
            mutation_applied=mutation.label,
        )


def initial_population(config: SymbioConfig, namer: Namer, size: int) -> list[Candidate]:
    """Generation 0: basisPool[i mod n] (composed) or the fixed pool[i mod n]."""
    pool = config.basis_pool if config.composed else config.fixed_pool
    population = []
    for i in range(size):
        op = pool[i % len(pool)]
        activation = "composed" if config.composed else op
        population.append(namer.founder(i, 0, Basis(op), activation))
    return population


# --------------------------------------------------------------------------- ranking & breeding


def complexity(graph: Graph, mode: str) -> float:
    if mode == "params":
        return 0.0
    if mode == "mdl":
        return 1e-4 * 3 * node_count(graph)
    kinds = Counter(node.op if isinstance(node, Basis) else type(node).__name__ for _, node in walk(graph))
    total = sum(kinds.values())
    entropy = -sum(n / total * math.log2(n / total) for n in kinds.values())
    return 1e-3 * entropy


def fitness(val_loss: float, graph: Graph, config: SymbioConfig) -> float:
    if not math.isfinite(val_loss):
        return -math.inf
    return config.fitness_alpha / (1 + val_loss) - complexity(graph, config.complexity_mode)


def rank_key(candidate: Candidate, rank_by: str) -> float:
    """Smaller is better; unmeasured or diverged candidates rank last."""
    if rank_by == "fitness":
        return -candidate.fitness if math.isfinite(candidate.fitness) else math.inf
    return candidate.val_loss if math.isfinite(candidate.val_loss) else math.inf


def rank(candidates: list[Candidate], rank_by: str) -> list[Candidate]:
    """Best first; ties keep creation order (Python's sort is stable)."""
    return sorted(candidates, key=lambda c: rank_key(c, rank_by))


def select_parents(
    ranked: list[Candidate], count: int, strategy: str, tournament_k: int, rng: random.Random
) -> list[Candidate]:
    if strategy == "topk":
        return ranked[:count]
    order = {c.id: i for i, c in enumerate(ranked)}
    parents = []
    for _ in range(count):
        entrants = [rng.choice(ranked) for _ in range(tournament_k)]
        parents.append(min(entrants, key=lambda c: order[c.id]))
    return parents


def breed(
    parents: list[Candidate],
    size: int,
    mutation_rate: float,
    generation: int,
    config: SymbioConfig,
    namer: Namer,
    rng: random.Random,
) -> list[Candidate]:
    """Children i = 0..size-1 of parents[i mod n]: a mutation with probability ``mutation_rate``."""
    children = []
    for i in range(size):
        parent = parents[i % len(parents)]
        mutation = Mutation(parent.graph, CLONE)
        if rng.random() < mutation_rate:
            if config.composed:
                mutation = mutate(
                    parent.graph, rng, config.basis_pool, config.max_graph_depth, config.max_graph_nodes
                )
            else:
                assert isinstance(parent.graph, Basis)
                mutation = mutate_activation(parent.graph.op, rng, config.fixed_pool) or mutation
        children.append(namer.child(parent, generation, mutation))
    return children


# --------------------------------------------------------------------------- adaptation & budget


def scaled_size(base: int, scale: float) -> int:
    """The population at ``scale``: max(2, base · scale rounded half up)."""
    return max(2, math.floor(base * scale + 0.5))


@dataclass
class PopulationController:
    """Population size and mutation rate, adjusted once per generation from the winners' val losses.

    Stagnation (the winner improved on the previous winner by less than ``STAGNATION_REL``)
    raises the scale by ``populationScaleStep`` (explore: more candidates, more mutation);
    improvement lowers it (exploit). The scale stays in [scaleMin, scaleMax] and changes at most
    once per ``populationAdaptationCooldown`` steps. Size = max(2, round(base · scale)); mutation
    rate = clamp(mutationRate · scale, mutationRateMin, mutationRateMax). Off: both stay at base.
    """

    base_size: int
    base_rate: float
    enabled: bool
    scale_min: float
    scale_max: float
    scale_step: float
    cooldown: int
    rate_min: float
    rate_max: float
    scale: float = 1.0
    last_change_step: int | None = None
    last_reason: str = ""

    @classmethod
    def from_config(cls, config: SymbioConfig) -> PopulationController:
        return cls(
            base_size=config.population_size,
            base_rate=config.mutation_rate,
            enabled=config.population_adaptation,
            scale_min=config.population_scale_min,
            scale_max=config.population_scale_max,
            scale_step=config.population_scale_step,
            cooldown=config.population_adaptation_cooldown,
            rate_min=config.mutation_rate_min,
            rate_max=config.mutation_rate_max,
        )

    @property
    def size(self) -> int:
        return scaled_size(self.base_size, self.scale)

    @property
    def mutation_rate(self) -> float:
        if not self.enabled:
            return self.base_rate
        return min(self.rate_max, max(self.rate_min, self.base_rate * self.scale))

    def observe(self, previous_best: float, best: float, step: int) -> bool:
        """Feed one generation's result; True when the scale changed."""
        if not self.enabled or not (math.isfinite(previous_best) and math.isfinite(best)):
            return False
        if self.last_change_step is not None and step - self.last_change_step < self.cooldown:
            return False
        improvement = (previous_best - best) / max(abs(previous_best), 1e-9)
        stagnating = improvement < STAGNATION_REL
        direction = 1 if stagnating else -1
        new_scale = min(self.scale_max, max(self.scale_min, self.scale + direction * self.scale_step))
        self.last_reason = (
            f"explore↑ (val improved {improvement:.2%} < {STAGNATION_REL:.1%})"
            if stagnating
            else f"exploit↑ (val improved {improvement:.2%})"
        )
        if new_scale == self.scale:
            return False
        self.scale = new_scale
        self.last_change_step = step
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "last_change_step": self.last_change_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.last_change_step = state["last_change_step"]


@dataclass(frozen=True)
class Budget:
    steps_per_candidate: int
    nominal_steps: int  # base population every generation
    min_steps: int  # population held at its smallest scale after generation 0
    max_steps: int  # ... at its largest


def plan_budget(config: SymbioConfig, iters: int) -> Budget:
    """Steps per candidate (auto when not given) and the search's length in optimizer steps."""
    p, g = config.population_size, config.generations
    steps = config.steps_per_candidate or max(1, iters // (2 * p * g))
    if config.population_adaptation:
        smallest = scaled_size(p, config.population_scale_min)
        largest = scaled_size(p, config.population_scale_max)
    else:
        smallest = largest = p
    return Budget(
        steps_per_candidate=steps,
        nominal_steps=p * steps * g,
        min_steps=p * steps + smallest * steps * (g - 1),
        max_steps=p * steps + largest * steps * (g - 1),
    )
