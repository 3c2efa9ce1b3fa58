"""Profile alpha's training step on CUDA and print the top kernels.

    python scripts/profile_step.py --batch 128 [--steps 5]
    python scripts/profile_step.py --activation-graph '<JSON>' --activation-program  # a search candidate
    python scripts/profile_step.py --batch 128 --graphed --list  # the captured step, as training runs it

Used to decide which fusions pay; the figures it prints are kernel times, not end-to-end speed
(that is ``alpha bench``). With ``--list`` it also prints the last step's kernels in order and,
per CUDA stream, the time kernels ran on it, how much of that ran beside the other streams, and
the time within the step when no kernel ran at all. By default the step runs uncaptured, one
launch a kernel, so the host's launches set its pace and the streams seldom overlap; with
``--graphed`` the profiler traces replays of the trainer's captured step, whose kernels run back
to back and beside each other as in training.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from alpha.config import domain_for, resolve
from alpha.data.tokens import TokenData
from alpha.events import EventBus
from alpha.model.gpt import GPT
from alpha.model.linear import compile_options
from alpha.symbio.graph import from_json
from alpha.symbio.program import install_programs
from alpha.train.trainer import RunContext, Trainer


class _Tok:
    eot_id = 0


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def _intersection(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def stream_summary(kernels: list[tuple[int, float, float]]) -> list[str]:
    """Lines on (stream, start us, end us) kernels: the span, each stream's busy time and the
    part of it that overlapped another stream's kernels, and the time no kernel ran."""
    span_start = min(k[1] for k in kernels)
    span = max(k[2] for k in kernels) - span_start
    busy = {s: _union([(a, b) for t, a, b in kernels if t == s]) for s in sorted({k[0] for k in kernels})}
    anything = _union([(a, b) for _, a, b in kernels])
    idle = span - _length(anything)
    lines = [f"step span {span / 1000:.3f} ms; no kernel running for {idle / 1000:.3f} ms"]
    for stream, mine in busy.items():
        others = _union([iv for s, ivs in busy.items() if s != stream for iv in ivs])
        count = sum(1 for k in kernels if k[0] == stream)
        lines.append(
            f"stream {stream}: {count} kernels, busy {_length(mine) / 1000:.3f} ms, "
            f"{_intersection(mine, others) / 1000:.3f} ms of it beside another stream"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--sdpa", default="default", choices=["default", "cudnn", "flash", "efficient"])
    p.add_argument("--compile-mode", default="default")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--list", action="store_true", help="also list every kernel of the last step in order")
    p.add_argument("--activation-graph", default=None, help="JSON activation graph (composed)")
    p.add_argument("--activation-program", action="store_true", help="the graph as a search candidate")
    p.add_argument("--graphed", action="store_true", help="profile replays of the captured step")
    args = p.parse_args()
    if args.activation_program and args.activation_graph is None:
        p.error("--activation-program needs --activation-graph")
    if not torch.cuda.is_available():
        print("profile_step: needs a CUDA GPU", file=sys.stderr)
        sys.exit(2)
    graph = None if args.activation_graph is None else json.loads(args.activation_graph)
    model_cfg, cfg = resolve(
        {
            "n_embd": 384,
            "n_head": 8,
            "n_layer": 8,
            "block_size": 512,
            "dropout": args.dropout,
            "ffn_activation": "composed" if graph else "gelu",
            "activation_graph": graph,
        },
        {"data": "x", "batch_size": args.batch, "iters": 10**9, "compile": True, "eval_iters": 1},
    )
    cfg.cuda_graphs = args.graphed
    model_cfg.vocab_size = 4000
    tokens = np.random.default_rng(0).integers(0, 4000, 2_000_000).astype(np.uint16)
    ctx = RunContext("prof", Path(tempfile.mkdtemp()), torch.device("cuda"), torch.bfloat16)
    trainer = Trainer(
        GPT(model_cfg),
        cfg,
        _Tok(),
        TokenData(tokens, tokens[:100_000], {}),
        EventBus(),
        ctx,
        domain_for("text"),
    )
    if args.activation_program:
        install_programs(trainer, from_json(graph))
    if args.compile_mode != "default":
        options = compile_options(trainer.model)
        trainer.forward_model = torch.compile(trainer.model, mode=args.compile_mode, options=options)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }
    if args.sdpa != "default":
        sdpa_kernel(backends[args.sdpa]).__enter__()
    for i in range(8):
        trainer._train_step((0, i), i)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(args.steps):
            trainer._train_step((0, 100 + i), 100 + i)
        torch.cuda.synchronize()
    trainer._pending.clear()
    if args.graphed and trainer.graphed is None:
        raise SystemExit("profile_step: the trainer did not capture its step (--graphed)")
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    if not events:
        raise SystemExit("profile_step: the profiler recorded no kernels (graph replays untraced here?)")
    total = sum(e.self_device_time_total for e in events)
    print(f"total kernel time per step: {total / args.steps / 1000:.2f} ms")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[: args.top]:
        share = 100 * e.self_device_time_total / total
        print(
            f"{e.self_device_time_total / args.steps / 1000:8.3f} ms {share:5.1f}%  "
            f"x{e.count // args.steps:<4} {e.key[:110]}"
        )
    if args.list:
        kernels = sorted(
            (e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start
        )
        last = kernels[len(kernels) - len(kernels) // args.steps :]
        print(f"\nkernels of the last step, in order ({len(last)}):")
        for e in last:
            print(f"{e.time_range.elapsed_us():8.1f} us  s{e.device_resource_id}  {e.name[:150]}")
        print()
        spans = [(e.device_resource_id, float(e.time_range.start), float(e.time_range.end)) for e in last]
        for line in stream_summary(spans):
            print(line)


if __name__ == "__main__":
    main()
