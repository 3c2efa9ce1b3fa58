"""Symbio search vs fixed GELU and SwiGLU baselines at equal total tokens.

Four runs of ``alpha train`` on the same data, model shape, schedule and token budget:

1. ``gelu``    fixed GELU MLP (4C hidden)
2. ``swiglu``  fixed SwiGLU MLP (8C/3 hidden, rounded up to 64)
3. ``symbio``  the composed activation search (4C hidden), winner trains the rest of the budget
4. ``winner``  the search's winner graph trained from scratch for the whole budget
   (``--activation-graph``): the activation's quality without the search's cost

then a table of final/best validation loss, throughput and wall time (``summary.md``,
``summary.json`` in the output directory). Usage::

    python scripts/symbio_experiment.py --data data/historic.txt --preset cpu --out runs/symbio-exp
    python scripts/symbio_experiment.py --data data/historic.txt --preset gpu --out runs/symbio-exp-gpu

Arguments after ``--`` are passed to every run (e.g. ``-- --iters 2000``). ``--runs`` picks some
of the four (e.g. to split them over several sessions on a machine with a time limit per command);
rows already in the output directory's ``summary.json`` are kept, and ``winner`` reads the
``symbio`` run's summary. ``--symbio-config`` replaces the preset's search configuration.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    # 2 shared CPU cores, a few minutes per run.
    "cpu": {
        "train": "--domain chat --dim 64 --heads 4 --layers 2 --block 64 --batch 8 --iters 1200 --lr 2e-3 "
        "--warmup 100 --dropout 0 --eval-interval 100 --sample-interval 0 --backend cpu --log-every 100",
        "symbio": {
            "searchMode": "composed-activation-search",
            "populationSize": 6,
            "generations": 3,
            "stepsPerCandidate": 40,
            "mutationRate": 0.7,
            "populationAdaptation": False,
            "metricsInterval": 40,
        },
    },
    # The seed's model and schedule (README of the seed run) on one GPU, with the seed's search.
    "gpu": {
        "train": "--domain chat --dim 384 --heads 8 --layers 8 --block 512 --batch 20 --iters 50000 "
        "--lr 5e-5 --warmup 1000 --beta2 0.95 --grad-clip 1.0 --eval-interval 500 --sample-interval 0 "
        "--backend cuda --log-every 100",
        "symbio": str(REPO / "configs" / "symbio-composed-novels.json"),
    },
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train(name: str, out: Path, args: list[str]) -> dict:
    run_dir = out / name
    cmd = [sys.executable, "-m", "alpha", "train", *args, "--run-dir", str(run_dir)]
    print("$ " + " ".join(cmd), flush=True)
    began = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - began
    (out / f"{name}.stdout.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed ({result.returncode}); see {out / f'{name}.stdout.log'}")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    events = read_jsonl(run_dir / "events.jsonl")
    start = next(e for e in events if e["kind"] == "training_started")["payload"]
    end = events[-1]["payload"]
    vals = [m["valLoss"] for m in metrics if m.get("valLoss") is not None]
    return {
        "run": name,
        "params": start["totalParams"],
        "steps": len(metrics),
        "tokens": metrics[-1]["tokens"],
        "finalValLoss": vals[-1],
        "bestValLoss": min(vals),
        "trainTokensPerSec": end["tokensPerSec"],
        "wallSeconds": round(wall, 1),
        "symbioWinner": end.get("symbioWinner"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu")
    parser.add_argument("--out", default="runs/symbio-exp")
    parser.add_argument("--runs", default="gelu,swiglu,symbio,winner", help="comma-separated subset")
    parser.add_argument("--symbio-config", help="search configuration (default: the preset's)")
    parser.add_argument("extra", nargs="*", help="flags passed to every run (after --)")
    opts = parser.parse_args()
    out = Path(opts.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    preset = PRESETS[opts.preset]
    common = ["--data", str(Path(opts.data).resolve()), *preset["train"].split(), *opts.extra]
    symbio_config = opts.symbio_config or preset["symbio"]
    if isinstance(symbio_config, dict):
        path = out / "symbio-config.json"
        path.write_text(json.dumps(symbio_config, indent=2) + "\n")
        symbio_config = str(path)

    wanted = opts.runs.split(",")
    saved = out / "summary.json"
    rows = {r["run"]: r for r in json.loads(saved.read_text())} if saved.exists() else {}
    for name in ("gelu", "swiglu"):
        if name in wanted:
            rows[name] = train(name, out, [*common, "--activation", name])
    if "symbio" in wanted:
        rows["symbio"] = train("symbio", out, [*common, "--symbio", "--symbio-config", symbio_config])
    summary_path = out / "symbio" / "symbio-search-summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if "winner" in wanted:
        if summary is None:
            raise SystemExit("winner needs the symbio run's summary: run symbio first")
        winner_graph = json.dumps(summary["winner"]["activationGraph"])
        rows["winner"] = train("winner", out, [*common, "--activation-graph", winner_graph])
    lines = []
    if summary is not None and "symbio" in rows:
        symbio = rows["symbio"]
        symbio["searchSteps"] = summary["searchSteps"]
        symbio["searchGenerations"] = summary["generations"] + 1
        symbio["searchTrainSeconds"] = summary["timing"]["trainSeconds"]
        symbio["searchSeconds"] = summary["timing"]["searchSeconds"]
        overhead = symbio["searchSeconds"] - symbio["searchTrainSeconds"]
        lines.append(
            f"winner: `{symbio['symbioWinner']}` after {symbio['searchGenerations']} generations, "
            f"{summary['totalCandidates']} candidates, {symbio['searchSteps']:,} search steps "
            f"({symbio['searchSeconds']:.1f}s, of which {overhead:.1f}s selection overhead: "
            "evals and snapshots)"
        )
    lines += [
        "",
        "| run | params | steps | tokens | final val | best val | train tok/s | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['run']} | {r['params']:,} | {r['steps']:,} | {r['tokens']:,} | {r['finalValLoss']:.4f} "
            f"| {r['bestValLoss']:.4f} | {r['trainTokensPerSec']:,.0f} | {r['wallSeconds']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    saved.write_text(json.dumps(list(rows.values()), indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
