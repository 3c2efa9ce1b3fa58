"""The GCP provider against a recording stand-in ``gcloud``: exact calls, errors, dry-run, preflight."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cloud.conftest import REPO, SCRIPT, launcher

TINY = ["--domain", "chat", "--dim", "32", "--heads", "2", "--layers", "2", "--block", "32", "--iters", "5"]
WHERE = ["--project=test-proj", "--zone=us-central1-b"]
# The seed's command (shared/seed), verbatim but for the data and symbio paths.
SEED_FLAGS = [
    "--domain",
    "chat",
    "--iters",
    "50000",
    "--batch",
    "20",
    "--block",
    "512",
    "--dim",
    "384",
    "--heads",
    "8",
    "--layers",
    "8",
    "--lr",
    "5e-5",
    "--backend",
    "helios",
    "--tokenizer",
    "bpe",
    "--warmup",
    "1000",
    "--beta2",
    "0.95",
    "--grad-clip",
    "1.0",
    "--eval-interval",
    "500",
    "--sample-interval",
    "300",
    "--symbio",
    "--zone",
    "us-central1-b",
    "--machine-type",
    "g2-standard-4",
]
SECRETS = {
    "ALPHA_REMOTE_URL": "https://dash.example/ingest-url-91d2",
    "ALPHA_REMOTE_SECRET": "s3cret-ingest-4a7e0c",
    "DISCORD_WEBHOOK_URL": "https://discord.example/api/webhooks/123/tok-e55b",
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "historic.txt"
    path.write_text("<|user|> hi <|assistant|> hello <|end_of_text|>\n" * 50, encoding="utf-8")
    return path


def gcp(fake, *args: str, cwd: Path, env: dict[str, str] | None = None):
    return launcher(*args, "--ssh-timeout", "0", cwd=cwd, env={**fake.env, **(env or {})}, timeout=60)


def create_call(zone: str) -> list[str]:
    return [
        "compute",
        "instances",
        "create",
        "alpha-train",
        "--project=test-proj",
        f"--zone={zone}",
        "--machine-type=g2-standard-4",
        "--image-family=pytorch-2-7-cu128-ubuntu-2204-nvidia-570",
        "--image-project=deeplearning-platform-release",
        "--boot-disk-size=200GB",
        "--boot-disk-type=pd-ssd",
        "--maintenance-policy=TERMINATE",
        "--metadata=install-nvidia-driver=True",
        "--labels=app=alpha",
        "--accelerator=type=nvidia-l4,count=1",
        "--quiet",
    ]


def test_launch_creates_an_l4_instance_with_the_exact_gcloud_calls(fake_gcloud, data, tmp_path):
    result = gcp(
        fake_gcloud,
        "--data",
        str(data),
        *TINY,
        "--zone",
        "us-central1-b",
        "--machine-type",
        "g2-standard-4",
        cwd=tmp_path,
    )
    assert fake_gcloud.calls() == [
        ["config", "get-value", "project"],
        ["compute", "instances", "list", "--project=test-proj", "--filter=name=alpha-train", "--format=json"],
        create_call("us-central1-b"),
        ["compute", "instances", "describe", "alpha-train", *WHERE, "--format=json"],
        ["compute", "ssh", "alpha-train", *WHERE, "--quiet", "--command=echo alpha-ssh-ok $(id -un)"],
    ]
    # The stand-in's sshd never answers: a clear failure that says the instance bills.
    assert result.returncode == 1
    assert "cannot reach alpha-train over SSH" in result.stderr and "--action stop" in result.stderr
    assert fake_gcloud.state()["instances"]["us-central1-b"]["accelerator"] == ["nvidia-l4", 1]


def test_launch_starts_a_stopped_instance_instead_of_creating_one(fake_gcloud, data, tmp_path):
    fake_gcloud.set_state(
        instances={"us-central1-b": {"status": "TERMINATED", "machineType": "g2-standard-4"}}
    )
    result = gcp(fake_gcloud, "--data", str(data), *TINY, cwd=tmp_path)  # no --zone: found where it is
    calls = fake_gcloud.calls()
    assert ["compute", "instances", "start", "alpha-train", *WHERE, "--quiet"] in calls
    assert not any(c[:3] == ["compute", "instances", "create"] for c in calls)
    assert fake_gcloud.state()["instances"]["us-central1-b"]["status"] == "RUNNING"
    assert result.returncode == 1  # then SSH, which the stand-in refuses


def test_zone_auto_tries_zones_in_order_past_capacity_and_quota_errors(fake_gcloud, data, tmp_path):
    fake_gcloud.set_state(fail_create={"us-central1-a": "capacity", "us-central1-b": "quota"})
    result = gcp(
        fake_gcloud,
        "--data",
        str(data),
        *TINY,
        "--zone",
        "auto",
        "--zones",
        "us-central1-a,us-central1-b,us-central1-c",
        cwd=tmp_path,
    )
    creates = [c for c in fake_gcloud.calls() if c[:3] == ["compute", "instances", "create"]]
    assert [c[5] for c in creates] == ["--zone=us-central1-a", "--zone=us-central1-b", "--zone=us-central1-c"]
    assert (
        "us-central1-a: no capacity" in result.stdout
        and "us-central1-b: the project's GPU quota" in result.stdout
    )
    assert list(fake_gcloud.state()["instances"]) == ["us-central1-c"]


def test_quota_error_in_one_zone_names_other_zones_and_creates_nothing(fake_gcloud, data, tmp_path):
    fake_gcloud.set_state(fail_create={"us-central1-b": "quota"})
    result = gcp(fake_gcloud, "--data", str(data), *TINY, "--zone", "us-central1-b", cwd=tmp_path)
    assert result.returncode == 1
    assert "GPU quota for that region is used up" in result.stderr
    assert "us-central1-a" in result.stderr and "--zone auto" in result.stderr
    assert "iam-admin/quotas?project=test-proj" in result.stderr
    assert len([c for c in fake_gcloud.calls() if c[2:3] == ["create"]]) == 1  # no silent retry
    assert not fake_gcloud.state().get("instances")


def test_capacity_error_says_so(fake_gcloud, data, tmp_path):
    fake_gcloud.set_state(fail_create={"us-central1-b": "capacity"})
    result = gcp(fake_gcloud, "--data", str(data), *TINY, "--zone", "us-central1-b", cwd=tmp_path)
    assert result.returncode == 1 and "ZONE_RESOURCE_POOL_EXHAUSTED" in result.stderr
    assert "us-central1-c" in result.stderr  # another L4 zone to try


def test_instance_actions_status_stop_start_delete(fake_gcloud, tmp_path):
    status = gcp(fake_gcloud, "--action", "status", cwd=tmp_path)
    assert status.returncode == 0 and "No alpha-train instance in project test-proj" in status.stdout

    fake_gcloud.set_state(
        instances={
            "us-central1-b": {
                "status": "RUNNING",
                "machineType": "g2-standard-4",
                "accelerator": ["nvidia-l4", 1],
            }
        }
    )
    status = gcp(fake_gcloud, "--action", "status", cwd=tmp_path)
    assert "alpha-train  zone us-central1-b  RUNNING  g2-standard-4  GPUs: 1" in status.stdout

    fake_gcloud.clear_calls()
    stop = gcp(fake_gcloud, "--action", "stop", cwd=tmp_path)  # the seed's command: no --zone
    assert stop.returncode == 0, stop.stderr
    assert fake_gcloud.calls()[-1] == ["compute", "instances", "stop", "alpha-train", *WHERE, "--quiet"]
    assert (
        "disk" in stop.stdout and fake_gcloud.state()["instances"]["us-central1-b"]["status"] == "TERMINATED"
    )

    start = gcp(fake_gcloud, "--action", "start", cwd=tmp_path)
    assert start.returncode == 0
    assert ["compute", "instances", "start", "alpha-train", *WHERE, "--quiet"] in fake_gcloud.calls()

    refused = gcp(fake_gcloud, "--action", "delete", cwd=tmp_path)  # not a terminal, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert "us-central1-b" in fake_gcloud.state()["instances"]
    delete = gcp(fake_gcloud, "--action", "delete", "--yes", cwd=tmp_path)
    assert delete.returncode == 0
    assert fake_gcloud.calls()[-1] == ["compute", "instances", "delete", "alpha-train", *WHERE, "--quiet"]
    assert fake_gcloud.state()["instances"] == {}


def test_seed_command_dry_run_shows_the_plan_and_no_secret(fake_gcloud, data, tmp_path):
    # The seed's config when the project ships it (synced with the code), else a stand-in (uploaded).
    symbio = REPO / "configs" / "symbio-composed-novels.json"
    symbio_on_host = "configs/symbio-composed-novels.json"
    if not symbio.is_file():
        symbio = tmp_path / "symbio-composed-novels.json"
        symbio.write_text(json.dumps({"populationSize": 8}))
        symbio_on_host = "data/symbio-composed-novels.json"
    args = ["--data", str(data), *SEED_FLAGS, "--symbio-config", str(symbio), "--dry-run"]
    result = gcp(fake_gcloud, *args, cwd=tmp_path, env=SECRETS)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert fake_gcloud.calls() == []  # it runs nothing, not even gcloud config
    assert "$ gcloud compute instances create alpha-train --project=PROJECT --zone=us-central1-b" in out
    assert "--machine-type=g2-standard-4" in out and "--accelerator=type=nvidia-l4,count=1" in out
    for step in ("rsync -az --delete", "remote setup --require-cuda", "remote follow", "umask 077"):
        assert step in out, step
    # Exactly the seed's training flags reach `alpha train` on the instance, with host paths.
    start = [line for line in out.splitlines() if "alpha.cloud.remote start" in line]
    assert len(start) == 1
    train_args = flag_values(shlex.split(shlex.split(start[0][2:])[-1].split(" -- ", 1)[1]))
    expected = flag_values(shlex.split(
        "--domain chat --tokenizer bpe --dim 384 --heads 8 --layers 8 --block 512 --iters 50000 --batch 20 "
        "--lr 5e-05 --warmup 1000 --beta2 0.95 --grad-clip 1.0 --eval-interval 500 --sample-interval 300 "
        f"--backend helios --symbio --data data/historic.txt --symbio-config {symbio_on_host}"
    ))  # fmt: skip
    assert train_args.pop("--run-dir").startswith("runs/historic_")
    assert train_args == expected  # no --gpus: one L4
    assert "ALPHA_REMOTE_URL, ALPHA_REMOTE_SECRET, DISCORD_WEBHOOK_URL" in out
    for value in SECRETS.values():
        assert value not in out and value not in result.stderr


def flag_values(args: list[str]) -> dict[str, str | bool]:
    """``--flag value`` pairs (True for a flag without a value)."""
    values: dict[str, str | bool] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            values[arg] = args[i + 1] if has_value else True
    return values


def test_multi_gpu_machine_forwards_gpus_to_alpha_train(fake_gcloud, data, tmp_path):
    result = gcp(
        fake_gcloud, "--data", str(data), *TINY, "--machine-type", "a3-highgpu-8g", "--dry-run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    create = next(line for line in result.stdout.splitlines() if "instances create" in line)
    assert "--machine-type=a3-highgpu-8g" in create and "--accelerator" not in create  # bundled GPUs
    start = next(line for line in result.stdout.splitlines() if "alpha.cloud.remote start" in line)
    assert start.endswith("--gpus 8'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.txt"], "data file missing.txt does not exist"),
        (["--data", "empty.txt"], "data file empty.txt is empty"),
        (["--data", "ok.txt", "--dim", "100", "--heads", "3"], "--dim 100 is not divisible by --heads 3"),
        (["--data", "ok.txt", "--symbio", "--symbio-config", "bad.json"], "not valid JSON"),
        (["--data", "ok.txt", "--machine-type", "n1-standard-8"], "add --accelerator"),
        (["--data", "ok.txt", "--run-dir", "runs/x"], "--run-dir is chosen by the launcher"),
        (["--data", "ok.txt", "--gpus", "2"], "--gpus 2: g2-standard-4 has 1 × L4"),
        (["--data", "ok.txt", "--resume", "latest", "--run-id", "x"], "--run-id cannot be combined"),
        (["--data-url", "ftp://x/y.txt"], "--data-url must be an http(s) URL"),
        (["--domain", "chat"], "--data FILE"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(fake_gcloud, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "ok.txt").write_text("hello\n" * 20)
    (tmp_path / "bad.json").write_text("{not json")
    result = gcp(fake_gcloud, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not any(c[:2] == ["compute", "instances"] for c in fake_gcloud.calls())


def test_missing_gcloud_or_project_fails_before_anything(fake_gcloud, data, tmp_path):
    no_gcloud = launcher("--data", str(data), *TINY, cwd=tmp_path, env={"PATH": str(tmp_path / "nothing")})
    assert no_gcloud.returncode == 2 and "gcloud is not installed" in no_gcloud.stderr
    fake_gcloud.set_state(project="")
    no_project = gcp(fake_gcloud, "--data", str(data), *TINY, cwd=tmp_path)
    assert no_project.returncode == 2 and "gcloud config set project" in no_project.stderr
    assert fake_gcloud.calls() == [["config", "get-value", "project"]]


def test_help_and_dry_run_need_only_the_standard_library(fake_gcloud, data, tmp_path):
    # python -S: no site-packages at all (no torch, numpy, or the editable install of this package).
    plain = [sys.executable, "-S", str(SCRIPT)]
    env = {**os.environ, **fake_gcloud.env}
    help_text = subprocess.run([*plain, "--help"], capture_output=True, text=True, env=env, timeout=30)
    assert help_text.returncode == 0 and "--machine-type" in help_text.stdout
    assert "--symbio-config" in help_text.stdout  # alpha train's own flags
    dry = subprocess.run(
        [*plain, "--data", str(data), *TINY, "--dry-run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert dry.returncode == 0, dry.stderr
    assert "instances create alpha-train" in dry.stdout
