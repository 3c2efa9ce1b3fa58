"""Data parallelism with torchrun (CPU, gloo): N processes with --batch B train exactly like one
process with --batch N*B, write one set of outputs, and resume across a different process count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_alpha, tiny_train_args, torchrun

COMMON = (
    "--iters",
    "8",
    "--eval-interval",
    "4",
    "--checkpoint-interval",
    "4",
    "--sample-interval",
    "0",
    "--dropout",
    "0",
    "--log-every",
    "1",
)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


GLOO = {"OMP_NUM_THREADS": "1", "ALPHA_DIST_BACKEND": "gloo"}  # N CPU processes, one thread each


@pytest.mark.slow
def test_two_processes_match_one_process_at_the_same_global_batch(chat_file: Path, tmp_path: Path) -> None:
    single = run_alpha(*tiny_train_args(chat_file, tmp_path / "one", *COMMON, "--batch", "8"))
    assert single.returncode == 0, single.stderr
    double = torchrun(2, *tiny_train_args(chat_file, tmp_path / "two", *COMMON, "--batch", "4"), env=GLOO)
    assert double.returncode == 0, double.stderr[-3000:]

    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in two] == list(range(1, 9))  # one metrics stream, written by rank 0
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=2e-5)
        assert b["gradNorm"] == pytest.approx(a["gradNorm"], rel=1e-4)
        assert b["tokens"] == a["tokens"]  # tokens count the global batch
    assert two[-1]["valLoss"] == pytest.approx(one[-1]["valLoss"], abs=2e-5)
    assert double.stdout.count("── alpha training ──") == 1  # one log, from rank 0
    logs = list(tmp_path.glob("train_two.log"))
    assert len(logs) == 1

    # weight gradients through alpha.model.linear's WeightGradStream, into the all-reduced buffer
    streamed = torchrun(
        2,
        *tiny_train_args(chat_file, tmp_path / "wgrad", *COMMON, "--batch", "4", "--wgrad-stream"),
        env=GLOO,
    )
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    for a, b in zip(one, metrics(tmp_path / "wgrad"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=2e-5)
        assert b["gradNorm"] == pytest.approx(a["gradNorm"], rel=1e-4)

    # resume the 2-process checkpoint in one process with the same global batch
    resumed = run_alpha(
        "train",
        "--resume",
        str(tmp_path / "two" / "checkpoint-4.safetensors"),
        "--batch",
        "8",
        "--run-dir",
        str(tmp_path / "resumed"),
    )
    assert resumed.returncode == 0, resumed.stderr
    for a, b in zip(one[4:], metrics(tmp_path / "resumed"), strict=True):
        assert b["step"] == a["step"]
        assert b["loss"] == pytest.approx(a["loss"], abs=2e-5)


SEARCH = {
    "searchMode": "composed-activation-search",
    "populationSize": 3,
    "generations": 2,
    "stepsPerCandidate": 4,
    "mutationRate": 0.9,
    "populationAdaptation": False,
    "metricsInterval": 4,
}


@pytest.mark.slow
@pytest.mark.parametrize("activations", ["code", "program"])
def test_two_processes_spread_a_generation_over_ranks(
    chat_file: Path, tmp_path: Path, activations: str
) -> None:
    """Each rank trains its own candidates alone on the batches a one-process search with the same
    --batch uses: generation 0's candidate steps are identical to the one-process search's; step
    records from both ranks arrive as one ordered stream; the winner is the best val loss. With
    candidates as code or as programs (alpha.symbio.program, the CUDA default; its reference here)."""
    config = tmp_path / "search.json"
    config.write_text(json.dumps(SEARCH))
    args = ("--iters", "32", "--eval-interval", "12", "--sample-interval", "0", "--dropout", "0",
            "--log-every", "2", "--lr", "3e-3", "--batch", "4",
            "--symbio", "--symbio-config", str(config))  # fmt: skip
    mode = {"ALPHA_SYMBIO_ACTIVATIONS": activations}
    single = run_alpha(
        *tiny_train_args(chat_file, tmp_path / "one", *args), env={"OMP_NUM_THREADS": "1", **mode}
    )
    assert single.returncode == 0, single.stderr
    double = torchrun(2, *tiny_train_args(chat_file, tmp_path / "two", *args), env={**GLOO, **mode})
    assert double.returncode == 0, double.stderr[-3000:]

    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in two] == list(range(1, 33))
    gen0 = [(a, b) for a, b in zip(one, two, strict=True) if a.get("symbio_generation") == 0]
    assert len(gen0) == 12  # 3 candidates × 4 steps; rank 0 trained candidates 0 and 2, rank 1 candidate 1
    for a, b in gen0:
        assert b["symbio_candidate_id"] == a["symbio_candidate_id"]
        assert b["loss"] == pytest.approx(a["loss"], abs=2e-5)
        assert b["gradNorm"] == pytest.approx(a["gradNorm"], rel=1e-4)
    block = 32  # tiny_train_args' block size
    tokens = [m["tokens"] for m in two]
    assert tokens[:24] == [4 * block * s for s in range(1, 25)]  # the search: each candidate alone
    assert tokens[24:] == [tokens[23] + 8 * block * s for s in range(1, 9)]  # then both ranks, DDP

    records = [
        json.loads(line) for line in (tmp_path / "two" / "symbio-candidates.jsonl").read_text().splitlines()
    ]
    assert len(records) == 6 and all(r["valLoss"] is not None for r in records)
    summary = json.loads((tmp_path / "two" / "symbio-search-summary.json").read_text())
    for gen in (0, 1):
        pop = [r for r in records if r["generation"] == gen]
        best = min(pop, key=lambda r: r["valLoss"])
        assert summary["history"][gen]["winnerId"] == best["id"]
    assert "symbio winner:" in double.stdout
    # the rates count every rank's candidate tokens over the ranks' common time, from the end of
    # the first generation (each rank compiles at its own pace): the steps alone are never slower
    # than the loop around them
    events = [json.loads(line) for line in (tmp_path / "two" / "events.jsonl").read_text().splitlines()]
    (end,) = [e for e in events if e.get("kind") == "training_complete"]
    rates = end["payload"]
    assert rates["tokensPerSec"] >= rates["loopTokensPerSec"] > 0, rates
