"""``alpha bench``: the speed of the real training step on random tokens, and of a plain loop.

It times ``Trainer``'s own step (the one ``alpha train`` runs: guards, fused clipping, skips) on
the seed model by default (dim 384, 8 heads, 8 layers, block 512, batch 20, vocab 4000), and with
``--baseline`` a plain PyTorch loop of the same model in the same process: forward (fp32 residual
stream, ``F.cross_entropy`` on fp32 logits, as plain autocast code has them), backward,
``clip_grad_norm_``, AdamW, with the same precision and compile settings (``--baseline-mode``
picks the baseline's compile mode). Prints ms/step, tokens/s, MFU and peak memory, and on an
NVIDIA GPU the SM clock, power and temperature it ran at while timed (``alpha.train.gpu_probe``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import Any

from alpha.train.gpu_probe import GpuProbe, describe

HELP = "measure training-step speed (tokens/s, MFU, memory) on random tokens"

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
TINY = {"dim": 128, "heads": 4, "layers": 4, "block": 128, "batch": 16, "vocab": 1024}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--tiny", action="store_true", help=f"a CPU-sized model: {TINY}")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--activation", default="gelu")
    p.add_argument("--activation-graph", default=None, help="JSON activation graph (implies composed)")
    p.add_argument(
        "--activation-program",
        action="store_true",
        help="run the --activation-graph as a symbio search runs its candidates: a program in a buffer",
    )
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument(
        "--fp32-residual",
        action="store_true",
        help="keep alpha's residual stream in fp32 under bf16 autocast",
    )
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (compilation)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay alpha's whole step as a CUDA graph (default: on when compiling on CUDA)",
    )
    p.add_argument(
        "--wgrad-stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="alpha's weight gradients on a side CUDA stream (default: on for CUDA with autocast)",
    )
    p.add_argument(
        "--wgrad-sms",
        type=int,
        default=None,
        help="SMs the side stream's weight-gradient GEMMs may use (default: by batch size; 0: all)",
    )
    p.add_argument("--baseline", action="store_true", help="also time a plain PyTorch loop")
    p.add_argument("--baseline-mode", default="default", help="torch.compile mode of the baseline (CUDA)")
    p.add_argument("--repeat", type=int, default=1, help="repeat each measurement, report the median")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _shape(args: argparse.Namespace) -> dict[str, int]:
    if args.tiny:
        return dict(TINY)
    return {k: getattr(args, k) for k in ("dim", "heads", "layers", "block", "batch", "vocab")}


def checked_configs(args: argparse.Namespace) -> tuple[Any, Any, dict[str, int]]:
    """The bench's model and train configs and its shape, every flag checked (``ConfigError``)
    before torch is imported."""
    from alpha.config import resolve, validate
    from alpha.errors import ConfigError

    if args.steps < 1 or args.warmup_steps < 0 or args.repeat < 1:
        raise ConfigError("--steps and --repeat must be at least 1, --warmup-steps at least 0")
    if args.activation_program and args.activation_graph is None:
        raise ConfigError("--activation-program needs --activation-graph")
    shape = _shape(args)
    if shape["vocab"] < 2:
        raise ConfigError("--vocab must be at least 2")
    backend = {"auto": "auto", "cpu": "cpu", "cuda": "cuda"}.get(args.device, args.device)
    model_cfg, train_cfg = resolve(
        {
            "n_embd": shape["dim"],
            "n_head": shape["heads"],
            "n_layer": shape["layers"],
            "block_size": shape["block"],
            "ffn_activation": "composed" if args.activation_graph else args.activation,
            "activation_graph": _graph(args.activation_graph),
            "dropout": args.dropout,
            "fp32_residual": args.fp32_residual,
        },
        {
            "data": "<random>",
            "batch_size": shape["batch"],
            "iters": 10**9,
            "backend": backend,
            "dtype": args.dtype,
            "compile": args.compile,
            "wgrad_stream": args.wgrad_stream,
            "wgrad_sms": args.wgrad_sms,
            "lr": 3e-4,
            "grad_clip": 1.0,
            "vocab_size": 4000,
            "eval_iters": 1,
        },
    )
    validate(model_cfg, train_cfg)
    model_cfg.vocab_size = shape["vocab"]
    return model_cfg, train_cfg, shape


def run(args: argparse.Namespace) -> int:
    model_cfg, train_cfg, shape = checked_configs(args)  # wrong flags fail here, before torch loads
    import numpy as np
    import torch

    from alpha.data.tokens import TokenData
    from alpha.events import EventBus
    from alpha.model.gpt import GPT, flops_per_token
    from alpha.train.launch import resolve_device, resolve_precision
    from alpha.train.trainer import RunContext, Trainer

    device = resolve_device(train_cfg, 0)
    if train_cfg.compile is None:
        train_cfg.compile = device.type == "cuda"
    train_cfg.cuda_graphs = (
        args.cuda_graphs if args.cuda_graphs is not None else (device.type == "cuda" and train_cfg.compile)
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    precision = resolve_precision(train_cfg, device)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, shape["vocab"], size=2_000_000, dtype=np.uint16)
    data = TokenData(train=tokens, val=tokens[:100_000], meta={})

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    probe = GpuProbe.for_device(device)

    def measure(step_fn: Any) -> dict[str, Any]:
        """One measurement: seconds a timed step, seconds of the untimed warm-up steps before
        (compilation and capture included) and, on an NVIDIA GPU, what it ran at while timed."""
        started = time.perf_counter()
        for i in range(args.warmup_steps):
            step_fn(i)
        sync()
        warmup_s = time.perf_counter() - started
        if probe is not None:  # started outside the timed loop; its query lands while steps run
            probe.start()
        t0 = time.perf_counter()
        for i in range(args.steps):
            step_fn(args.warmup_steps + i)
        sync()
        record: dict[str, Any] = {"seconds": (time.perf_counter() - t0) / args.steps, "warmup_s": warmup_s}
        if probe is not None:
            record["gpu"] = probe.finish()
        return record

    class _Tokenizer:  # bench never samples; the trainer only needs the attribute
        eot_id = 0

    results: dict[str, Any] = {
        "config": shape
        | {
            "device": str(device),
            "precision": str(precision),
            "compile": bool(train_cfg.compile),
            "cuda_graphs": bool(train_cfg.cuda_graphs),
        }
    }
    torch.manual_seed(0)
    model = GPT(model_cfg)
    n_params = model.num_params()
    flops = flops_per_token(model_cfg, n_params)
    tokens_per_step = shape["batch"] * shape["block"]
    peak = _peak_flops(device) if precision is not None else None
    from alpha.config import domain_for

    ctx = RunContext("bench", _tmp_dir(), device, precision)
    trainer = Trainer(model, train_cfg, _Tokenizer(), data, EventBus(), ctx, domain_for("text"))  # type: ignore[arg-type]
    if args.activation_program:
        _use_program(trainer, model_cfg.activation_graph)
    results["config"]["activation_program"] = bool(args.activation_program)
    results["config"]["wgrad_stream"] = trainer.wgrad_stream is not None
    results["config"]["wgrad_sms"] = trainer.wgrad_stream.sm_count if trainer.wgrad_stream else None

    def ours(i: int) -> None:
        trainer._train_step((0, i), i)
        trainer._pending.clear()

    results["alpha"] = _report(_median(measure, ours, args.repeat), tokens_per_step, flops, peak, device)
    if args.baseline:
        del trainer
        torch.manual_seed(0)
        results["baseline"] = _report(
            _median(
                measure,
                _plain_loop(
                    GPT(replace(model_cfg, fp32_residual=True)).to(device),
                    data,
                    shape,
                    device,
                    precision,
                    args,
                    train_cfg,
                ),
                args.repeat,
            ),
            tokens_per_step,
            flops,
            peak,
            device,
        )
        results["speedup"] = results["baseline"]["ms_per_step"] / results["alpha"]["ms_per_step"]
    results["params"] = n_params
    results["flops_per_token"] = flops
    if args.json:
        sys.stdout.write(json.dumps(results) + "\n")
    else:
        _print_table(results)
    return 0


def _graph(text: str | None) -> dict | None:
    if text is None:
        return None
    from alpha.commands.train import _activation_graph

    try:
        return _activation_graph(text)
    except argparse.ArgumentTypeError as exc:
        from alpha.errors import ConfigError

        raise ConfigError(f"--activation-graph: {exc}") from None


def _use_program(trainer: Any, graph_json: dict | None) -> None:
    from alpha.errors import ConfigError
    from alpha.symbio.graph import from_json
    from alpha.symbio.program import ProgramTooLarge, install_programs

    assert graph_json is not None  # checked_configs asked for --activation-graph
    try:
        install_programs(trainer, from_json(graph_json))
    except ProgramTooLarge as exc:
        raise ConfigError(f"--activation-program: {exc}") from None


def _plain_loop(
    model: Any, data: Any, shape: dict, device: Any, precision: Any, args: argparse.Namespace, train_cfg: Any
) -> Any:
    """The reference probe: autocast forward, ``F.cross_entropy`` on fp32 logits, backward,
    clip_grad_norm_, AdamW step; the model keeps an fp32 residual stream, as plain autocast does,
    PyTorch's own GELU, dropout and scaled_dot_product_attention."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from alpha.data.tokens import BatchSource
    from alpha.model.activations import Elementwise, plain_gelu
    from alpha.model.dropout import Dropout

    for block in model.layers:
        if isinstance(block.mlp.act, Elementwise) and block.mlp.act.name == "gelu":
            block.mlp.act = Elementwise("gelu", plain_gelu)
        block.attn.use_kernels = False
    for module in model.modules():
        if isinstance(module, Dropout):
            module.hashed = False

    batches = BatchSource(data.train, shape["block"], shape["batch"], 0, 0)
    opt = torch.optim.AdamW(
        model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=device.type == "cuda"
    )

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.reshape(-1))

    if train_cfg.compile:
        mode = None if args.baseline_mode == "default" else args.baseline_mode
        loss_of = torch.compile(loss_of, mode=mode)

    def step(i: int) -> None:
        x, y = batches.batch((0, i))
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        ctx = (
            torch.autocast(device.type, dtype=precision)
            if precision is not None
            else contextlib.nullcontext()
        )
        with ctx:
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _median(measure: Any, fn: Any, repeat: int) -> dict[str, Any]:
    """The median of ``repeat`` measurements of ``fn`` (its GPU reading with it), the first one's
    warm-up (the one that compiled), and the peak memory."""
    import torch

    records = [measure(fn) for _ in range(max(1, repeat))]
    median = sorted(records, key=lambda r: r["seconds"])[len(records) // 2]
    peak_mem = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _rss_bytes()
    return median | {"warmup_s": records[0]["warmup_s"], "peak_mem": peak_mem}


def _rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_flops(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def _report(m: dict[str, Any], tokens_per_step: int, flops: float, peak: float | None, device: Any) -> dict:
    tps = tokens_per_step / m["seconds"]
    report = {
        "ms_per_step": m["seconds"] * 1000,
        "tokens_per_sec": tps,
        "mfu": tps * flops / peak if peak else None,
        "peak_mem_gb": m["peak_mem"] / 1e9,
        "warmup_s": m["warmup_s"],
    }
    if "gpu" in m:
        report["gpu"] = m["gpu"]
    return report


def _tmp_dir() -> Any:
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="alpha-bench-"))


def _print_table(results: dict) -> None:
    cfg = results["config"]
    sys.stdout.write(
        f"model: dim {cfg['dim']} heads {cfg['heads']} layers {cfg['layers']} block {cfg['block']} "
        f"vocab {cfg['vocab']} | batch {cfg['batch']} | {results['params']:,} params | "
        f"{results['flops_per_token'] / 1e6:.1f} MFLOP/token\n"
        f"device: {cfg['device']} | precision: {cfg['precision']} | compile: {cfg['compile']}\n"
    )
    for name in ("alpha", "baseline"):
        if name in results:
            r = results[name]
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            sys.stdout.write(
                f"{name:>9}: {r['ms_per_step']:8.2f} ms/step | {r['tokens_per_sec']:>12,.0f} tok/s "
                f"| MFU {mfu} | peak mem {r['peak_mem_gb']:.2f} GB | warm-up {r['warmup_s']:.1f} s\n"
            )
            if "gpu" in r:
                sys.stdout.write(f"{'':>9}  GPU while timed: {describe(r['gpu'])}\n")
    if "speedup" in results:
        sys.stdout.write(f"alpha / baseline speed: {results['speedup']:.3f}x\n")
