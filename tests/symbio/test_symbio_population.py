"""Population logic and artifacts: names, ranking on measured val loss, budget, adaptation, files."""

from __future__ import annotations

import json
import math
import random

from alpha.symbio.config import SymbioConfig, parse_symbio_config
from alpha.symbio.graph import Basis, Scale
from alpha.symbio.mutate import Mutation
from alpha.symbio.population import (
    Candidate,
    Namer,
    PopulationController,
    breed,
    initial_population,
    plan_budget,
    rank,
    select_parents,
)
from alpha.symbio.report import CANDIDATES_FILE, REPORT_FILE, SUMMARY_FILE, SearchState, write_artifacts

RECORD_KEYS = {
    "id", "name", "activation", "generation", "parentId", "parentName", "lineage", "activationGraph",
    "mutationApplied", "bestLoss", "bestValLoss", "valLoss", "fitnessScore", "steps", "tokensPerSec", "alive",
}  # fmt: skip
COMPOSED = parse_symbio_config({"searchMode": "composed-activation-search", "populationSize": 8})


def test_seed_budget_matches_the_reference_arithmetic():
    seed = parse_symbio_config(
        {
            "searchMode": "composed-activation-search",
            "populationSize": 8,
            "generations": 250,
            "stepsPerCandidate": 25,
            "populationScaleMin": 0.5,
            "populationScaleMax": 2.0,
        }
    )
    budget = plan_budget(seed, 50_000)
    assert (budget.nominal_steps, budget.min_steps, budget.max_steps) == (50_000, 25_100, 99_800)
    auto = plan_budget(SymbioConfig(), 1000)  # defaults: 4 candidates x 4 generations, half the run
    assert auto.steps_per_candidate == 31 and auto.nominal_steps <= 500


def test_founders_and_children_are_named_like_the_reference():
    namer = Namer(composed=True)
    population = initial_population(COMPOSED, namer, 8)
    assert [c.name for c in population[:6]] == [
        "silu-Alpha",
        "relu-Beta",
        "gelu-Gamma",
        "id-Delta",
        "sq-Epsilon",
        "silu-Zeta",
    ]
    assert population[0].id == "gen0_composed_1" and population[0].lineage == ["gen0_composed_1"]
    graph = Scale(Basis("relu"), 0.5)
    child = namer.child(population[1], 1, Mutation(graph, "add_term"))
    assert child.name == "0.5·relu-Beta.1" and child.lineage == ["gen0_composed_2", child.id]
    assert child.id == "gen1_composed_9" and child.parent_name == "relu-Beta"
    fixed = initial_population(SymbioConfig(), Namer(composed=False), 4)
    assert [c.name for c in fixed] == ["G-Alpha", "R-Beta", "S-Gamma", "G-Delta"]
    grandchild = Namer(False).child(fixed[2], 1, Mutation(Basis("relu"), "swap_activation"))
    assert grandchild.name == "R-Gamma.1" and grandchild.activation == "relu"


def _measured(values: list[float]) -> list[Candidate]:
    population = initial_population(COMPOSED, Namer(True), len(values))
    for c, v in zip(population, values, strict=True):
        c.val_loss, c.steps = v, 10
    return population


def test_ranking_uses_measured_val_loss_with_stable_ties_and_diverged_last():
    population = _measured([3.2, math.nan, 2.9, 3.2, 2.5])
    assert [c.name for c in rank(population, "valLoss")] == [
        "sq-Epsilon",
        "gelu-Gamma",
        "silu-Alpha",
        "id-Delta",
        "relu-Beta",
    ]
    rng = random.Random(0)
    ranked = rank(population, "valLoss")
    assert select_parents(ranked, 2, "topk", 3, rng) == ranked[:2]
    picks = [select_parents(ranked, 3, "tournament", 3, random.Random(s)) for s in range(20)]
    assert all(p[0] in ranked for p in picks) and len({tuple(c.id for c in p) for p in picks}) > 1


