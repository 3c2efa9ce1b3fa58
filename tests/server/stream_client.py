"""A stand-alone client process that streams a synthetic run to a dashboard, like a trainer does.

    ALPHA_REMOTE_SECRET=... python stream_client.py URL RUN_ID STEPS INTERVAL_S

Sends run_start, then one step record per interval (val loss every 10 steps, samples every 20,
a warning event at step 15), then completes the run.
"""

from __future__ import annotations

import math
import os
import sys
import time

import httpx


def main() -> int:
    url, run_id, steps, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    headers = {"Authorization": f"Bearer {os.environ['ALPHA_REMOTE_SECRET']}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:

        def post(path: str, body: dict) -> None:
            client.post(path, json=body).raise_for_status()

        post(
            "/api/ingest",
            {
                "type": "run_start",
                "runId": run_id,
                "domain": "chat",
                "totalParams": 52_000,
                "modelConfig": {"nLayer": 2, "nEmbd": 32, "nHead": 2, "blockSize": 32, "vocabSize": 512},
                "trainConfig": {"iters": steps, "batchSize": 8, "lr": 2e-3},
            },
        )
        for step in range(1, steps + 1):
            loss = 2.0 + 4.0 * math.exp(-step / 25)
            record = {
                "step": step,
                "loss": loss,
                "lr": 2e-3 * min(1, step / 10),
                "gradNorm": 1 / math.sqrt(step),
                "elapsed_ms": 20.0,
                "ms_per_iter": 20.0,
                "tokens_per_sec": 12800.0 + step,
            }
            if step % 10 == 0:
                record["valLoss"] = loss + 0.15
            post("/api/ingest", {"type": "metrics", "runId": run_id, "metrics": [record]})
            if step % 20 == 0:
                post(
                    "/api/ingest",
                    {
                        "type": "samples",
                        "runId": run_id,
                        "step": step,
                        "samples": [
                            {
                                "prompt": "<|user|> Hello, how are you? <|assistant|>",
                                "output": f"I am fine at step {step}",
                            }
                        ],
                    },
                )
            if step == 15:
                post(
                    "/api/ingest",
                    {
                        "type": "event",
                        "runId": run_id,
                        "event": {
                            "id": f"{run_id}-spike-15",
                            "step": 15,
                            "level": "warn",
                            "kind": "spike_skip",
                            "message": "grad norm 9.1 > 5x EMA: update skipped",
                        },
                    },
                )
            time.sleep(interval)
        post("/api/ingest/complete", {"runId": run_id, "finalStep": steps})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
