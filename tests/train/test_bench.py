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
        assert report[name]["mfu"] is None  # no peak FLOP/s is claimed for a CPU
    assert report["config"]["device"] == "cpu" and report["params"] > 0
    assert report["speedup"] > 0
