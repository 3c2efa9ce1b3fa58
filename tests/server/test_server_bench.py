"""A short run of the ingest load test against a real server: nothing lost, nothing duplicated."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.server.conftest import REPO


def test_twenty_paced_runs_and_a_viewer_lose_nothing() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_ingest.py"),
            "--runs",
            "20",
            "--seconds",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == 0, report["error_samples"]
    assert report["rows_sent"] >= 20 * 10 * 2  # at least two batches per run got through
    assert report["rows_stored"] == report["rows_sent"]
    assert (report["lost"], report["duplicated"], report["sse_missing"]) == (0, 0, 0)
