"""Profile alpha's training step on CUDA (eager kernels, no graph) and print the top kernels.

    python scripts/profile_step.py --batch 128 [--steps 5]
    python scripts/profile_step.py --activation-graph '<JSON>' --activation-program  # a search candidate

Used to decide which fusions pay; the figures it prints are kernel times, not end-to-end speed
(that is ``alpha bench``).
"""

from __future__ import annotations

import argparse
import json
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
    args = p.parse_args()
    if args.activation_program and args.activation_graph is None:
        p.error("--activation-program needs --activation-graph")
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
    cfg.cuda_graphs = False
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
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
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
            print(f"{e.time_range.elapsed_us():8.1f} us  {e.name[:160]}")


if __name__ == "__main__":
    main()
