#!/usr/bin/env python3
"""Screenshots of the dashboard pages for docs/: /training, /runs and a symbio run's /runs/{id}.

Starts ``alpha serve`` on a free loopback port with a temporary data dir, fills it over the
ingest API with demo runs (an active chat run, a completed run with an uploaded checkpoint, a
symbiogenesis run, a failed run), and captures the pages with headless Chromium.

    python scripts/dashboard_screenshots.py --out docs
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from safetensors.numpy import save

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import start_server  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SECRET = "screenshot-secret"
PROMPTS = ["Hello, how are you?", "Tell me a joke", "What do you like to do for fun?"]


def step_records(
    first: int, last: int, rng: random.Random, scale: float = 1.0, every_val: int = 50
) -> list[dict]:
    records = []
    for step in range(first, last + 1):
        loss = (1.9 + 4.4 * math.exp(-step / (180 * scale)) + rng.gauss(0, 0.02)) * (
            1 + 0.02 * math.sin(step / 9)
        )
        lr = 6e-4 * min(1.0, step / 60) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / 1000)))
        record = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "gradNorm": 0.4 + 2.5 * math.exp(-step / 80) + abs(rng.gauss(0, 0.03)),
            "elapsed_ms": 46 + rng.gauss(0, 0.5),
            "ms_per_iter": 46 + rng.gauss(0, 0.5),
            "tokens_per_sec": 88_000 + rng.gauss(0, 600),
            "clip_coef": 1.0,
            "clip_pct": 0.0,
        }
        if step % every_val == 0:
            record["valLoss"] = loss + 0.12 + step / 20_000
        records.append(record)
    return records


def run_start(run_id: str, domain: str, iters: int, params: int, **train: object) -> dict:
    return {
        "type": "run_start",
        "runId": run_id,
        "domain": domain,
        "totalParams": params,
        "modelConfig": {
            "vocabSize": 4000,
            "blockSize": 256,
            "nLayer": 6,
            "nEmbd": 256,
            "nHead": 8,
            "dropout": 0.1,
            "ffnActivation": "gelu",
        },
        "trainConfig": {
            "iters": iters,
            "batchSize": 16,
            "lr": 6e-4,
            "backend": "cuda",
            "tokenizer": "bpe",
            "optimizer": "adamw",
            **train,
        },
        "infra": {"gpuName": "NVIDIA L4", "gpuVramMb": 23034, "hostname": "alpha-train", "cpuCount": 8},
    }


def populate(http: httpx.Client) -> str:
    def ingest(body: dict) -> None:
        http.post("/api/ingest", json=body).raise_for_status()

    rng = random.Random(7)
    # a completed run with an uploaded checkpoint
    done = "historic_chat_20260110093012_k3p1"
    ingest(run_start(done, "chat", 1000, 6_410_000))
    ingest({"type": "metrics", "runId": done, "metrics": step_records(1, 1000, rng)})
    payload = gzip.compress(save({"model.wte.weight": np.zeros((4000, 256), dtype=np.float32)}))
    http.post(
        "/api/upload/chunk",
        content=payload,
        headers={
            "Content-Type": "application/octet-stream",
            "X-Upload-Id": f"{done}_1000_1",
            "X-Chunk-Index": "0",
            "X-Total-Chunks": "1",
            "X-Chunk-Sha256": hashlib.sha256(payload).hexdigest(),
        },
    ).raise_for_status()
    http.post(
        "/api/upload/assemble",
        json={
            "uploadId": f"{done}_1000_1",
            "name": done,
            "step": 1000,
            "totalChunks": 1,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "config": {},
        },
    ).raise_for_status()
    http.post("/api/ingest/complete", json={"runId": done, "finalStep": 1000}).raise_for_status()

    # a failed run
    failed = "novels_20260111120301_x9q2"
    ingest(run_start(failed, "text", 5000, 11_200_000))
    ingest({"type": "metrics", "runId": failed, "metrics": step_records(1, 730, rng)})
    http.post(
        "/api/ingest/complete",
        json={"runId": failed, "finalStep": 730, "status": "failed", "reason": "CUDA out of memory"},
    ).raise_for_status()

    # a symbiogenesis run
    symbio = "novels_symbio_20260112081500_a7c4"
    ingest(
        run_start(
            symbio,
            "text",
            1200,
            6_300_000,
            symbio=True,
            symbioConfig={"searchMode": "composed-activation-search", "populationSize": 4},
        )
    )
    ingest({"type": "metrics", "runId": symbio, "metrics": step_records(1, 1200, rng, every_val=25)})
    formulas = [
        "gelu",
        "silu",
        "relu",
        "sq",
        "(relu+0.04·sq)×gelu",
        "silu×gelu",
        "(gelu+silu)",
        "relu×silu",
        "(relu+0.04·sq)×(gelu+silu)",
        "((relu+0.04·sq)×gelu)+0.1·silu",
        "silu×(gelu+0.2·sq)",
        "relu×gelu",
    ]
    previous: list[dict] = []
    for gen in range(4):
        candidates = []
        for i in range(4):
            parent = previous[i // 2] if previous else None
            val = 4.3 - 0.25 * gen - 0.05 * i + rng.gauss(0, 0.04)
            candidates.append(
                {
                    "id": f"g{gen}c{i}",
                    "name": f"gen{gen}_{i}",
                    "activation": formulas[(gen * 3 + i) % len(formulas)],
                    "generation": gen,
                    "parentId": parent["id"] if parent else None,
                    "parentName": parent["name"] if parent else None,
                    "lineage": [],
                    "activationGraph": None,
                    "mutationApplied": rng.choice(["gate", "add_term", "swap", "perturb"]) if gen else None,
                    "bestLoss": val - 0.1,
                    "bestValLoss": val,
                    "valLoss": val + 0.02,
                    "fitnessScore": 1 / val,
                    "steps": 75,
                    "tokensPerSec": 86_000 + rng.gauss(0, 3000),
                    "alive": i < 3,
                }
            )
        candidates.sort(key=lambda c: c["bestValLoss"])
        previous = candidates
        ingest(
            {
                "type": "event",
                "runId": symbio,
                "event": {
                    "id": f"{symbio}-gen{gen}",
                    "step": 300 * (gen + 1),
                    "kind": "symbio_generation",
                    "message": f"generation {gen}: winner {candidates[0]['name']}",
                    "payload": {
                        "generation": gen,
                        "candidates": candidates,
                        "winner": candidates[0],
                        "bestValLoss": candidates[0]["bestValLoss"],
                    },
                },
            }
        )
    for step in range(200, 1201, 200):
        ingest(
            {
                "type": "samples",
                "runId": symbio,
                "step": step,
                "samples": [
                    {
                        "prompt": "The ",
                        "output": "The old house stood at the end of the lane, its windows dark.",
                    },
                    {
                        "prompt": "Once upon a time",
                        "output": "Once upon a time there was a girl who lived by the sea.",
                    },
                ],
            }
        )
    ingest(
        {
            "type": "events",
            "runId": symbio,
            "events": [
                {
                    "id": "s1",
                    "step": 410,
                    "level": "warn",
                    "kind": "symbio_cusum_alert",
                    "message": "CUSUM: throughput drift",
                },
                {
                    "id": "s2",
                    "step": 1200,
                    "kind": "training_complete",
                    "message": "training completed at step 1200/1200",
                    "payload": {"status": "completed", "finalStep": 1200},
                },
            ],
        }
    )

    # an active run, streaming now
    live = "chat_20260113154501_m2f8"
    ingest(run_start(live, "chat", 1000, 6_410_000))
    ingest({"type": "metrics", "runId": live, "metrics": step_records(1, 420, rng)})
    ingest(
        {
            "type": "samples",
            "runId": live,
            "step": 400,
            "trend": {"summary": "improving"},
            "samples": [
                {"prompt": f"<|user|> {p} <|assistant|>", "output": o}
                for p, o in zip(
                    PROMPTS,
                    [
                        "I'm good, thanks! How about you?",
                        "Why did the chicken cross the road? To get to the other side.",
                        "I like reading and going for long walks.",
                    ],
                    strict=True,
                )
            ],
        }
    )
    ingest(
        {
            "type": "events",
            "runId": live,
            "events": [
                {
                    "id": "l1",
                    "step": 137,
                    "level": "warn",
                    "kind": "spike_skip",
                    "message": "grad norm 8.41 > 5.0x EMA 1.12: update skipped",
                },
                {
                    "id": "l2",
                    "step": 402,
                    "level": "warn",
                    "kind": "health_plateau",
                    "message": "val loss flat for 3 evals (-0.4%)",
                },
            ],
        }
    )
    return symbio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="folder for the PNG files")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="alpha-shots-") as tmp:
        server, url = start_server(Path(tmp), SECRET)
        try:
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {SECRET}"}, timeout=30
            ) as http:
                symbio = populate(http)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                for path, name, height in (
                    ("/training", "dashboard-training.png", 1000),
                    ("/runs", "dashboard-runs.png", 520),
                    (f"/runs/{symbio}", "dashboard-run-symbio.png", 1720),
                ):
                    page.set_viewport_size({"width": 1200, "height": height})
                    page.goto(url + path)
                    page.wait_for_load_state("networkidle") if path != "/training" else time.sleep(1.5)
                    page.screenshot(path=str(out / name), full_page=False)
                    print(f"{out / name}: {(out / name).stat().st_size // 1024} KiB")
                browser.close()
        finally:
            server.terminate()
            server.wait(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