def test_breeding_respects_the_mutation_rate_and_parents():
    parents = rank(_measured([2.0, 3.0, 4.0, 5.0]), "valLoss")[:2]
    children = breed(parents, 8, 0.0, 1, COMPOSED, Namer(True, 8), random.Random(1))
    assert [c.mutation_applied for c in children] == ["clone"] * 8
    assert [c.parent_id for c in children] == [parents[0].id, parents[1].id] * 4
    mutated = breed(parents, 8, 1.0, 1, COMPOSED, Namer(True, 8), random.Random(1))
    assert all(
        c.mutation_applied != "clone" and c.graph != p.graph
        for c, p in zip(mutated, parents * 4, strict=True)
    )


def test_population_controller_reacts_to_generation_progress_only():
    controller = PopulationController.from_config(
        parse_symbio_config(
            {
                "populationSize": 8,
                "mutationRate": 0.5,
                "populationScaleStep": 0.25,
                "populationAdaptationCooldown": 0,
                "mutationRateMin": 0.2,
                "mutationRateMax": 0.9,
            }
        )
    )
    assert (controller.size, controller.mutation_rate) == (8, 0.5)
    assert controller.observe(4.0, 3.999, step=100)  # stagnating: explore
    assert (controller.size, controller.mutation_rate) == (10, 0.625)
    assert controller.observe(3.999, 3.8, step=200)  # improving: exploit
    assert controller.observe(3.8, 3.6, step=300)
    assert controller.size == 6 and math.isclose(controller.mutation_rate, 0.375)
    for step in range(500, 1500, 100):
        controller.observe(3.4, 3.0, step)
    assert controller.size == 4 and controller.mutation_rate == 0.25  # clamped at scaleMin 0.5
    assert not controller.observe(math.nan, 3.0, 2000)
    off = PopulationController.from_config(parse_symbio_config({"populationAdaptation": False}))
    assert not off.observe(4.0, 4.0, 100) and off.size == 4
    slow = PopulationController.from_config(parse_symbio_config({"populationAdaptationCooldown": 500}))
    assert slow.observe(4.0, 4.0, 100) and not slow.observe(4.0, 4.0, 300) and slow.observe(4.0, 4.0, 600)


def test_artifacts_have_the_record_shape_and_one_winner(tmp_path):
    population = _measured([3.1, 2.7, math.inf])
    population[0].fitness, population[1].fitness = 0.24, 0.27
    population[1].tokens_per_sec = 12345.0
    state = SearchState(
        candidates=[c.to_record() for c in population],
        winner_id=population[1].id,
        generation=0,
        config=COMPOSED.to_wire(),
        rank_by="valLoss",
        strategy="evolutionary",
        finished=False,
        search_steps=30,
        history=[
            {
                "generation": 0,
                "population": 3,
                "mutationRate": 0.25,
                "winnerName": "relu-Beta",
                "bestValLoss": 2.7,
                "step": 30,
            }
        ],
    )
    paths = write_artifacts(tmp_path, state)
    assert {p.name for p in paths} == {CANDIDATES_FILE, SUMMARY_FILE, REPORT_FILE}
    lines = [json.loads(line) for line in (tmp_path / CANDIDATES_FILE).read_text().splitlines()]
    assert [set(r) for r in lines] == [RECORD_KEYS] * 3
    assert lines[2]["valLoss"] is None and lines[1]["tokensPerSec"] == 12345.0
    assert [r["activation"] for r in lines] == ["silu", "relu", "gelu"]  # formulas, not "composed"
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["winner"]["id"] == population[1].id
    assert [c["name"] for c in summary["rankedCandidates"]] == ["relu-Beta", "silu-Alpha", "gelu-Gamma"]
    report = (tmp_path / REPORT_FILE).read_text()
    assert "**Activation:** relu" in report and "2.7000" in report and "Infinity" not in report
    assert Candidate.from_record(lines[1]).to_record() == lines[1]
    off = SearchState(**{**state.__dict__, "config": {**state.config, "writeReport": False}})
    (tmp_path / REPORT_FILE).unlink()
    write_artifacts(tmp_path, off)
    assert not (tmp_path / REPORT_FILE).exists()
