"""Discord notifications driven by real events, against a real webhook endpoint on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

from alpha.events import Alert, EventBus, RunEnd, RunStart, Samples
from alpha.sinks.discord import DiscordNotifier
from tests.remote.conftest import Dashboard


def start_event() -> RunStart:
    return RunStart(
        step=0,
        run_id="discord_run",
        run_dir="runs/discord_run",
        domain="chat",
        data_path="/data/super_chat.txt",
        model_config={"nLayer": 8, "nEmbd": 384, "nHead": 8, "blockSize": 512, "vocabSize": 4000},
        train_config={"batchSize": 20, "iters": 50000, "lr": 5e-5, "backend": "helios", "symbio": True},
        total_params=17_437_440,
        infra={"gpuName": "NVIDIA L4", "gpuVendor": "NVIDIA", "gpuVramMb": 23034},
    )


def test_embeds_stay_within_discord_limits_and_posts_keep_their_spacing(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    notifier = DiscordNotifier(dashboard.webhook, min_interval=0.4)
    bus = EventBus([notifier])
    bus.emit(start_event())
    huge = "x" * 5000 + "```" + "y" * 100
    prompts = [{"prompt": "p" * 400 + str(i), "output": huge} for i in range(30)]
    bus.emit(
        Samples(
            step=300,
            samples=prompts,
            trend={"summary": "improving", "windowStartStep": 0, "windowEndStep": 300},
        )
    )
    bus.emit(
        Alert(
            step=310,
            kind="health_overfitting",
            level="warn",
            text="val loss rising " * 400,
            data={"gap": 0.4, "detail": "z" * 3000},
        )
    )
    bus.emit(Alert(step=311, kind="spike_skip", level="warn", text="not for Discord"))
    bus.emit(Alert(step=312, kind="health_info_only", level="info", text="not for Discord either"))
    bus.emit(
        RunEnd(
            step=50000,
            status="failed",
            reason="RuntimeError: CUDA error",
            iters=50000,
            elapsed_s=3725.0,
            tokens_per_sec=4772.0,
            final_loss=3.2,
            final_val_loss=3.4,
            best_val_loss=3.3,
            best_checkpoint="runs/discord_run/checkpoint-49500.safetensors",
            symbio_winner="(relu+0.04·sq)×gelu",
        )
    )
    bus.close()
    posts = dashboard.state()["discord"]
    assert [p["status"] for p in posts] == [204] * 4, [p.get("errors") for p in posts]
    embeds = [p["payload"]["embeds"][0] for p in posts]
    assert [e["title"] for e in embeds] == [
        "🚀 Training Started",
        "📝 Inference Samples (Step 300)",
        "⚠️ Training Alert: overfitting",
        "❌ Training Failed",
    ]
    start = {f["name"]: f["value"] for f in embeds[0]["fields"]}
    assert start["Params"] == "17.4M" and start["Hardware"].startswith("NVIDIA L4")
    assert start["Data"] == "`super_chat.txt`"
    sample_fields = embeds[1]["fields"]
    assert len(sample_fields) == 25 and sample_fields[-1]["name"] == "Training Status"
    assert all(f["value"].startswith("```\n") and f["value"].endswith("\n```") for f in sample_fields[:-1])
    assert all(f["value"].count("```") == 2 for f in sample_fields[:-1])  # fences in the output are broken
    final = {f["name"]: f["value"] for f in embeds[3]["fields"]}
    assert final["Symbio Winner"] == "`(relu+0.04·sq)×gelu`" and final["Time"] == "1h 02m 05s"
    assert embeds[3]["description"] == "RuntimeError: CUDA error"
    gaps = [b["t"] - a["t"] for a, b in zip(posts, posts[1:], strict=False)]
    assert min(gaps) >= 0.3  # 0.4 s apart when sent; receipt times jitter a little


def test_a_deleted_webhook_turns_notifications_off_without_raising(dashboard: Dashboard, capsys) -> None:
    notifier = DiscordNotifier(dashboard.url + "/deleted/1/gone-token", min_interval=0.0)
    notifier.handle(start_event())
    time.sleep(0.5)
    notifier.handle(start_event())  # after the 404: dropped at once
    notifier.close()
    err = capsys.readouterr().err
    assert "404" in err and "off for this run" in err
    assert "gone-token" not in err and dashboard.url not in err
    assert notifier.stats["sent"] == 0


def test_an_unreachable_webhook_never_blocks_the_caller(capsys) -> None:
    notifier = DiscordNotifier(
        "http://127.0.0.1:9/api/webhooks/1/secret-token", min_interval=0.0, drain_seconds=0.5
    )
    t0 = time.perf_counter()
    for _ in range(200):
        notifier.handle(start_event())
    handle_seconds = time.perf_counter() - t0
    notifier.close()
    assert handle_seconds < 2.0  # 200 embeds queued (or dropped) without waiting on the network
    assert notifier.stats["dropped"] > 0
    assert "secret-token" not in capsys.readouterr().err
