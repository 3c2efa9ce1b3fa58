"""`alpha upload` and `alpha push` from the command line, against a real server process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from alpha.train.checkpoint import FORMAT, write_atomic
from tests.conftest import run_alpha
from tests.remote.conftest import Dashboard, assert_no_credentials


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory whose checkpoint has weights, optimizer moments and trainer state."""
    run = tmp_path / "runs" / "upload_run"
    run.mkdir(parents=True)
    data = tmp_path / "corpus.txt"
    data.write_text("<|user|> hi <|assistant|> hello\n" * 4000)
    config = {
        "runId": "upload_run",
        "domain": "chat",
        "dataPath": str(data),
        "modelConfig": {"nLayer": 2},
        "trainConfig": {"iters": 500, "batchSize": 4},
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6))
    )
    gen = torch.Generator().manual_seed(0)
    weights = {
        f"model.w{i}": torch.randn(64, 256, generator=gen) for i in range(5)
    }  # ~330 KB, incompressible
    tensors = {**weights, **{f"optim.w{i}.exp_avg": torch.randn(64, 256, generator=gen) for i in range(5)}}
    tensors["trainer.rng.cpu"] = torch.get_rng_state()
    meta = {
        "format": FORMAT,
        "step": 500,
        "runId": "upload_run",
        "modelConfig": {"nLayer": 2},
        "trainConfig": {},
        "valLoss": 1.5,
        "tokenizer": "{}",
        "trainer": {"hostCounters": {}},
    }
    write_atomic(tensors, meta, run / "checkpoint-500.safetensors")
    return run


def test_a_broken_upload_resumes_with_only_the_missing_chunks(dashboard: Dashboard, run_dir: Path) -> None:
    checkpoint = run_dir / "checkpoint-500.safetensors"
    env = dashboard.env()
    dashboard.control(die_after_chunks=2)  # the connection breaks while chunk 3 is on its way
    first = run_alpha("upload", str(checkpoint), "--chunk-kib", "64", env=env)
    assert first.returncode == 1 and "run the same command again to resume" in first.stderr
    assert "Traceback" not in first.stderr
    state_file = run_dir / "checkpoint-500.safetensors.upload.json"
    upload_id = json.loads(state_file.read_text())["uploadId"]
    assert upload_id.startswith("upload_run_500_")

    dashboard.start()  # back, with the two chunks it stored
    second = run_alpha(
        "upload", str(run_dir), "--chunk-kib", "64", env=env
    )  # a run dir: its latest checkpoint
    assert second.returncode == 0, second.stderr
    assert "(resumed)" in second.stdout and "resuming upload" in second.stderr
    state = dashboard.state()
    sent = [c["index"] for c in state["chunks"] if c["uploadId"] == upload_id]
    total = state["chunks"][0]["total"]
    assert total >= 5 and sorted(sent) == list(range(total))  # every chunk exactly once
    assert sent[:2] == [0, 1]
    assert f"({total - 2} sent now)" in second.stdout
    assert state["errors"] == []  # chunk and whole-payload sha256 verified by the server
    (assembled,) = state["assembled"]
    assert assembled["hasTrainingData"] and assembled["metricsLines"] == 5
    assert not state_file.exists()

    stored = dashboard.dir / "outputs" / "upload_run" / "checkpoint-500.safetensors"
    with safe_open(str(stored), framework="pt") as f, safe_open(str(checkpoint), framework="pt") as original:
        assert sorted(f.keys()) == [f"model.w{i}" for i in range(5)]  # noqa: SIM118
        meta = json.loads(f.metadata()["alpha"])
        assert all(torch.equal(f.get_tensor(k), original.get_tensor(k)) for k in f.keys())  # noqa: SIM118
    assert meta["step"] == 500 and "trainer" not in meta
    kinds = [json.loads(line)["kind"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert kinds == ["checkpoint_upload_failed", "checkpoint_uploaded"]
    assert_no_credentials([run_dir], dashboard.credentials)
    for text in (first.stdout, first.stderr, second.stdout, second.stderr):
        assert not any(value in text for value in dashboard.credentials)


def test_a_second_upload_of_a_run_leaves_out_the_training_data(dashboard: Dashboard, run_dir: Path) -> None:
    env = dashboard.env()
    assert run_alpha("upload", str(run_dir), env=env).returncode == 0
    assert run_alpha("upload", str(run_dir), "--run-id", "renamed", env=env).returncode == 0
    first, second = dashboard.state()["assembled"]
    assert first["hasTrainingData"] and not second["hasTrainingData"]
    assert (first["name"], second["name"]) == ("upload_run", "renamed")


@pytest.mark.parametrize(
    ("args", "env_keys", "message"),
    [
        (["upload", "nowhere.safetensors"], True, "does not exist"),
        (["upload", "{run}", "--chunk-kib", "2048"], True, "--chunk-kib"),
        (["upload", "{run}"], False, "ALPHA_REMOTE_URL"),
        (["push", "nowhere"], True, "is not a directory"),
        (["push", "{run}"], False, "ALPHA_REMOTE_SECRET"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    run_dir: Path, args: list[str], env_keys: bool, message: str
) -> None:
    env = (
        {"ALPHA_REMOTE_URL": "http://127.0.0.1:9", "ALPHA_REMOTE_SECRET": "x" * 12}
        if env_keys
        else {"ALPHA_REMOTE_URL": "", "ALPHA_REMOTE_SECRET": ""}
    )
    result = run_alpha(*[a.replace("{run}", str(run_dir)) for a in args], env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_push_to_an_unreachable_server_fails_in_one_line_without_credentials(run_dir: Path) -> None:
    secret, url = "push-secret-" + "q" * 16, "http://127.0.0.1:9"
    env = {"ALPHA_REMOTE_URL": url, "ALPHA_REMOTE_SECRET": secret}
    result = run_alpha("push", str(run_dir), "--attempts", "2", env=env, timeout=120)
    assert result.returncode == 1 and "push again" in result.stderr
    assert secret not in result.stderr + result.stdout and "127.0.0.1:9" not in result.stderr
    assert "Traceback" not in result.stderr


def test_upload_final_without_a_server_is_refused_before_training(chat_file: Path, tmp_path: Path) -> None:
    result = run_alpha(
        "train",
        "--data",
        str(chat_file),
        "--iters",
        "5",
        "--run-dir",
        str(tmp_path / "r"),
        "--upload-final",
        env={"ALPHA_REMOTE_URL": "", "ALPHA_REMOTE_SECRET": ""},
    )
    assert result.returncode == 2 and "--upload-final needs" in result.stderr
    assert not (tmp_path / "r" / "metrics.jsonl").exists()
