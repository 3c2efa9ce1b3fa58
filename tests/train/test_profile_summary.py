"""``scripts/profile_step.py``'s per-stream summary: busy time, overlap with the other streams and
idle time from (stream, start, end) kernel intervals, on cases worked out by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "profile_step.py"


def _summary(kernels: list[tuple[int, float, float]]) -> list[str]:
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.stream_summary(kernels)


def test_overlap_busy_and_idle_time_per_stream() -> None:
    # stream 7: 0-1000 and 2000-3000 us (a kernel inside the first too); stream 13: 500-2500 us
    lines = _summary([(7, 0.0, 1000.0), (7, 100.0, 200.0), (7, 2000.0, 3000.0), (13, 500.0, 2500.0)])
    assert lines[0] == "step span 3.000 ms; no kernel running for 0.000 ms"
    assert lines[1] == "stream 7: 3 kernels, busy 2.000 ms, 1.000 ms of it beside another stream"
    assert lines[2] == "stream 13: 1 kernels, busy 2.000 ms, 1.000 ms of it beside another stream"


def test_gaps_between_kernels_count_as_idle() -> None:
    lines = _summary([(7, 0.0, 1000.0), (13, 1500.0, 2000.0), (7, 2500.0, 3000.0)])
    assert lines[0] == "step span 3.000 ms; no kernel running for 1.000 ms"
    assert lines[1] == "stream 7: 2 kernels, busy 1.500 ms, 0.000 ms of it beside another stream"
    assert lines[2] == "stream 13: 1 kernels, busy 0.500 ms, 0.000 ms of it beside another stream"
