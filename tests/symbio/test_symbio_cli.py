"""`alpha train --symbio` end to end, as a subprocess: outputs, one winner, resume, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

from alpha.cli import main
from tests.conftest import read_jsonl, run_alpha, tiny_train_args

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models on shared cores: far faster on one thread
CONFIG = {
    "searchMode": "composed-activation-search",
    "populationSize": 3,
    "generations": 3,
    "stepsPerCandidate": 4,
    "mutationRate": 0.9,
    "populationAdaptation": False,
    "metricsInterval": 4,
    "diversityBonus": 0.2,
}
RECORD_TEXT = """id name activation generation parentId parentName lineage activationGraph mutationApplied
bestLoss bestValLoss valLoss fitnessScore steps tokensPerSec alive"""
RECORD_KEYS = set(RECORD_TEXT.split())
SEARCH_FIELDS = {
    "symbio_candidate_id",
    "symbio_candidate_name",
    "symbio_candidate_activation",
    "symbio_candidate_parent_id",
    "symbio_candidate_parent_name",
    "symbio_generation",
    "symbio_activation_graph",
    "architecture_diversity",
}
CUSUM_FIELDS = {"cusum_grad", "cusum_clip", "cusum_tps", "cusum_val", "cusum_alerts"}


def checkpoint_meta(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["alpha"])


@pytest.fixture(scope="module")
def symbio_run(
    chat_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    base = tmp_path_factory.mktemp("symbio")
    config = base / "search.json"
    config.write_text(json.dumps(CONFIG))
    run_dir = base / "search_run"
    args = tiny_train_args(chat_file, run_dir, "--iters", "40", "--lr", "3e-3", "--log-every", "4",
                           "--checkpoint-interval", "12", "--keep-checkpoints", "5", "--eval-interval", "12",
                           "--sample-interval", "24", "--sample-tokens", "8",
                           "--symbio", "--symbio-config", str(config))  # fmt: skip
    result = run_alpha(*args, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    return run_dir, result


def test_search_outputs_one_winner_everywhere(symbio_run) -> None:
    run_dir, result = symbio_run
    records = read_jsonl(run_dir / "symbio-candidates.jsonl")
    assert len(records) == 9 and all(set(r) == RECORD_KEYS for r in records)
    assert all(r["steps"] == 4 and isinstance(r["valLoss"], float) for r in records)
    assert all(r["parentId"] in {p["id"] for p in records} for r in records if r["generation"] > 0)
    assert all(r["lineage"][-1] == r["id"] for r in records)
    assert {r["mutationApplied"] for r in records if r["generation"] > 0} - {"clone"}  # real mutations

    events = read_jsonl(run_dir / "events.jsonl")
    gens = [e["payload"] for e in events if e["kind"] == "symbio_generation"]
    assert [g["generation"] for g in gens] == [0, 1, 2]
    for gen in gens:  # each generation's winner is its lowest measured val loss
        assert gen["winner"]["valLoss"] == min(c["valLoss"] for c in gen["candidates"])
    summary = json.loads((run_dir / "symbio-search-summary.json").read_text())
    winner = summary["winner"]
    assert summary["finished"] and winner["id"] == gens[-1]["winner"]["id"]
    end = events[-1]["payload"]
    report = (run_dir / "symbio-search-report.md").read_text()
    formula = report.split("**Activation:** ")[1].splitlines()[0]
    assert end["status"] == "completed" and end["symbioWinner"] == formula == winner["activation"]
    assert f"symbio winner: {formula}" in result.stdout and "Infinity" not in report
    final = checkpoint_meta(run_dir / "checkpoint-40.safetensors")
    assert final["modelConfig"]["ffnActivation"] == "composed"
    assert final["modelConfig"]["activationGraph"] == winner["activationGraph"]

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 41))  # every candidate step counts
    assert all(m.keys() >= SEARCH_FIELDS for m in metrics[:36])
    assert not any("symbio_candidate_id" in m for m in metrics[36:])  # the winner trains the rest
    assert all(m.keys() >= CUSUM_FIELDS for m in metrics)
    # effective_rank: a generation's last step during the search, then every metricsInterval (4)
    assert [m["step"] for m in metrics if "effective_rank" in m] == [12, 24, 36, 40]
    assert [m["step"] for m in metrics if "valLoss" in m] == [12, 24, 36, 40]
    assert [m["valLoss"] for m in metrics if m["step"] in (12, 24, 36)] == [g["bestValLoss"] for g in gens]
    assert "diversityBonus" in result.stdout  # the one-time "no effect" warning
    assert "── symbio search complete ──" in (run_dir.parent / "train_search_run.log").read_text()


def resume_search(
    run_dir: Path, into: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Resume ``run_dir``'s search from its step-12 checkpoint, copied into ``into``."""
    into.mkdir()
    shutil.copy(run_dir / "checkpoint-12.safetensors", into)
    checkpoint = str(into / "checkpoint-12.safetensors")
    return run_alpha("train", "--resume", checkpoint, *args, env={**ONE_THREAD, **(env or {})})


