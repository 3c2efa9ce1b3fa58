"""Time the model's Triton kernels against Inductor's compiled code for the same maths (CUDA).

    python scripts/bench_model_kernels.py [--rows 10240 65536] [--cold]

GELU forward and backward on (rows, 1536) bf16 (the seed model's FFN at batch 20 and 128) and
the loss's forward on (rows, 4000) bf16 logits with row stride 4032, as the step has them; and
one AdamW step over the seed model's parameters (``alpha.train.adamw`` against PyTorch's fused
AdamW, without and with the linear weights' bf16 shadows: its 488 MB of state never fit in L2).
Each figure is the time of one call inside a CUDA graph of 20 calls, replayed 20 times. The floors are
the bytes each must move at 4.3 TB/s (an H200's measured copy rate). By default every call reads
the same inputs, which at batch 20 may partly stay in L2 between calls; ``--cold`` goes round
copies of them larger than L2 together, so that every call reads memory, as in a training step.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from alpha.model.gelu import reference_backward
from alpha.model.losses import reference_logsumexp_target

BANDWIDTH = 4.3e12
COLD_BYTES = 400e6  # input copies for --cold: several times an H200's 50 MB L2


def graph_time(
    fn: Callable[..., object], inputs: list[tuple[torch.Tensor, ...]], calls: int = 20, replays: int = 20
) -> float:
    """Microseconds per call of ``fn(*inputs[i])``, the calls going round ``inputs`` (one set:
    its data may stay in L2 from call to call; sets larger than L2 in all: every call reads HBM)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for args in inputs[:3]:
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    calls = max(calls, len(inputs))
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(*inputs[i % len(inputs)])
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (calls * replays)


def _loss_reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    lse, target_logit = reference_logsumexp_target(logits, targets)
    return (lse - target_logit).mean()


def _copies(make: Callable[[], tuple[torch.Tensor, ...]], cold: bool) -> list[tuple[torch.Tensor, ...]]:
    """One set of inputs, or (``cold``) as many as exceed ``COLD_BYTES`` together."""
    first = make()
    if not cold:
        return [first]
    size = sum(t.untyped_storage().nbytes() for t in first)
    return [first] + [make() for _ in range(max(1, int(COLD_BYTES // size)))]


def _report(
    rows: int, ours: dict[str, Callable[..., object]], compiled: dict[str, Callable[..., object]], cold: bool
) -> None:
    def gelu_inputs() -> tuple[torch.Tensor, ...]:
        x = torch.randn(rows, 1536, device="cuda", dtype=torch.bfloat16) * 2
        return x, torch.randn_like(x)

    sets = _copies(gelu_inputs, cold)
    n = sets[0][0].numel()
    fwd = (
        graph_time(ours["gelu"], [s[:1] for s in sets]),
        graph_time(compiled["gelu"], [s[:1] for s in sets]),
    )
    bwd = (
        graph_time(ours["slope"], [s[::-1] for s in sets]),
        graph_time(compiled["slope"], [s[::-1] for s in sets]),
    )
    print(f"GELU, {rows} x 1536 bf16, {len(sets)} input set(s):")
    _line("forward ", fwd, 4 * n)
    _line("backward", bwd, 6 * n)
    del sets

    def loss_inputs() -> tuple[torch.Tensor, ...]:
        logits = (torch.randn(rows, 4032, device="cuda", dtype=torch.bfloat16) * 3)[:, :4000]
        return logits, torch.randint(0, 4000, (rows,), device="cuda")

    sets = _copies(loss_inputs, cold)
    loss = (graph_time(ours["loss"], sets), graph_time(compiled["loss"], sets))
    print(f"loss, {rows} x 4000 bf16 logits, {len(sets)} input set(s):")
    _line("forward ", loss, rows * 4000 * 2)


def _report_adamw() -> None:
    from alpha.config import ModelConfig
    from alpha.model.gpt import GPT
    from alpha.model.linear import Linear
    from alpha.train.adamw import AdamW
    from alpha.train.optim import parameter_groups

    model = GPT(ModelConfig(n_embd=384, n_head=8, n_layer=8, block_size=512, vocab_size=4000)).cuda()
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    n = sum(p.numel() for p in params)
    lr = torch.tensor(3e-4, device="cuda")
    kwargs = {"lr": lr, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    theirs = torch.optim.AdamW(parameter_groups(model, 0.1), fused=True, capturable=True, **kwargs)
    ours = AdamW(parameter_groups(model, 0.1), **kwargs)
    for opt in (theirs, ours):
        opt.grad_scale = torch.tensor(1.0, device="cuda")  # type: ignore[attr-defined]
        opt.found_inf = torch.tensor(0.0, device="cuda")  # type: ignore[attr-defined]
    print(f"AdamW, {n / 1e6:.2f}M parameters (the seed model):")
    _line("step    ", (graph_time(ours.step, [()]), graph_time(theirs.step, [()])), 28 * n, "pytorch")
    linears = [m.weight for m in model.modules() if isinstance(m, Linear)]
    ours.shadows = {w: torch.empty_like(w, dtype=torch.bfloat16) for w in linears}
    shadow_bytes = 2 * sum(w.numel() for w in linears)
    _line("+shadows", (graph_time(ours.step, [()]), float("nan")), 28 * n + shadow_bytes, "pytorch")


def _line(label: str, times: tuple[float, float], nbytes: int, other: str = "inductor") -> None:
    floor = nbytes / BANDWIDTH * 1e6
    print(f"  {label} ours {times[0]:7.1f} us | {other} {times[1]:7.1f} us | floor {floor:7.1f} us")


def rows_arguments(doc: str, name: str) -> argparse.Namespace:
    """``--rows`` and ``--cold`` of a kernel benchmark, parsed; exit 2 with one line without CUDA."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10240, 65536])
    p.add_argument("--cold", action="store_true", help="every call reads fresh inputs (not from L2)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(f"{name}: needs a CUDA GPU", file=sys.stderr)
        raise SystemExit(2)
    return args


def main() -> None:
    args = rows_arguments(__doc__, "bench_model_kernels")
    from alpha.model.gelu_kernels import gelu_backward, gelu_forward
    from alpha.model.loss_kernels import logsumexp_target

    ours = {"gelu": gelu_forward, "slope": gelu_backward, "loss": logsumexp_target}

    compiled = {
        "gelu": torch.compile(partial(F.gelu, approximate="tanh")),
        "slope": torch.compile(reference_backward),
        "loss": torch.compile(_loss_reference),
    }
    for rows in args.rows:
        _report(rows, ours, compiled, args.cold)
    _report_adamw()


if __name__ == "__main__":
    main()
