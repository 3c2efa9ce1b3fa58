"""The training loop: steps, on-device guards, eval, samples, checkpoints, and search primitives.

One optimizer step is: K micro-batches forward/backward under autocast, the global gradient norm,
then a single fused AdamW call that both clips (``grad_scale``) and skips (``found_inf``) on the
device. A step is skipped, never applied, when the loss or the gradient norm is not finite, or when
``--spike-threshold X`` is set and the norm exceeds X times the EMA of accepted norms. Nothing in a
step reads a value back to the host: per-step losses and norms stay on the device and are read in
one transfer at each log boundary, where Step events are emitted for every step of the interval.

Samples are generated inline on a CPU (the loop waits). On CUDA the sampler process generates them
from a host copy of the weights while the loop goes on (alpha.train.sampler_process); their Samples
event, labelled with the step they were taken at, is emitted at a later log boundary.

The trainer knows nothing about files other than checkpoints: it emits events to an EventBus.
It exposes the primitives that the symbiogenesis search drives: ``snapshot``/``restore``,
``train_steps`` (with a data key that makes batches identical across calls), ``evaluate`` and
``set_activation``; and ``components``, whose state rides along in checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from alpha.config import Domain, ModelConfig, TrainConfig, config_hash
from alpha.data.tokenizer import BpeTokenizer, CharTokenizer
from alpha.data.tokens import BatchSource, TokenData
from alpha.events import Alert, CheckpointSaved, Eval, Event, EventBus, RecordingBus, RunEnd, Samples, Step
from alpha.model.column_sums import DeferredSums
from alpha.model.gpt import GPT
from alpha.model.kernel_support import kernels_available
from alpha.model.linear import WeightGradStream, compile_options
from alpha.train.background import BackgroundWorker
from alpha.train.checkpoint import (
    FORMAT,
    Checkpoint,
    Retention,
    checkpoint_path,
    load_optimizer_tensors,
    optimizer_tensors,
    write_atomic,
)
from alpha.train.cuda_graphs import GraphedStep, PinnedStaging
from alpha.train.host_buffers import HostBuffers
from alpha.train.host_buffers import specs as host_specs
from alpha.train.optim import build_optimizer, ensure_state, lr_at
from alpha.train.sampler_child import SampleRequest
from alpha.train.sampler_process import SamplerProcess, sampler_mode
from alpha.train.sampling import sample_prompts
from alpha.train.trend import summarize_trend

SPIKE_WARMUP_STEPS = 10  # accepted steps before the spike guard trusts its EMA
EMA_DECAY = 0.9
SKIP_EVENTS_IN_FULL = 20  # then every 100th skip of a kind becomes an event
LOSS_SCALE_GROWTH_INTERVAL = 200  # fp16 only
EVAL_CHUNK_TOKENS = 32768  # tokens per eval forward pass (logits of 4000 words: 0.5 GB in fp32)


class Stateful(Protocol):
    """A component (e.g. the symbio search) whose JSON-able state is saved in checkpoints."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class RunContext:
    run_id: str
    run_dir: Path
    device: torch.device
    autocast_dtype: torch.dtype | None
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Snapshot:
    step: int
    tokens_seen: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, dict[str, torch.Tensor]]
    guards: dict[str, torch.Tensor]


def _snapshot_items(snap: Snapshot) -> list[tuple[str, torch.Tensor]]:
    """A snapshot's tensors by name, in a fixed order: model state, optimizer state by parameter,
    guards."""
    items = [(f"model.{k}", v) for k, v in snap.model.items()]
    for name, state in snap.optimizer.items():
        items += [(f"optimizer.{name}.{k}", state[k]) for k in sorted(state)]
    return items + [(f"guard.{k}", v) for k, v in snap.guards.items()]


def _snapshot_tensors(snap: Snapshot) -> list[torch.Tensor]:
    return [tensor for _, tensor in _snapshot_items(snap)]


def _same_layout(a: Snapshot, b: Snapshot) -> bool:
    """Whether two snapshots hold the same tensors by name, shape, dtype and device (a copy between
    them is one multi-tensor copy)."""

    def layout(snap: Snapshot) -> list[tuple[str, torch.Size, torch.dtype, torch.device]]:
        return [(name, t.shape, t.dtype, t.device) for name, t in _snapshot_items(snap)]

    return layout(a) == layout(b)


@dataclass
class StepsSummary:
    steps: int
    tokens_per_sec: float


@dataclass
class _StagedValues:
    host: torch.Tensor  # (pending steps, values) in pinned memory, complete once ``done`` is
    done: torch.cuda.Event


