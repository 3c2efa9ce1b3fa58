"""Bad input: one clear line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_MODEL, run_alpha

GOOD = "<|user|> hi <|assistant|> hello there <|end_of_text|>"


def assert_one_line_error(result, fragment: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]


def train(data: Path | str, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--domain", "chat", "--vocab-size", "300", *TINY_MODEL, *extra]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    made = {
        "empty": b"",
        "binary": b"\xff\xfe\x00garbage\xc3\x28\n",
        "no_conversation": b"just prose\nand more prose\n",
        "tiny": ("\n".join([GOOD] * 40) + "\n").encode(),
        "corrupt.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson",
    }
    out = {}
    for name, content in made.items():
        out[name] = tmp_path / name
        out[name].write_bytes(content)
    return out


def test_missing_data_file(tmp_path: Path) -> None:
    assert_one_line_error(run_alpha(*train(tmp_path / "nope.txt")), "does not exist")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--data", "/nonexistent/chat.txt"],
        ["train", "--data", "{readme}", "--dim", "30", "--heads", "4"],
        ["train", "--data", "{readme}", "--val-data", "/nonexistent/val.txt"],
        ["train", "--data", "{readme}", "--symbio", "--symbio-config", "/nonexistent/symbio.json"],
        ["train", "--data", "{readme}", "--activation-graph", '{"type": "basis", "op": "tanh"}'],
        ["sample", "--checkpoint", "/nonexistent/run"],
        ["sample", "--checkpoint", "{readme}", "--steps", "0"],
        ["bench", "--dim", "30", "--heads", "4"],
        ["bench", "--steps", "0"],
        ["bench", "--activation-program"],
        ["bench", "--activation-graph", '{"type": "basis", "op": "tanh"}'],
        ["bench", "--vocab", "1"],
    ],
)
def test_wrong_flags_and_paths_fail_before_torch_is_imported(argv: list[str]) -> None:
    """The answer comes in a fraction of a second, not after the seconds torch takes to import."""
    argv = [a.replace("{readme}", str(REPO / "README.md")) for a in argv]
    code = (
        "import sys\n"
        "from alpha.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as exc:  # argparse's errors\n"
        "    rc = exc.code\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["2", "False"], (result.stdout, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_empty_data_file(files) -> None:
    assert_one_line_error(run_alpha(*train(files["empty"])), "is empty")


def test_non_utf8_data_file(files) -> None:
    assert_one_line_error(run_alpha(*train(files["binary"])), "not UTF-8")


def test_chat_file_without_a_valid_conversation(files) -> None:
    assert_one_line_error(run_alpha(*train(files["no_conversation"])), "no valid conversation")


def test_more_gpus_than_the_host_has(files) -> None:
    """``--gpus N`` is checked before torchrun starts N processes (CI hosts have no GPU)."""
    import torch

    gpus = str(max(2, torch.cuda.device_count() + 1))
    assert_one_line_error(run_alpha(*train(files["tiny"], "--gpus", gpus)), f"--gpus {gpus}: this host has")
    assert_one_line_error(
        run_alpha(*train(files["tiny"], "--gpus", "2", "--backend", "cpu")), "but --backend is cpu"
    )


def test_dim_not_divisible_by_heads(files) -> None:
    assert_one_line_error(run_alpha(*train(files["tiny"], "--dim", "30", "--heads", "4")), "not divisible")


def test_block_larger_than_the_val_split(files, tmp_path: Path) -> None:
    result = run_alpha(*train(files["tiny"], "--block", "4096", "--run-dir", str(tmp_path / "r")))
    assert_one_line_error(result, "validation split")


def test_negative_side_stream_sm_count(files) -> None:
    assert_one_line_error(run_alpha(*train(files["tiny"], "--wgrad-sms", "-1")), "--wgrad-sms must be >= 0")


def test_unknown_flag_value_and_unknown_flag(files) -> None:
    assert_one_line_error(run_alpha(*train(files["tiny"], "--activation", "tanh")), "invalid choice")
    assert_one_line_error(run_alpha(*train(files["tiny"], "--no-such-flag", "1")), "unrecognized")


def test_unreadable_symbio_config(files, tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    assert_one_line_error(
        run_alpha(*train(files["tiny"], "--symbio", "--symbio-config", str(missing))), "does not exist"
    )


def test_helios_backend_without_a_gpu(files, tmp_path: Path) -> None:
    result = run_alpha(
        *train(files["tiny"], "--backend", "helios", "--run-dir", str(tmp_path / "r")),
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert_one_line_error(result, "needs a CUDA GPU")


def test_resume_from_a_corrupt_checkpoint(files) -> None:
    assert_one_line_error(run_alpha("train", "--resume", str(files["corrupt.safetensors"])), "checkpoint")


@pytest.mark.parametrize("command", [["train", "--resume"], ["sample", "--checkpoint"], ["upload"]])
def test_a_checkpoint_path_that_is_missing_or_an_empty_directory(command, tmp_path: Path) -> None:
    assert_one_line_error(run_alpha(*command, str(tmp_path / "nowhere")), "does not exist")
    assert_one_line_error(run_alpha(*command, str(tmp_path)), "no checkpoint-<step>.safetensors")


def test_resume_with_a_different_model_shape(chat_file: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    ok = run_alpha(*train(chat_file, "--iters", "2", "--run-dir", str(run_dir), "--sample-interval", "0"))
    assert ok.returncode == 0, ok.stderr
    result = run_alpha(
        "train", "--resume", "latest", "--run-dir", str(run_dir), "--iters", "4", "--dim", "64"
    )
    assert_one_line_error(result, "model flags differ")
    # dropout and the residual stream's precision change no parameter: they may be set anew
    resumed = tmp_path / "resumed"
    ok = run_alpha(
        "train", "--resume", str(run_dir), "--iters", "3", "--dropout", "0.3", "--fp32-residual",
        "--run-dir", str(resumed), "--sample-interval", "0",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    model = json.loads((resumed / "config.json").read_text())["modelConfig"]
    assert model["dropout"] == 0.3 and model["fp32Residual"] is True


def test_all_documents_in_validation(tmp_path: Path) -> None:
    from alpha.data.corpus import is_validation

    line = next(
        c for i in range(1000) if is_validation(c := f"<|user|> q{i} <|assistant|> a <|end_of_text|>")
    )
    data = tmp_path / "same.txt"
    data.write_text((line + "\n") * 300)
    assert_one_line_error(run_alpha(*train(data, "--run-dir", str(tmp_path / "r"))), "training split")
