"""The symbio config: the seed's file, every reference key, strict validation, honest warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpha.errors import ConfigError
from alpha.symbio.config import SymbioConfig, load_symbio_config, parse_symbio_config

ROOT = Path(__file__).resolve().parents[2]
SEED_CONFIG = ROOT / "configs" / "symbio-composed-novels.json"

# reference/symbio.md §2.1: the keys and values of the seed's file.
SEED_VALUES = {
    "searchMode": "composed-activation-search",
    "basisPool": ["silu", "relu", "gelu", "identity", "square"],
    "maxGraphDepth": 4,
    "maxGraphNodes": 10,
    "populationSize": 8,
    "generations": 250,
    "stepsPerCandidate": 25,
    "selectionStrategy": "topk",
    "mutationRate": 0.7,
    "rankBy": "valLoss",
    "metricsInterval": 10,
    "cusumSensitivity": 4.0,
    "cusumBaselineWindow": 5,
    "adaptiveBatch": False,
    "populationAdaptation": True,
    "populationScaleMin": 0.5,
    "populationScaleMax": 2.0,
    "populationScaleStep": 0.125,
    "populationAdaptationCooldown": 10,
    "mutationRateMin": 0.2,
    "mutationRateMax": 0.95,
    "preserveWeightsAcrossCandidates": True,
    "carryOptimizerStateAcrossCandidates": True,
    "constantFfnDimAcrossCandidates": True,
    "fuseWeightsEachStep": True,
    "fusionShadowEma": 0.02,
    "fusionBaseStrength": 0.0015,
    "fusionMaxStrength": 0.02,
    "kuramotoCoupling": 0.7,
    "kuramotoDt": 0.1,
    "kuramotoDamping": 0.05,
    "trackMIProfiles": False,
    "trackPopulationMetrics": True,
    "diversityBonus": 0.1,
    "diversityDecay": "cosine",
    "writeReport": True,
    "writeCandidates": True,
    "writeSummary": True,
}
# reference/symbio.md §2: every key of the schema.
ALL_KEYS_TEXT = """
    cusumSensitivity cusumBaselineWindow metricsInterval trackWeightEntropy trackEffectiveRank
    trackFreeEnergy trackMIProfiles trackPopulationMetrics freeEnergyBeta miNumBins adaptiveBatch
    batchMin batchMax batchStep calmStepsBeforeRestore populationAdaptation populationScaleMin
    populationScaleMax populationScaleStep populationAdaptationCooldown mutationRateMin
    mutationRateMax fitnessAlpha complexityMode diversityBonus diversityDecay searchMode
    activationPool searchStrategy populationSize generations selectionStrategy tournamentK
    mutationRate stepsPerCandidate rankBy perfWeight stabilityWeight preserveWeightsAcrossCandidates
    carryOptimizerStateAcrossCandidates constantFfnDimAcrossCandidates fuseWeightsEachStep
    fusionShadowEma fusionBaseStrength fusionMaxStrength kuramotoCoupling kuramotoDt kuramotoDamping
    basisPool maxGraphDepth maxGraphNodes writeReport writeCandidates writeSummary
"""
ALL_KEYS = set(ALL_KEYS_TEXT.split())


def test_shipped_config_is_the_seeds_file():
    assert json.loads(SEED_CONFIG.read_text()) == SEED_VALUES
    config = load_symbio_config(str(SEED_CONFIG))
    assert config.composed and config.population_size == 8 and config.steps_per_candidate == 25
    assert config.to_wire()["populationScaleStep"] == 0.125


def test_every_reference_key_is_accepted_and_round_trips():
    wire = SymbioConfig().to_wire()
    assert set(wire) == ALL_KEYS
    wire["stepsPerCandidate"] = 30
    config = parse_symbio_config(wire)
    assert config.to_wire() == wire
    assert parse_symbio_config({"basisPool": None, "maxGraphDepth": None}) == SymbioConfig()


def test_dead_keys_get_one_warning_line_and_live_keys_none():
    seed = load_symbio_config(str(SEED_CONFIG))
    (line,) = seed.no_effect_warnings()
    for key in (
        "trackMIProfiles",
        "adaptiveBatch",
        "diversityBonus",
        "kuramotoCoupling",
        "fusionBaseStrength",
    ):
        assert key in line
    for key in (
        "populationSize",
        "mutationRate",
        "fuseWeightsEachStep",
        "fusionMaxStrength",
        "cusumSensitivity",
    ):
        assert key not in line
    live = parse_symbio_config(
        {
            "populationSize": 6,
            "rankBy": "fitness",
            "fuseWeightsEachStep": False,
            "kuramotoCoupling": 0.5,
            "preserveWeightsAcrossCandidates": True,
        }
    )
    assert live.no_effect_warnings() == []
    assert parse_symbio_config({}).no_effect_warnings() == []
    fixed = parse_symbio_config({"activationPool": ["gelu", "swiglu", "kan_spline"]})
    assert fixed.fixed_pool == ("gelu",)
    assert "swiglu, kan_spline" in fixed.no_effect_warnings()[0]


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"populationSzie": 8}, "unknown key 'populationSzie' (did you mean populationSize?)"),
        ({"frobnicate": 1}, "unknown key 'frobnicate'"),
        ({"populationSize": 1}, "populationSize must be >= 2"),
        ({"populationSize": 8.5}, "populationSize must be an integer"),
        ({"populationSize": True}, "populationSize must be an integer"),
        ({"mutationRate": 1.5}, "mutationRate must be in [0, 1]"),
        ({"mutationRate": "high"}, "mutationRate must be a finite number"),
        ({"writeReport": "yes"}, "writeReport must be true or false"),
        ({"searchMode": "grid"}, "searchMode must be one of"),
        ({"basisPool": ["relu", "tanh"]}, "basisPool entry 'tanh'"),
        ({"basisPool": []}, "basisPool must be a non-empty list"),
        ({"activationPool": ["swiglu"]}, "no activation that can be swapped"),
        ({"cusumBaselineWindow": 1}, "cusumBaselineWindow must be >= 2"),
        (
            {"populationScaleMin": 2.0, "populationScaleMax": 1.0},
            "populationScaleMax must be >= populationScaleMin",
        ),
        ({"fusionBaseStrength": 0.5, "fusionMaxStrength": 0.1}, "fusionMaxStrength must be in"),
        ({"kuramotoDamping": 1.0}, "kuramotoDamping must be in [0, 1)"),
        ({"stepsPerCandidate": 0}, "stepsPerCandidate must be >= 1"),
        ({"maxGraphNodes": 0}, "maxGraphNodes must be >= 1"),
    ],
)
def test_invalid_values_name_the_key(obj, fragment):
    with pytest.raises(ConfigError) as info:
        parse_symbio_config(obj)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_symbio_config(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_symbio_config(str(broken))
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_symbio_config(str(listed))
    assert load_symbio_config(None) == SymbioConfig()