def _window_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One evaluation forward; a function of its own so that its compiled form (see
    ``Trainer.compile_evaluation``) has a code object, cache and shape history of its own."""
    return model(x, y)


@dataclass
class _SampleRound:
    step: int
    trend: dict[str, Any] | None
    prompts: list[str]


@dataclass
class _PendingStep:
    step: int
    values: torch.Tensor  # [loss, grad_norm, clip_coef, applied, spike, lr]
    tokens: int  # tokens trained on by the end of this step
    extra: dict[str, Any] = field(default_factory=dict)


def eval_chunks(
    source: BatchSource, windows: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation windows 0 .. windows-1, stacked and cut into a few chunks of (nearly)
    one shape: an eager forward of many rows is kernel-bound where one per window is launch-bound,
    and one shape needs one set of kernel plans."""
    xs, ys = (
        torch.cat(t).to(device) for t in zip(*(source.batch((i,)) for i in range(windows)), strict=True)
    )
    chunks = math.ceil(len(xs) / max(1, EVAL_CHUNK_TOKENS // xs.shape[1]))
    per_chunk = math.ceil(len(xs) / chunks)
    return [(xs[i : i + per_chunk], ys[i : i + per_chunk]) for i in range(0, len(xs), per_chunk)]


# The side stream's weight-gradient GEMMs are held to a share of the SMs when a micro-batch is short
# for the GPU. Measured on an H200 (132 SMs, docs/PERFORMANCE.md): at batch 20 x 512 tokens, 42 SMs
# took 3.9% off the step; from 40 x 512 up every limit slowed it. Both figures are kept relative to
# the SM count, so a smaller GPU (an L4's 58 SMs) counts 10,240 tokens as long.
SHORT_MICRO_BATCH_TOKENS_PER_SM = 16384 / 132
SIDE_STREAM_SM_SHARE = 42 / 132


def wgrad_sm_count(cfg: TrainConfig, block_size: int, sm_total: int) -> int | None:
    """SMs the side stream's GEMMs may use (None: all): ``--wgrad-sms``, else by micro-batch size."""
    if cfg.wgrad_sms is not None:
        return cfg.wgrad_sms or None
    if cfg.batch_size * block_size <= SHORT_MICRO_BATCH_TOKENS_PER_SM * sm_total:
        return round(SIDE_STREAM_SM_SHARE * sm_total)
    return None


def build_wgrad_stream(cfg: TrainConfig, ctx: RunContext, block_size: int) -> WeightGradStream | None:
    """The side stream for weight gradients (``--wgrad-stream``; by default on for CUDA under
    autocast, where it pays), its GEMMs held to ``wgrad_sm_count`` SMs on a GPU."""
    on_cuda = ctx.device.type == "cuda"
    wanted = cfg.wgrad_stream if cfg.wgrad_stream is not None else on_cuda and ctx.autocast_dtype is not None
    if not wanted:
        return None
    sms = None
    if on_cuda:
        sm_total = torch.cuda.get_device_properties(ctx.device).multi_processor_count
        sms = wgrad_sm_count(cfg, block_size, sm_total)
    return WeightGradStream(ctx.device, sm_count=sms, shadow_dtype=ctx.autocast_dtype)


class Trainer:
    def __init__(
        self,
        model: GPT,
        cfg: TrainConfig,
        tokenizer: BpeTokenizer | CharTokenizer,
        data: TokenData,
        bus: EventBus,
        ctx: RunContext,
        domain: Domain,
    ) -> None:
        self.cfg = cfg
        self.model_cfg: ModelConfig = model.config
        self.tokenizer = tokenizer
        self.bus = bus
        self.ctx = ctx
        self.domain = domain
        self.device = ctx.device
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.param_names = {id(p): n for n, p in self.model.named_parameters()}
        self.wgrad_stream = build_wgrad_stream(cfg, ctx, self.model_cfg.block_size)
        if self.wgrad_stream is not None:
            self.wgrad_stream.attach(self.model)
        self._bind_flat_gradients()
        self._hand_shadows_to_optimizer()
        # the compiled LayerNorm backwards' weight and bias sums, computed once a backward
        # (alpha.model.column_sums)
        deferrable = cfg.compile and kernels_available(self.device)
        self.deferred_sums = DeferredSums(self.device) if deferrable else None
        self.forward_model: nn.Module = (
            torch.compile(self.model, options=compile_options(self.model)) if cfg.compile else self.model
        )
        self.staging = PinnedStaging(self.device)
        self.graphed: GraphedStep | None = None
        block = self.model_cfg.block_size
        val_batches = BatchSource(
            data.val, block, cfg.batch_size * ctx.world_size, cfg.seed, stream=1, name="validation split"
        )
        # every rank draws the same global batch and trains on its own slice of it, so N processes
        # with --batch B see exactly the windows one process with --batch N*B would
        self.train_batches = BatchSource(
            data.train, block, cfg.batch_size * ctx.world_size, cfg.seed, stream=0
        )
        self._eval_chunks = eval_chunks(val_batches, cfg.eval_iters, self.device)
        self.step = 0
        self.tokens_seen = 0  # tokens trained on so far, by all ranks together
        # True while this rank trains alone (a candidate-parallel search under several processes):
        # no all-reduce, its own slice of the batch, collectives only outside ``local_steps``.
        self.local = False
        self.components: dict[str, Stateful] = {}
        # Called with each step record (host values) just before it is emitted; may add fields.
        self.step_hooks: list[Callable[[dict[str, Any]], None]] = []
        self.driver: Callable[[Trainer], None] | None = None
        self.stop_signal: int | None = None
        self.eval_history: list[tuple[int, float, float]] = []
        self.last_val_loss: float | None = None
        self.best_val_loss: float | None = None
        self.last_checkpoint: Path | None = None
        self.retention = Retention(ctx.run_dir, cfg.keep_checkpoints)
        self._pending: list[_PendingStep] = []
        self._staged: _StagedValues | None = None  # the pending values on their way to host memory
        self._window_loss: Callable[..., torch.Tensor] = _window_loss  # compile_evaluation() swaps it
        self._mark = time.perf_counter()
        self._warm: tuple[float, int] | None = None  # (time, tokens_seen) after the first interval
        self._stop_agreed = False
        self._loop_end: float | None = None
        self.writer = BackgroundWorker("alpha-checkpoints")  # checkpoint files, off the step path
        self.host_buffers = HostBuffers("pinned" if ctx.device.type == "cuda" else "pageable")
        self._checkpoint_buffers_reserved = False
        # None: samples are generated inline; otherwise in a child process (alpha.train.sampler_process)
        self.sampler = SamplerProcess() if sampler_mode(ctx.device) == "process" else None
        self._sample_round: _SampleRound | None = None
        self._step_seconds = 0.0
        self._tokens_timed = 0
        self._last_loss: float | None = None
        self.host_counters = {"clipped": 0, "skipped_spike": 0, "skipped_nonfinite": 0}
        self._init_guards()
        if ctx.device.type == "cuda" and cfg.cuda_graphs:
            self.graphed = GraphedStep(self)

    @property
    def tokens_per_step(self) -> int:
        world = 1 if self.local else self.ctx.world_size
        return self.cfg.batch_size * self.cfg.grad_accum_steps * self.model_cfg.block_size * world

    # ------------------------------------------------------------------ set-up
    def _bind_flat_gradients(self) -> None:
        """Every gradient ends each step in one flat buffer whose last slot holds the step's loss:
        with several processes, so that gradients and loss are averaged over ranks by a single
        all-reduce (which, unlike DDP's autograd hooks, can be captured in a CUDA graph with the
        rest of the step); and wherever AdamW's kernel runs, which wants gradients that stay put
        and whose norm is then one reduction. Otherwise (one process on the CPU) autograd's own
        gradients are the gradients.

        The weight-gradient stream writes its gradients into their views directly. The others
        ("loose") are autograd's own, assigned to ``p.grad`` without an accumulate pass, and
        gathered into their views by one multi-tensor copy after the backward (``_gather``).
        """
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.reduce_buffer: torch.Tensor | None = None
        self._loose: list[tuple[nn.Parameter, torch.Tensor]] = []  # (param, its gradient's view)
        if self.ctx.world_size == 1 and not kernels_available(self.device):
            return
        streamed = set()
        if self.wgrad_stream is not None:
            streamed = {id(w) for w in self.wgrad_stream.weights.values()}
        total = sum(p.numel() for p in self.params)
        self.reduce_buffer = torch.zeros(total + 1, device=self.device, dtype=torch.float32)
        offset = 0
        for p in self.params:
            view = self.reduce_buffer[offset : offset + p.numel()].view_as(p)
            p.grad = view
            if id(p) not in streamed:
                self._loose.append((p, view))
            offset += p.numel()

    def _gather(self) -> None:
        """Copy the loose gradients into their views (one multi-tensor copy; a parameter that got
        no gradient this step gets zeros) and point ``p.grad`` back at the views."""
        got = [(p, view) for p, view in self._loose if p.grad is not None and p.grad is not view]
        if got:
            torch._foreach_copy_([view for _, view in got], [p.grad for p, _ in got])
        for p, view in self._loose:
            if p.grad is None:
                view.zero_()
            p.grad = view

    def _hand_shadows_to_optimizer(self) -> None:
        """Where AdamW's kernel runs, it stores the linear weights' 16-bit shadows as it updates
        the weights, so the side stream does not copy them at each step; whatever else changes
        the weights calls ``weights_changed``."""
        stream = self.wgrad_stream
        if stream is None or stream.shadow_dtype is None or not kernels_available(self.device):
            return
        self.optimizer.shadows = {
            m.weight: m.weight_shadow for m in stream.linears.values() if m.weight_shadow is not None
        }
        stream.refresh_each_step = False
        self.weights_changed()

    def weights_changed(self) -> None:
        """The weights were changed outside an optimizer step (restored, loaded, fused): copies
        kept of them (the linear layers' 16-bit shadows) are brought up to date."""
        if self.wgrad_stream is not None and not self.wgrad_stream.refresh_each_step:
            self.wgrad_stream.refresh_shadows()

    def _init_guards(self) -> None:
        f32 = {"device": self.device, "dtype": torch.float32}
        fp16 = self.ctx.autocast_dtype == torch.float16
        self.guards = {
            "grad_norm_ema": torch.zeros((), **f32),
            "accepted": torch.zeros((), **f32),
            "loss_scale": torch.full((), 2.0**15 if fp16 else 1.0, **f32),
            "good_steps": torch.zeros((), **f32),
        }

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.ctx.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.ctx.autocast_dtype)

    # ------------------------------------------------------------------ one step
    def _windows(self, batch_key: tuple[int, ...]) -> np.ndarray:
        """(K, B, T + 1) token windows for one optimizer step on this rank (alone: the first
        slice, the windows a one-process run with the same --batch trains on)."""
        b, rank = self.cfg.batch_size, 0 if self.local else self.ctx.rank
        rows = slice(rank * b, (rank + 1) * b)
        return np.stack(
            [self.train_batches.windows((*batch_key, m))[rows] for m in range(self.cfg.grad_accum_steps)]
        )

    def _train_step(self, batch_key: tuple[int, ...], schedule_step: int) -> torch.Tensor:
        lr = lr_at(schedule_step, self.cfg)
        windows = self._windows(batch_key)
        if self.graphed is not None:
            return self.graphed.run(windows, lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        tokens = self.staging.to_device(windows)
        return self._step_body(tokens, torch.full((), lr, device=self.device))

    def _step_body(self, tokens: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """One optimizer step on device-resident tokens (K, B, T + 1); no host synchronisation."""
        cfg, g, k = self.cfg, self.guards, tokens.shape[0]
        buffer = self.reduce_buffer
        for p in self.params if buffer is None else (p for p, _ in self._loose):
            p.grad = None
        if self.wgrad_stream is not None:
            self.wgrad_stream.begin_step()
        loss_sum = torch.zeros((), device=self.device)
        sums = self.deferred_sums
        deferring = sums.open(self.model) if sums is not None else contextlib.nullcontext()
        with deferring:
            for micro in range(k):
                x, y = tokens[micro, :, :-1], tokens[micro, :, 1:]
                with self.autocast():
                    loss = self.forward_model(x, y)
                (loss * (g["loss_scale"] / k)).backward()
                loss_sum += loss.detach().float()
        if self.wgrad_stream is not None:  # weight gradients computed on the side stream
            self.wgrad_stream.join()
        if buffer is not None:  # gradients and loss averaged over ranks in one collective
            self._gather()
            buffer[-1:].copy_(loss_sum.reshape(1) / k)
            if not self.local and self.ctx.world_size > 1:
                torch.distributed.all_reduce(buffer)
                buffer.div_(self.ctx.world_size)
            loss_mean = buffer[-1]
            grad_norm = torch.linalg.vector_norm(buffer[:-1])
        else:
            loss_mean = loss_sum / k
            grad_norm = torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm([p.grad for p in self.params]))
            )
        grad_norm = grad_norm / g["loss_scale"]
        finite = torch.isfinite(grad_norm) & torch.isfinite(loss_mean)
        if cfg.spike_threshold > 0:
            trusted = g["accepted"] >= SPIKE_WARMUP_STEPS
            spike = finite & trusted & (grad_norm > cfg.spike_threshold * g["grad_norm_ema"])
        else:
            spike = torch.zeros((), dtype=torch.bool, device=self.device)
        applied = finite & ~spike
        if cfg.grad_clip > 0:
            clip_coef = torch.clamp(cfg.grad_clip / (grad_norm + 1e-6), max=1.0)
            clip_coef = torch.where(torch.isfinite(clip_coef), clip_coef, torch.ones_like(clip_coef))
        else:
            clip_coef = torch.ones((), device=self.device)
        # The fused kernel divides every gradient by grad_scale (undoing the loss scale and applying
        # the clip) and leaves parameters and moments untouched when found_inf is 1.
        self.optimizer.grad_scale = g["loss_scale"] / clip_coef  # type: ignore[attr-defined]
        self.optimizer.found_inf = (~applied).float()  # type: ignore[attr-defined]
        self.optimizer.step()
        self._update_guards(grad_norm, applied, finite)
        return torch.stack([loss_mean, grad_norm, clip_coef, applied.float(), spike.float(), lr.float()])

    def _update_guards(self, grad_norm: torch.Tensor, applied: torch.Tensor, finite: torch.Tensor) -> None:
        g = self.guards
        ema = torch.where(
            g["accepted"] > 0, EMA_DECAY * g["grad_norm_ema"] + (1 - EMA_DECAY) * grad_norm, grad_norm
        )
        g["grad_norm_ema"].copy_(torch.where(applied, ema, g["grad_norm_ema"]))
        g["accepted"].add_(applied.float())
        if self.ctx.autocast_dtype == torch.float16:  # dynamic loss scaling, decided on device
            grown = torch.where(g["good_steps"] + 1 >= LOSS_SCALE_GROWTH_INTERVAL, 2.0, 1.0)
            g["loss_scale"].copy_(
                torch.where(finite, g["loss_scale"] * grown, torch.clamp(g["loss_scale"] / 2, min=1.0))
            )
            g["good_steps"].copy_(
                torch.where(finite & (grown == 1.0), g["good_steps"] + 1, torch.zeros_like(g["good_steps"]))
            )

    # ------------------------------------------------------------------ the loop
    def fit(self) -> RunEnd:
        """Train until ``iters`` (or a stop request); returns the RunEnd event it emitted."""
        start = time.perf_counter()
        self._mark = time.perf_counter()
        status, reason = "completed", ""
        if self.sampler is not None and self.cfg.sample_interval > 0 and self.ctx.is_main:
            self._start_sampler(self.sampler)  # now: its start-up (seconds) overlaps compilation
        if self.device.type == "cuda":
            self.evaluate()  # warm-up: kernel plans for the eval shapes, not at the first real eval
        if self.driver is not None:
            self.driver(self)
        if not self.stopping:
            self.train_steps(self.cfg.iters - self.step)
        if self.stop_signal is not None:
            status, reason = "interrupted", f"signal {self.stop_signal}"
        elif self.bus.stop_request is not None:
            status, reason = "unhealthy", self.bus.stop_request.reason
        if self.stopping and (self.last_checkpoint is None or self._checkpoint_step() != self.step):
            self.save_checkpoint()
        self._loop_end = time.perf_counter()  # what follows waits for the last sample round and write
        return self._finish(status, reason, time.perf_counter() - start)

    @property
    def stopping(self) -> bool:
        if self.ctx.world_size > 1 and not self.local:
            return self._stop_agreed
        return self._stop_wanted

    @property
    def _stop_wanted(self) -> bool:
        return self.stop_signal is not None or self.bus.stop_request is not None

    def _agree_on_stop(self) -> None:
        """Ranks stop together: only rank 0 has the watchdog, and a signal may reach one rank."""
        flag = torch.tensor([1.0 if self._stop_wanted else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self._stop_agreed = bool(flag.item())

    def train_steps(
        self,
        n: int,
        *,
        data_key: int | None = None,
        schedule_start: int | None = None,
        periodic: bool = True,
        step_fields: Callable[[int], dict[str, Any]] | None = None,
        after_step: Callable[[], None] | None = None,
        defer_flush: bool = False,
        enqueue_after: Callable[[], None] | None = None,
    ) -> StepsSummary:
        """Run up to ``n`` optimizer steps from the current state; each counts toward ``iters``.

        ``data_key``: batches come from a stream keyed by (data_key, i), so every call with the same
        key trains on identical data. ``schedule_start``: the lr schedule runs from this step instead
        of the global one. ``periodic``: run eval/samples/checkpoints when their interval is due.
        ``step_fields``: extra metric fields for each step record (given the global step).
        ``after_step``: called after each optimizer update (on-device work only, e.g. weight fusion).
        ``defer_flush``: keep the last steps' records pending until ``flush``, e.g. to attach a
        validation loss measured later; their values are copied to host memory right behind the
        last step, and the call returns once the steps are done (so the throughput is right).
        ``enqueue_after`` (with ``defer_flush``, when all ``n`` steps ran): called once the last step
        is queued, before waiting for it, to queue device work behind the steps (e.g.
        ``evaluate_on_device``) that then runs while the caller emits the records.
        """
        t0, done = time.perf_counter(), 0
        for i in range(n):
            if self.step >= self.cfg.iters or self.stopping:
                break
            key = (0, self.step) if data_key is None else (1, data_key, i)
            sched = self.step if schedule_start is None else schedule_start + i
            values = self._train_step(key, sched)
            if after_step is not None:
                after_step()
                self.weights_changed()
            self.step += 1
            self.tokens_seen += self.tokens_per_step
            done += 1
            if not self._checkpoint_buffers_reserved:
                self._reserve_checkpoint_buffers()
            extra = step_fields(self.step) if step_fields else {}
            self._pending.append(_PendingStep(self.step, values, self.tokens_seen, extra))
            if not (defer_flush and i == n - 1):
                self._at_boundary(periodic)
        if defer_flush:
            self._stage_pending()
            if enqueue_after is not None and done == n:
                enqueue_after()
            self._wait_staged()
        else:
            self._flush()
        elapsed = max(time.perf_counter() - t0, 1e-9)
        return StepsSummary(done, done * self.tokens_per_step / elapsed)

    def _at_boundary(self, periodic: bool) -> None:
        cfg, s = self.cfg, self.step
        if self.ctx.world_size > 1 and not self.local and (s % cfg.log_every == 0 or s >= cfg.iters):
            self._agree_on_stop()
        last = s >= cfg.iters
        eval_due = periodic and (s % cfg.eval_interval == 0 or last)
        sample_due = periodic and cfg.sample_interval > 0 and (s % cfg.sample_interval == 0 or last)
        ckpt_due = periodic and (s % cfg.checkpoint_interval == 0 or last)  # type: ignore[operator]
        if eval_due or sample_due or ckpt_due or s % cfg.log_every == 0 or s == 1 or self.stopping:
            self._flush(evaluate=eval_due)
        if sample_due and self.ctx.is_main:
            self.sample()
        self.collect_samples()
        self.writer.poll()
        if ckpt_due:
            self.save_checkpoint()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _stage_pending(self) -> None:
        """Queue a copy of the pending steps' values to pinned host memory right behind the steps,
        so that ``_flush`` can read them without waiting for device work queued later."""
        if self.device.type != "cuda" or not self._pending:
            return
        values = self._pending_values()
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        host.copy_(values, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._staged = _StagedValues(host, done)

    def _pending_values(self) -> torch.Tensor:
        """The pending steps' values, one row each (on the device)."""
        return torch.stack([p.values for p in self._pending])

    def _wait_staged(self) -> None:
        """Wait for the steps whose values are staged (all device work where none are)."""
        if self._staged is not None:
            self._staged.done.synchronize()
        else:
            self._sync()

    def flush(self, val_loss: float | None = None) -> None:
        """Emit the pending step records; ``val_loss`` (measured by the caller on the fixed val
        windows) is attached to the last one and recorded as an eval, as a periodic eval would be."""
        self._flush(val_loss=val_loss)

    def _flush(self, evaluate: bool = False, val_loss: float | None = None) -> None:
        """Read back pending step values in one transfer, emit their Step events (+ Eval)."""
        if not self._pending and not evaluate and val_loss is None:
            return
        staged, self._staged = self._staged, None
        if staged is not None and len(staged.host) == len(self._pending):
            staged.done.synchronize()  # the steps only, not device work queued after them
            rows = staged.host.tolist()
        else:
            self._sync()
            rows = self._pending_values().tolist() if self._pending else []
        wall = time.perf_counter() - self._mark
        pending, self._pending = self._pending, []
        if evaluate:
            val_loss = self.evaluate()
        if val_loss is not None and pending:
            pending[-1].extra["valLoss"] = val_loss
        per_step = wall / max(1, len(rows))
        # the first interval carries compilation: not a step rate; a rank alone is timed by its caller
        if rows and self._warm is not None and not self.local:
            self._step_seconds += wall
            self._tokens_timed += len(rows) * self.tokens_per_step
        for p, (loss, gnorm, clip, applied, spike, lr) in zip(pending, rows, strict=True):
            self._emit_step(p, loss, gnorm, clip, applied > 0.5, spike > 0.5, lr, per_step)
        if val_loss is not None:
            self._record_eval(val_loss)
        self._mark = time.perf_counter()
        if self._warm is None:  # the first interval carries compilation and graph capture
            self._warm = (self._mark, self.tokens_seen)

    def _emit_step(
        self,
        p: _PendingStep,
        loss: float,
        gnorm: float,
        clip: float,
        applied: bool,
        spike: bool,
        lr: float,
        seconds: float,
    ) -> None:
        c = self.host_counters
        skipped = None if applied else ("spike" if spike else "nonfinite")
        if applied and clip < 1.0:
            c["clipped"] += 1
        metrics: dict[str, Any] = {
            "step": p.step,
            "loss": loss,
            "lr": lr,
            "gradNorm": gnorm if math.isfinite(gnorm) else None,
            "elapsed_ms": seconds * 1000,
            "tokens_per_sec": self.tokens_per_step / seconds if seconds > 0 else 0.0,
            "ms_per_iter": seconds * 1000,
            "clip_coef": clip,
            "clip_pct": 100.0 * c["clipped"] / p.step,
            "tokens": p.tokens,
        }
        if skipped:
            metrics["skipped"] = skipped
            self._skip_event(p.step, skipped, loss, gnorm)
        metrics.update(p.extra)
        for hook in self.step_hooks:
            hook(metrics)
        self._last_loss = loss if math.isfinite(loss) else self._last_loss
        self.bus.emit(Step(step=p.step, metrics=metrics))

    def _skip_event(self, step: int, reason: str, loss: float, gnorm: float) -> None:
        c = self.host_counters
        counter = "skipped_spike" if reason == "spike" else "skipped_nonfinite"
        c[counter] += 1
        n = c[counter]
        if n > SKIP_EVENTS_IN_FULL and n % 100:
            return
        if reason == "spike":
            ema = float(self.guards["grad_norm_ema"])
            kind, text = (
                "spike_skip",
                (
                    f"grad_norm={gnorm:.1f} > {self.cfg.spike_threshold:g}x EMA {ema:.3f}: "
                    f"skipping step {step} ({n} spike skips)"
                ),
            )
            data = {
                "gradNorm": gnorm,
                "spikeThreshold": self.cfg.spike_threshold,
                "gradNormEma": ema,
                "spikeSkips": n,
            }
        else:
            kind = "loss_nan" if not math.isfinite(loss) else "grad_norm_nan"
            what = "loss" if kind == "loss_nan" else "grad_norm"
            value = loss if kind == "loss_nan" else gnorm
            text = f"{what}={value} at step {step}: skipping optimizer update ({n} non-finite skips)"
            data = {"loss": loss, "gradNorm": gnorm, "nonFiniteSkips": n}
        self.bus.emit(Alert(step=step, kind=kind, level="warn", text=text, data=data))

    def record_eval(self, val_loss: float) -> None:
        """Record a validation loss measured at the current step by the caller (e.g. the search)."""
        self._record_eval(val_loss)

    def _record_eval(self, val_loss: float) -> None:
        train_loss = self._last_loss if self._last_loss is not None else math.nan
        self.last_val_loss = val_loss
        if math.isfinite(val_loss) and (self.best_val_loss is None or val_loss < self.best_val_loss):
            self.best_val_loss = val_loss
        self.eval_history.append((self.step, train_loss, val_loss))
        self.bus.emit(
            Eval(step=self.step, train_loss=train_loss, val_loss=val_loss, eval_windows=self.cfg.eval_iters)
        )

    # ------------------------------------------------------------------ eval and samples
    def evaluate(self) -> float:
        """Mean loss over the fixed validation windows (the same windows at every eval)."""
        return float(self.evaluate_on_device())

    @torch.no_grad()
    def evaluate_on_device(self) -> torch.Tensor:
        """``evaluate``'s loss as a device scalar, queued without waiting for it: the few large
        forward passes of ``eval_chunks``."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        rows = 0
        for x, y in self._eval_chunks:
            with self.autocast():
                total += self._window_loss(self.model, x, y).float() * x.shape[0]
            rows += x.shape[0]
        self.model.train()
        return total.double() / rows

    def compile_evaluation(self, enabled: bool = True) -> None:
        """Evaluate through a compiled forward (``enabled``) or the eager model. A search evaluates
        every candidate: on CUDA with ``--compile`` the compiled forward takes about half the time
        (13.3 against 23.3 ms for the seed model's 10 windows on an H200) for one compilation of a
        few seconds, taken now. Compiled for the current activations: switch back before they
        change in a way a compiled model sees (e.g. a search's winner stops being swappable)."""
        if not enabled:
            self._window_loss = _window_loss
            return
        if self._window_loss is not _window_loss or not (self.cfg.compile and self.device.type == "cuda"):
            return
        self._window_loss = torch.compile(_window_loss, dynamic=False, options=compile_options(self.model))
        self.evaluate()

    def sample(self) -> None:
        """Generate from the domain prompts. Inline (the default on CPU): now, while the loop waits.
        In the sampler process (the default on CUDA): the weights are copied to host memory and the
        loop goes on; the Samples event, labelled with the step it was taken at, is emitted at a
        later log boundary. ``$ALPHA_SAMPLER`` chooses (see alpha.train.sampler_process)."""
        cfg, step = self.cfg, self.step
        texts = [self.domain.format_prompt(p) for p in self.domain.prompts[: cfg.sample_prompts]]
        prompts = [self.tokenizer.encode(text) for text in texts]
        seed = cfg.seed * 1_000_003 + step
        round_ = _SampleRound(step, summarize_trend(self.eval_history), texts)
        if self.sampler is not None:
            self._submit_samples(self.sampler, round_, prompts, seed)
            return
        outputs = sample_prompts(
            self.model, prompts, cfg.sample_tokens, seed=seed, stop_id=self.tokenizer.eot_id
        )
        self._emit_samples(round_, outputs)

    def _start_sampler(self, sampler: SamplerProcess) -> None:
        pid = sampler.start()
        sampler.host.reserve_in_background(self.model)
        text = f"sampler process {pid} started (torch CPU threads: {sampler.threads})"
        alert = Alert(step=self.step, kind="sampler_started", level="info", text=text, data={"pid": pid})
        self.bus.emit(alert)

    def _submit_samples(
        self, sampler: SamplerProcess, round_: _SampleRound, prompts: list[list[int]], seed: int
    ) -> None:
        """Hand a round to the sampler process: one round at a time (see alpha.train.sampler_process)."""
        step = round_.step
        if sampler.in_flight is not None:
            if step < self.cfg.iters:
                text = (
                    f"samples of step {step} skipped: the round of step {sampler.in_flight} is still running"
                )
                self.bus.emit(Alert(step=step, kind="sample_skipped", level="debug", text=text))
                return
            self.collect_samples(wait=True)  # the last round of the run waits for the one before
        if sampler.gave_up:
            return
        if not sampler.running:
            self._start_sampler(sampler)
        request = SampleRequest(
            step=step,
            model_config=self.model_cfg.to_wire(),  # every round: a symbio search changes the activation
            prompts=prompts,
            max_new_tokens=self.cfg.sample_tokens,
            stop_id=self.tokenizer.eot_id,
            seed=seed,
        )
        shared = sampler.host.shared
        sampler.submit(request, self.model)  # copies the weights to host memory
        self._sample_round = round_
        if shared and not sampler.host.shared:
            text = "too little shared memory for the weights: they now go to the sampler process by value"
            self.bus.emit(Alert(step=step, kind="sampler_shared_memory", level="info", text=text))

    def collect_samples(self, wait: bool = False) -> None:
        """Emit the sampler process's round once it is done (``wait``: wait for it)."""
        if self.sampler is None or self._sample_round is None:
            return
        result = self.sampler.result(timeout=None if wait else 0.0)
        if result is None:
            return
        round_, self._sample_round = self._sample_round, None
        if result.outputs is not None:
            self._emit_samples(round_, result.outputs)
            return
        error = (result.error or "no result").rstrip()
        text = f"samples of step {round_.step} failed; training goes on:\n{error}"
        if self.sampler.gave_up:
            text += f"\n{self.sampler.failures} failed rounds in a row: no more samples in this run"
            self.sampler.close()
        data = {"sampleStep": round_.step, "error": error.splitlines()[-1] if error else ""}
        self.bus.emit(Alert(step=round_.step, kind="sample_failed", level="warn", text=text, data=data))

    def _emit_samples(self, round_: _SampleRound, outputs: list[list[int]]) -> None:
        samples = [
            {"prompt": text, "output": self.tokenizer.decode(ids)}
            for text, ids in zip(round_.prompts, outputs, strict=True)
        ]
        self.bus.emit(Samples(step=round_.step, samples=samples, trend=round_.trend))

    def set_activation(self, factory: Callable[[], nn.Module], key: object) -> None:
        """Give every block's MLP a new activation module (same shapes: no parameter changes).

        ``key`` identifies the activation (e.g. its canonical formula): a captured step graph is
        reused when the same key comes back.
        """
        self._flush()
        for block in self.model.layers:
            block.mlp.act = factory().to(self.device)
        if self.graphed is not None:
            self.graphed.invalidate(key)

    # ------------------------------------------------------------------ one rank alone
    @contextlib.contextmanager
    def local_steps(self) -> Iterator[RecordingBus]:
        """Train on this rank alone (several processes, e.g. candidate-parallel search): no
        all-reduce and no collective at all, the first slice of every batch (what one process with
        this --batch trains on), stops seen by this rank only, and the events recorded instead of
        emitted, for ``replay``. Counters and tokens are restored on exit; ``replay`` recounts them."""
        self._flush()
        bus, counters, tokens = self.bus, dict(self.host_counters), self.tokens_seen
        recorder = RecordingBus(bus)
        self.bus, self.local = recorder, True
        try:
            yield recorder
        finally:
            self._flush()
            self.bus, self.local = bus, False
            self.host_counters.update(counters)
            self.tokens_seen = tokens

    def replay(self, events: list[Event]) -> None:
        """Emit events recorded by ``local_steps`` (gathered from every rank) in step order, with
        the run's cumulative tokens, clip percentage and skip counters recomputed across them."""
        c, tokens_per_step = self.host_counters, self.tokens_per_step // self.ctx.world_size  # one rank's
        for event in sorted(events, key=lambda e: e.step):
            if isinstance(event, Step):
                m = event.metrics
                self.tokens_seen += tokens_per_step
                m["tokens"] = self.tokens_seen
                if m.get("skipped"):
                    c["skipped_spike" if m["skipped"] == "spike" else "skipped_nonfinite"] += 1
                elif m["clip_coef"] < 1.0:
                    c["clipped"] += 1
                m["clip_pct"] = 100.0 * c["clipped"] / event.step
                if math.isfinite(m["loss"]):
                    self._last_loss = m["loss"]
            self.bus.emit(event)

    def count_step_time(self, seconds: float, tokens: int) -> None:
        """Add steps timed by the caller to the run's step rate: ranks that trained alone at the
        same time (a spread search generation), their tokens together over their common wall time."""
        if self._warm is not None:
            self._step_seconds += seconds
            self._tokens_timed += tokens

    def restart_rate_clocks(self) -> None:
        """The run's rates count from now: when the first interval of this rank is not the end of
        every rank's warm-up (ranks alone compile and capture at their own pace)."""
        self._mark = time.perf_counter()
        self._warm = (self._mark, self.tokens_seen)
        self._step_seconds, self._tokens_timed = 0.0, 0

    def broadcast_state(self, src: int) -> None:
        """Every rank takes rank ``src``'s weights, AdamW moments and guards (in place)."""
        ensure_state(self.optimizer)
        tensors = list(self.model.state_dict().values())
        for p in self.params:
            state = self.optimizer.state[p]
            tensors += [state[k] for k in sorted(state) if isinstance(state[k], torch.Tensor)]
        tensors += list(self.guards.values())
        for tensor in tensors:
            torch.distributed.broadcast(tensor, src=src)
        self.weights_changed()

    # ------------------------------------------------------------------ snapshots and checkpoints
    def snapshot(self, into: Snapshot | None = None) -> Snapshot:
        """Copies of weights, optimizer moments and guard state (all on the device). ``into``: an
        earlier snapshot of this trainer to overwrite in place, with one multi-tensor copy instead of
        an allocation and a kernel per tensor (a search takes one or two per candidate)."""
        self._flush()
        live = self._live_state()
        if into is not None and _same_layout(into, live):
            with torch.no_grad():
                torch._foreach_copy_(_snapshot_tensors(into), _snapshot_tensors(live))
            into.step, into.tokens_seen = self.step, self.tokens_seen
            return into
        return Snapshot(
            step=self.step,
            tokens_seen=self.tokens_seen,
            model={k: v.clone() for k, v in live.model.items()},
            optimizer={
                name: {k: v.clone() for k, v in state.items()} for name, state in live.optimizer.items()
            },
            guards={k: v.clone() for k, v in live.guards.items()},
        )

    def _live_state(self) -> Snapshot:
        """The trainer's own tensors, laid out as a snapshot (not copies)."""
        names = self.param_names
        return Snapshot(
            step=self.step,
            tokens_seen=self.tokens_seen,
            model={k: v.detach() for k, v in self.model.state_dict().items()},
            optimizer={names[id(p)]: dict(state) for p, state in self.optimizer.state.items()},
            guards=dict(self.guards),
        )

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The torch RNG states the run draws from: ``cpu``, and ``cuda`` on a GPU."""
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        """Back to ``rng_state()``'s states (a GPU state is ignored on a CPU run)."""
        if "cpu" in state:
            torch.set_rng_state(state["cpu"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def restore(self, snap: Snapshot) -> None:
        """Weights, optimizer and guards back to ``snap``, copied in place (captured CUDA graphs
        keep pointing at the same tensors); the global step keeps counting."""
        self._flush()
        live = self._live_state()
        with torch.no_grad():
            if _same_layout(snap, live):  # one multi-tensor copy
                torch._foreach_copy_(_snapshot_tensors(live), _snapshot_tensors(snap))
                self.weights_changed()
                return
            self.model.load_state_dict(snap.model)
            self.weights_changed()
            for name, state in live.optimizer.items():
                saved = snap.optimizer.get(name)
                for key, value in state.items():
                    if saved is None:  # the snapshot predates the first step: a fresh optimizer
                        value.zero_()
                    else:
                        value.copy_(saved[key])
            for k, v in snap.guards.items():
                self.guards[k].copy_(v)

    def _checkpoint_step(self) -> int | None:
        if self.last_checkpoint is None:
            return None
        return int(self.last_checkpoint.stem.split("-")[-1])

    def _checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor a checkpoint holds, by name (the live tensors, not copies)."""
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(optimizer_tensors(self.optimizer, self.param_names))
        tensors.update({f"trainer.guard.{k}": v for k, v in self.guards.items()})
        tensors.update({f"trainer.rng.{k}": v for k, v in self.rng_state().items()})
        return tensors

    def _reserve_checkpoint_buffers(self) -> None:
        """Once the optimizer's state exists (after the first step), have the writer thread allocate
        the host buffers of the checkpoints while training goes on; the first checkpoint waits for
        the writer anyway (``save_checkpoint``), and then only copies."""
        self._checkpoint_buffers_reserved = True
        if not self.ctx.is_main:
            return
        wanted = host_specs(self._checkpoint_tensors())
        self.writer.submit(lambda: self.host_buffers.reserve(wanted), lambda _: None)

    def save_checkpoint(self) -> Path | None:
        """Copy the state to host memory now; a worker thread writes it to a temp file, fsyncs it
        and renames it in place (the CheckpointSaved event follows at a later log boundary)."""
        self._flush()
        if not self.ctx.is_main:
            return None
        path = checkpoint_path(self.ctx.run_dir, self.step)
        val = self.last_val_loss if self.eval_history and self.eval_history[-1][0] == self.step else None
        tensors = self._checkpoint_tensors()
        meta = {
            "format": FORMAT,
            "step": self.step,
            "runId": self.ctx.run_id,
            "modelConfig": self.model_cfg.to_wire(),
            "trainConfig": self.cfg.to_wire(),
            "configHash": config_hash(self.model_cfg, self.cfg),
            "domain": self.domain.name,
            "valLoss": val,
            "tokenizer": self.tokenizer.to_json(),
            "trainer": {
                "hostCounters": self.host_counters,
                "evalHistory": self.eval_history[-64:],
                "bestValLoss": self.best_val_loss,
                "lastLoss": self._last_loss,
                "tokensSeen": self.tokens_seen,
                "components": {name: c.state_dict() for name, c in self.components.items()},
            },
        }
        meta = json.loads(json.dumps(meta))  # frozen now: counters and histories keep changing
        self.writer.drain()  # the previous write is done with the host buffers
        cpu, step, retention = self.host_buffers.copy(tensors), self.step, self.retention

        def write() -> bool:  # on the worker thread; retention is only touched there
            write_atomic(cpu, meta, path)
            retention.add(path, val)
            return retention.best == path

        def saved(is_best: bool) -> None:
            self.bus.emit(CheckpointSaved(step=step, path=str(path), val_loss=val, is_best=is_best))

        self.writer.submit(write, saved)
        self.last_checkpoint = path
        return path

    def load_state(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint: weights, optimizer moments, guards, RNG, counters, components."""
        self.model.load_state_dict(ckpt.model)
        self.weights_changed()
        named = dict(self.model.named_parameters())
        load_optimizer_tensors(self.optimizer, named, ckpt.optim)
        for k in self.guards:
            key = f"guard.{k}"
            if key in ckpt.trainer:
                self.guards[k].copy_(ckpt.trainer[key].to(self.device))
        self.set_rng_state({k[4:]: v for k, v in ckpt.trainer.items() if k.startswith("rng.")})
        self.step = ckpt.step
        state = ckpt.meta.get("trainer", {})
        self.host_counters.update(state.get("hostCounters", {}))
        self.eval_history = [tuple(e) for e in state.get("evalHistory", [])]  # type: ignore[misc]
        self.best_val_loss = state.get("bestValLoss")
        self._last_loss = state.get("lastLoss")
        # older checkpoints: every step so far at this run's tokens per step
        self.tokens_seen = int(state.get("tokensSeen", self.step * self.tokens_per_step))
        for name, component_state in state.get("components", {}).items():
            if name in self.components:
                self.components[name].load_state_dict(component_state)

    # ------------------------------------------------------------------ end
    def close_sampler(self) -> None:
        """Stop the sampler process, if one runs (a round still generating is abandoned)."""
        if self.sampler is not None:
            self.sampler.close()

    def _finish(self, status: str, reason: str, elapsed: float) -> RunEnd:
        self.collect_samples(wait=True)
        self.close_sampler()
        self.writer.drain()
        self.writer.close()
        loop_tps = 0.0
        if self._warm is not None and self.tokens_seen > self._warm[1]:
            end = self._loop_end or time.perf_counter()
            loop_tps = (self.tokens_seen - self._warm[1]) / (end - self._warm[0])
        tokens_per_sec = self._tokens_timed / self._step_seconds if self._step_seconds else 0.0
        c = self.host_counters
        end = RunEnd(
            step=self.step,
            status=status,
            reason=reason,
            iters=self.cfg.iters,
            elapsed_s=elapsed,
            tokens_per_sec=tokens_per_sec,
            loop_tokens_per_sec=loop_tps,
            final_loss=self._last_loss,
            final_val_loss=self.last_val_loss,
            best_val_loss=self.best_val_loss,
            best_checkpoint=str(self.retention.best) if self.retention.best else None,
            last_checkpoint=str(self.last_checkpoint) if self.last_checkpoint else None,
            skipped_steps=c["skipped_spike"] + c["skipped_nonfinite"],
            clipped_steps=c["clipped"],
            symbio_winner=getattr(self.components.get("symbio"), "winner_name", None),
            run_dir=str(self.ctx.run_dir),
            log_path=str(self.ctx.run_dir.parent / f"train_{self.ctx.run_id}.log"),
        )
        self.bus.emit(end)
        return end
