"""`alpha bench` measures the real training step and a plain PyTorch loop of the same model."""

from __future__ import annotations

import json

from tests.conftest import run_alpha


def test_bench_reports_both_loops_on_cpu() -> None:
    result = run_alpha(
        "bench", "--tiny", "--device", "cpu", "--steps", "2", "--warmup-steps", "1", "--baseline", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for name in ("alpha", "baseline"):
        assert report[name]["tokens_per_sec"] > 0 and report[name]["ms_per_step"] > 0
        assert report[name]["warmup_s"] > 0  # the untimed steps, compilation included
        assert report[name]["mfu"] is None  # no peak FLOP/s is claimed for a CPU
        assert "gpu" not in report[name]  # no GPU readings either
    assert report["config"]["device"] == "cpu" and report["params"] > 0
    assert report["speedup"] > 0


SEED_GRAPH = (
    '{"type":"mul","left":{"type":"add","left":{"type":"basis","op":"relu"},'
    '"right":{"type":"scale","child":{"type":"basis","op":"square"},"factor":0.04}},'
    '"right":{"type":"basis","op":"gelu"}}'
)


def test_bench_times_a_composed_activation_run_as_a_search_runs_it() -> None:
    args = ("bench", "--tiny", "--device", "cpu", "--steps", "2", "--warmup-steps", "1", "--json")
    result = run_alpha(*args, "--activation-graph", SEED_GRAPH, "--activation-program")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["config"]["activation_program"] is True and report["alpha"]["tokens_per_sec"] > 0


def test_bench_refuses_a_program_without_a_graph() -> None:
    result = run_alpha("bench", "--tiny", "--device", "cpu", "--activation-program")
    assert result.returncode == 2
    expected = "alpha bench: error: --activation-program needs --activation-graph"
    assert result.stderr.strip().splitlines() == [expected]