def same_candidates(run_dir: Path, resumed: Path) -> list[dict]:
    """The resumed search's candidates, checked to be the original's with the same val losses."""
    original = read_jsonl(run_dir / "symbio-candidates.jsonl")
    again = read_jsonl(resumed / "symbio-candidates.jsonl")
    assert [r["id"] for r in again] == [r["id"] for r in original]
    for a, b in zip(original, again, strict=True):
        assert b["valLoss"] == pytest.approx(a["valLoss"], abs=1e-5)
    return again


def test_resumed_search_equals_the_uninterrupted_one(symbio_run, tmp_path: Path) -> None:
    run_dir, _ = symbio_run
    resumed = tmp_path / "resumed"
    result = resume_search(run_dir, resumed)
    assert result.returncode == 0, result.stderr

    def strip(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "tokensPerSec"} for r in records]

    original = strip(read_jsonl(run_dir / "symbio-candidates.jsonl"))
    assert strip(read_jsonl(resumed / "symbio-candidates.jsonl")) == original
    losses = {m["step"]: m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl")}
    again = read_jsonl(resumed / "metrics.jsonl")
    assert [m["step"] for m in again] == list(range(13, 41))
    assert all(m["loss"] == pytest.approx(losses[m["step"]], abs=1e-6) for m in again)


def test_search_with_weight_gradients_on_the_side_stream_path_selects_the_same(
    symbio_run, tmp_path: Path
) -> None:
    """alpha.model.linear's weight gradients (the default on CUDA) through snapshots, restores and
    activation swaps: the resumed search picks the same candidates with the same losses."""
    run_dir, _ = symbio_run
    resumed = tmp_path / "wgrad"
    result = resume_search(run_dir, resumed, "--wgrad-stream")
    assert result.returncode == 0, result.stderr
    assert json.loads((resumed / "config.json").read_text())["trainConfig"]["wgradStream"] is True
    same_candidates(run_dir, resumed)
    losses = {m["step"]: m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl")}
    assert all(
        m["loss"] == pytest.approx(losses[m["step"]], abs=1e-5) for m in read_jsonl(resumed / "metrics.jsonl")
    )


def test_candidates_run_as_programs_select_the_same(symbio_run, tmp_path: Path) -> None:
    """alpha.symbio.program's op (the CUDA default, here its reference) in place of generated code:
    the resumed search picks the same candidates with the same losses."""
    run_dir, _ = symbio_run
    resumed = tmp_path / "program"
    result = resume_search(run_dir, resumed, env={"ALPHA_SYMBIO_ACTIVATIONS": "program"})
    assert result.returncode == 0, result.stderr
    again = same_candidates(run_dir, resumed)
    assert any("×" in r["activation"] for r in again)  # products and sums ran as programs too


def test_an_unknown_activation_mode_is_one_line_and_exit_2(symbio_run, tmp_path: Path) -> None:
    run_dir, _ = symbio_run
    result = resume_search(run_dir, tmp_path / "bad-mode", env={"ALPHA_SYMBIO_ACTIVATIONS": "fast"})
    assert result.returncode == 2
    assert "ALPHA_SYMBIO_ACTIVATIONS='fast': expected auto, program or code" in result.stderr
    assert "Traceback" not in result.stderr


def test_sample_works_on_a_symbio_checkpoint(symbio_run) -> None:
    run_dir, _ = symbio_run
    result = run_alpha("sample", "--checkpoint", str(run_dir / "checkpoint-24.safetensors"), "--prompt", "hi",
                       "--steps", "8", "--temp", "0", env=ONE_THREAD)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(step 24)" in result.stdout


def test_unknown_config_key_is_one_line_and_exit_2(chat_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "typo.json"
    config.write_text('{"populationSzie": 8}')
    result = run_alpha(
        *tiny_train_args(chat_file, tmp_path / "r", "--symbio", "--symbio-config", str(config))
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown key 'populationSzie'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--symbio-resume-graph", '{"type":"basis","op":"tanh"}'], "unknown basis op 'tanh'"),
        (
            ["--symbio-resume-graph", json.dumps({"type": "mul", "left": {"type": "mul", "left": {
                "type": "mul", "left": {"type": "mul", "left": {"type": "basis", "op": "relu"},
                "right": {"type": "basis", "op": "relu"}}, "right": {"type": "basis", "op": "relu"}},
                "right": {"type": "basis", "op": "relu"}}, "right": {"type": "basis", "op": "relu"}})],
            "depth 5 > maxGraphDepth 4",
        ),
        (["--symbio-resume-graph", "{oops"], "not valid JSON"),
        (["--iters", "30"], "needs at least 2 candidates × 25 steps = 50 steps, but --iters is 30"),
        (["--activation", "swiglu"], "--activation swiglu is gated"),
    ],
)  # fmt: skip
def test_bad_search_input_is_one_line_and_exit_2(chat_file, tmp_path, capsys, extra, message) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"searchMode": "composed-activation-search", "stepsPerCandidate": 25}))
    args = tiny_train_args(chat_file, tmp_path / "r", "--symbio", "--symbio-config", str(config), *extra)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_search_longer_than_iters_warns_with_the_real_step_count(chat_file, tmp_path) -> None:
    config = tmp_path / "long.json"
    config.write_text(json.dumps({**CONFIG, "generations": 50}))
    args = tiny_train_args(chat_file, tmp_path / "long_run", "--iters", "20", "--eval-interval", "20",
                           "--sample-interval", "0", "--symbio", "--symbio-config", str(config))  # fmt: skip
    result = run_alpha(*args, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert "3 candidates × 4 steps × 50 generations = 600 steps, but --iters is 20" in result.stdout
    summary = json.loads((tmp_path / "long_run" / "symbio-search-summary.json").read_text())
    assert summary["finished"] and summary["searchSteps"] == 20 and summary["generations"] == 1
    assert summary["history"][-1]["population"] == 2  # a smaller final generation fills the run


def test_a_fixed_composed_activation_trains_and_bad_graphs_are_refused(chat_file, tmp_path, capsys) -> None:
    graph = {"type": "mul", "left": {"type": "basis", "op": "relu"}, "right": {"type": "basis", "op": "gelu"}}
    run_dir = tmp_path / "fixed_graph"
    args = tiny_train_args(
        chat_file, run_dir, "--iters", "2", "--eval-interval", "2", "--sample-interval", "0"
    )
    result = run_alpha(*args, "--activation-graph", json.dumps(graph), env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    model = checkpoint_meta(run_dir / "checkpoint-2.safetensors")["modelConfig"]
    assert model["ffnActivation"] == "composed" and model["activationGraph"] == graph
    for bad, message in [
        ('{"type":"basis","op":"tanh"}', "unknown basis op 'tanh'"),
        ("[", "not valid JSON"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--activation-graph", bad])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    assert main([*args, "--activation-graph", json.dumps(graph), "--activation", "relu"]) == 2
    assert "--activation-graph replaces --activation" in capsys.readouterr().err
