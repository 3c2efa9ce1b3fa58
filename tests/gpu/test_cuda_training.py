"""Training on CUDA: the captured step trains exactly as the uncaptured one, the compiled and
captured step trains as eager PyTorch does, `alpha train` on the GPU checkpoints, samples and
resumes, `alpha bench` reports, and on two GPUs NCCL data parallelism matches one GPU.

Skipped without CUDA (CI is CPU-only); run on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import read_jsonl, run_alpha, tiny_train_args, tiny_trainer, torchrun

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _steps(trainer, n: int) -> list[torch.Tensor]:
    return [trainer._train_step((0, i), i).cpu() for i in range(n)]


def test_the_captured_step_trains_exactly_as_the_uncaptured_one(tmp_path: Path) -> None:
    """Same kernels, replayed from a graph: warm-up steps for the capture run on a snapshot that is
    restored, so the first replayed step starts from the initial weights and every value matches."""
    graphed = tiny_trainer(tmp_path / "g", device="cuda", compile=False, cuda_graphs=True, grad_clip=0.5)
    eager = tiny_trainer(tmp_path / "e", device="cuda", compile=False, cuda_graphs=False, grad_clip=0.5)
    assert graphed.graphed is not None and eager.graphed is None
    assert graphed.wgrad_stream is not None  # on by default for CUDA under autocast
    for a, b in zip(_steps(graphed, 6), _steps(eager, 6), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)  # loss, norm, clip, applied, spike, lr
    for (name, a), b in zip(eager.model.named_parameters(), graphed.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)


def test_the_compiled_captured_step_trains_like_eager_pytorch(tmp_path: Path) -> None:
    """The fast path (Inductor, side-stream weight gradients, one graph) against eager autograd with
    weight gradients on the main stream: different kernels, so bf16-level agreement."""
    fast = tiny_trainer(tmp_path / "f", device="cuda", compile=True, cuda_graphs=True)
    plain = tiny_trainer(tmp_path / "p", device="cuda", compile=False, cuda_graphs=False, wgrad_stream=False)
    fast_values, plain_values = _steps(fast, 8), _steps(plain, 8)
    for a, b in zip(fast_values, plain_values, strict=True):
        assert a[0].item() == pytest.approx(b[0].item(), rel=2e-2)  # loss
        assert a[1].item() == pytest.approx(b[1].item(), rel=5e-2)  # grad norm


def test_train_on_cuda_checkpoints_samples_and_resumes(chat_file: Path, tmp_path: Path) -> None:
    args = ("--backend", "cuda", "--iters", "40", "--eval-interval", "20", "--sample-interval", "20",
            "--checkpoint-interval", "20", "--log-every", "5", "--lr", "3e-3", "--dropout", "0",
            "--sample-tokens", "12")  # fmt: skip
    run_dir = tmp_path / "run"
    result = run_alpha(*tiny_train_args(chat_file, run_dir, *args))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 41))
    assert metrics[-1]["valLoss"] < metrics[0]["loss"]
    # from the sampler process; a round still running when the next is due makes that one skip
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert samples and {s["step"] for s in samples} <= {20, 40}
    assert all(s["samples"][0]["prompt"] for s in samples)

    resumed_dir = tmp_path / "resumed"
    ckpt = run_dir / "checkpoint-20.safetensors"
    resumed = run_alpha(
        "train", "--resume", str(ckpt), "--run-dir", str(resumed_dir), "--sample-interval", "0"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    original = {m["step"]: m for m in metrics}
    after = read_jsonl(resumed_dir / "metrics.jsonl")
    assert [m["step"] for m in after] == list(range(21, 41))
    for m in after:  # attention's backward accumulates with atomics: close, not bitwise
        assert m["loss"] == pytest.approx(original[m["step"]]["loss"], abs=2e-2)
    assert after[-1]["valLoss"] == pytest.approx(original[40]["valLoss"], abs=2e-2)


def test_bench_on_cuda_reports_both_loops(tmp_path: Path) -> None:
    result = run_alpha("bench", "--tiny", "--device", "cuda", "--steps", "5", "--warmup-steps", "2",
                       "--baseline", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["config"]["precision"] == "torch.bfloat16" and report["config"]["wgrad_stream"] is True
    for loop in ("alpha", "baseline"):
        assert report[loop]["tokens_per_sec"] > 0 and report[loop]["peak_mem_gb"] > 0
        assert 0 < report[loop]["mfu"] < 1
        if shutil.which("nvidia-smi"):  # the GPU's clock while timed, read by the UUID query
            assert report[loop]["gpu"] is not None and report[loop]["gpu"]["sm_clock_mhz"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_match_one_gpu_at_the_same_global_batch(chat_file: Path, tmp_path: Path) -> None:
    common = ("--backend", "cuda", "--iters", "12", "--eval-interval", "12", "--sample-interval", "0",
              "--dropout", "0", "--log-every", "1")  # fmt: skip
    one = run_alpha(*tiny_train_args(chat_file, tmp_path / "one", *common, "--batch", "8"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(2, *tiny_train_args(chat_file, tmp_path / "two", *common, "--batch", "4"), timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [m["step"] for m in b] == list(range(1, 13))
    for x, y in zip(a, b, strict=True):  # bf16 and a different reduction order: close, not equal
        assert y["loss"] == pytest.approx(x["loss"], abs=2e-2)
        assert y["tokens"] == x["tokens"]
    assert b[-1]["valLoss"] == pytest.approx(a[-1]["valLoss"], abs=2e-2)


def test_a_search_on_cuda_runs_its_candidates_as_programs(chat_file: Path, tmp_path: Path) -> None:
    """The CUDA default: candidates' activations through alpha.symbio.program's kernels, the model
    compiled and the step captured once for all of them; the search still selects on val loss."""
    config = tmp_path / "search.json"
    config.write_text(json.dumps({"searchMode": "composed-activation-search", "populationSize": 4,
                                  "generations": 3, "stepsPerCandidate": 6, "mutationRate": 0.9,
                                  "populationAdaptation": False}))  # fmt: skip
    args = ("--backend", "cuda", "--iters", "72", "--eval-interval", "36", "--sample-interval", "0",
            "--lr", "3e-3", "--symbio", "--symbio-config", str(config))  # fmt: skip
    run_dir = tmp_path / "run"
    result = run_alpha(*tiny_train_args(chat_file, run_dir, *args))
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_jsonl(run_dir / "symbio-candidates.jsonl")
    assert len(records) >= 9 and all(r["valLoss"] is not None and r["valLoss"] < 10 for r in records)
    assert any("×" in r["activation"] or "+" in r["activation"] for r in records)
    summary = json.loads((run_dir / "symbio-search-summary.json").read_text())
    for entry in summary["history"]:
        population = [r for r in records if r["generation"] == entry["generation"]]
        assert entry["winnerId"] == min(population, key=lambda r: r["valLoss"])["id"]


def test_deferred_records_come_from_behind_the_steps_while_an_evaluation_runs(tmp_path: Path) -> None:
    """``train_steps(defer_flush=True, enqueue_after=...)``: the steps' values are copied to host
    memory right behind them, so the records can be emitted while a queued evaluation runs; they
    equal the ordinary path's records, the queued loss equals ``evaluate()``, and the compiled
    evaluation (a search's) agrees with the eager one."""
    from alpha.events import EventBus, Step
    from tests.conftest import Recorder

    recorders = [Recorder(), Recorder()]
    deferred, plain = (
        tiny_trainer(tmp_path / name, bus=EventBus([rec]), device="cuda", compile=True, log_every=100)
        for name, rec in zip("dp", recorders, strict=True)
    )
    queued: list[torch.Tensor] = []
    summary = deferred.train_steps(
        5, defer_flush=True, enqueue_after=lambda: queued.append(deferred.evaluate_on_device())
    )
    assert summary.steps == 5 and len(queued) == 1
    assert [e.step for e in recorders[0].events if isinstance(e, Step)] == [1]  # 2-5 still pending
    deferred.flush()
    plain.train_steps(5)
    rows = [
        [(e.step, e.metrics["loss"], e.metrics["gradNorm"]) for e in r.events if isinstance(e, Step)]
        for r in recorders
    ]
    assert [r[0] for r in rows[0]] == [r[0] for r in rows[1]] == [1, 2, 3, 4, 5]
    for (_, loss_a, norm_a), (_, loss_b, norm_b) in zip(*rows, strict=True):
        assert loss_a == pytest.approx(loss_b, rel=1e-5) and norm_a == pytest.approx(norm_b, rel=1e-4)
    eager = deferred.evaluate()
    assert float(queued[0]) == pytest.approx(eager, abs=1e-6)
    deferred.compile_evaluation()
    assert deferred.evaluate() == pytest.approx(eager, rel=2e-3)
    deferred.compile_evaluation(False)
    assert deferred.evaluate() == pytest.approx(eager, abs=1e-6)
