"""Setting up a run: resolve configs (or a resume), pick the device, build tokenizer, data, model,
sinks and trainer, handle signals, and map the outcome to an exit code.

This is the shell around the pure training loop: everything here happens once per run. Under
torchrun (``WORLD_SIZE`` > 1) every process runs this; rank 0 alone prepares the shared caches
first, writes files and emits events, and the others join once the caches exist.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alpha.config import (
    ModelConfig,
    TrainConfig,
    config_hash,
    domain_for,
    new_run_id,
    validate,
)
from alpha.data.corpus import check_data_file
from alpha.data.tokenizer import (
    BPE_TRAIN_BYTES,
    BpeTokenizer,
    CharTokenizer,
    build_or_load_tokenizer,
    file_digest,
    load_tokenizer,
)
from alpha.data.tokens import TokenData, prepare_tokens, training_texts
from alpha.errors import EXIT_FAILURE, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_UNHEALTHY, ConfigError
from alpha.events import Alert, EventBus, RunEnd, RunStart, Sink
from alpha.health.watchdog import Watchdog
from alpha.model.gpt import GPT
from alpha.remote.upload import check_upload_final, upload_final_checkpoint
from alpha.sinks.discord import from_env as discord_sink
from alpha.sinks.jsonl import EventsSink, MetricsSink
from alpha.sinks.logfile import ConsoleSink, LogFileSink
from alpha.sinks.remote import from_env as remote_sink
from alpha.symbio.preflight import prepare_config
from alpha.train.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint
from alpha.train.checkpoint_files import find_checkpoint
from alpha.train.sampler_process import sampler_mode
from alpha.train.trainer import RunContext, Trainer


@dataclass
class RunPlan:
    """Everything decided before the first step."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    run_id: str
    run_dir: Path
    resume: Checkpoint | None = None


# ---------------------------------------------------------------------------- configs
def plan_from_args(
    args: argparse.Namespace, configs: tuple[ModelConfig, TrainConfig] | None = None
) -> RunPlan:
    """The run ``args`` ask for; ``configs``: a new run's, already checked by ``checked_configs``."""
    from alpha.commands.train import checked_configs, given_flags

    if args.resume:
        return _plan_resume(args, *given_flags(args))
    model_cfg, train_cfg = configs or checked_configs(args)
    if train_cfg.run_dir:
        run_dir = Path(train_cfg.run_dir)
        run_id = run_dir.name
    else:
        run_id = new_run_id(train_cfg.data)
        run_dir = Path("runs") / run_id
    return RunPlan(model_cfg, train_cfg, run_id, run_dir)


# Model fields that change no parameter, so a resumed run may set them anew (more dropout for a run
# that overfits; the residual stream's precision).
RESUMABLE_MODEL_FIELDS = ("dropout", "fp32_residual")


def _find_resume_checkpoint(resume: str, run_dir: str | None) -> Path:
    if resume == "latest":
        if run_dir:
            found = latest_checkpoint(Path(run_dir))
        else:
            candidates = [p for d in Path("runs").glob("*/") if (p := latest_checkpoint(d)) is not None]
            found = max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None
        if found is None:
            raise ConfigError(
                "--resume latest: no checkpoint found" + (f" in {run_dir}" if run_dir else " under runs/")
            )
        return found
    return find_checkpoint(Path(resume), "--resume")


def _plan_resume(
    args: argparse.Namespace, model_given: dict[str, Any], train_given: dict[str, Any]
) -> RunPlan:
    path = _find_resume_checkpoint(args.resume, args.run_dir)
    ckpt = load_checkpoint(path)
    try:
        model_cfg = ModelConfig.from_wire(ckpt.meta["modelConfig"])
        train_cfg = TrainConfig.from_wire(ckpt.meta["trainConfig"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path} has an unusable config ({exc})") from None
    mismatched = [
        f"{field}={value!r} (checkpoint has {getattr(model_cfg, field)!r})"
        for field, value in model_given.items()
        if getattr(model_cfg, field) != value and field not in RESUMABLE_MODEL_FIELDS
    ]
    if mismatched:
        raise ConfigError(f"cannot resume {path}: model flags differ: {', '.join(mismatched)}")
    for field, value in model_given.items():
        if field in RESUMABLE_MODEL_FIELDS:
            setattr(model_cfg, field, value)
    for field, value in train_given.items():
        setattr(train_cfg, field, value)
    validate(model_cfg, train_cfg)
    if "symbio_config_path" in train_given or (train_cfg.symbio and train_cfg.symbio_config is None):
        prepare_config(model_cfg, train_cfg)
    if ckpt.step >= train_cfg.iters:
        raise ConfigError(
            f"checkpoint is at step {ckpt.step}, already at --iters {train_cfg.iters}; raise --iters"
        )
    run_dir = Path(args.run_dir) if args.run_dir else path.parent
    train_cfg.run_dir = str(run_dir)
    return RunPlan(model_cfg, train_cfg, str(ckpt.meta.get("runId") or run_dir.name), run_dir, ckpt)


# ---------------------------------------------------------------------------- hardware
def resolve_device(train_cfg: TrainConfig, local_rank: int) -> torch.device:
    backend = train_cfg.backend
    if backend in ("cuda", "helios"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--backend {backend} needs a CUDA GPU, and none is available (use --backend cpu)"
            )
        return torch.device("cuda", local_rank)
    if backend == "auto" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_precision(train_cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    dtype = train_cfg.dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[dtype]


def infra_facts(device: torch.device) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpuCount": os.cpu_count(),
        "osPlatform": sys.platform,
        "device": str(device),
        "torch": torch.__version__,
    }
    with contextlib.suppress(ValueError, OSError, AttributeError):
        facts["ramTotalMb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(gpuName=props.name, gpuVendor="NVIDIA", gpuVramMb=round(props.total_memory / 2**20))
    facts["python"] = platform.python_version()
    return facts


# ---------------------------------------------------------------------------- distributed
def init_distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = (
        "nccl" if torch.cuda.is_available() and os.environ.get("ALPHA_DIST_BACKEND") != "gloo" else "gloo"
    )
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(backend=backend)
    return rank, local_rank, world


def check_gpus(gpus: int, backend: str) -> None:
    """``--gpus N`` asks for N CUDA GPUs of this host: one clear line now (exit 2) when they are
    not there, instead of N processes failing one by one. (Several CPU processes, e.g. for tests,
    come from ``torchrun --nproc-per-node N -m alpha train`` with ``ALPHA_DIST_BACKEND=gloo``.)"""
    if gpus <= 1:
        return
    if backend == "cpu":
        raise ConfigError(f"--gpus {gpus} trains on {gpus} CUDA GPUs, but --backend is cpu")
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > have:
        raise ConfigError(f"--gpus {gpus}: this host has {have} CUDA GPU{'' if have == 1 else 's'}")


def exec_torchrun(gpus: int) -> None:
    """``alpha train --gpus N``: re-run this command under torchrun with N processes."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={gpus}",
        "-m",
        "alpha",
        *sys.argv[1:],
    ]
    os.execv(sys.executable, cmd)


def _broadcast(value: Any, world: int) -> Any:
    if world <= 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------- data
def prepare_tokenizer(plan: RunPlan) -> BpeTokenizer | CharTokenizer:
    if plan.resume is not None:  # the checkpoint's own tokenizer, never a rebuilt one
        return load_tokenizer(plan.resume.meta["tokenizer"])
    cfg = plan.train_cfg
    data = check_data_file(cfg.data)
    texts = training_texts(cfg.data, cfg.domain, cfg.val_data is not None, BPE_TRAIN_BYTES)
    return build_or_load_tokenizer(cfg.tokenizer, cfg.vocab_size, file_digest(data), texts)


def prepare_data(plan: RunPlan, tokenizer: BpeTokenizer | CharTokenizer, show_progress: bool) -> TokenData:
    cfg = plan.train_cfg
    return prepare_tokens(cfg.data, cfg.val_data, cfg.domain, tokenizer, show_progress)


# ---------------------------------------------------------------------------- sinks
def build_sinks(plan: RunPlan, bus: EventBus) -> list[Sink]:
    """The outputs of a run (rank 0 only). New outputs are added here, never in the trainer."""
    log_path = plan.run_dir.parent / f"train_{plan.run_id}.log"
    cfg, run_dir = plan.train_cfg, plan.run_dir
    sinks: list[Sink] = [
        LogFileSink(log_path),
        ConsoleSink(),
        MetricsSink(plan.run_dir),
        EventsSink(plan.run_dir),
    ]
    # After the files: closing a network output may wait (bounded) for delivery.
    sinks += [s for s in (remote_sink(cfg, run_dir), discord_sink(cfg, run_dir)) if s is not None]
    # last, so that its alerts follow the step that raised them in every other output
    sinks.append(Watchdog(bus, action=plan.train_cfg.on_unhealthy))
    return sinks


def attach_components(trainer: Trainer, plan: RunPlan) -> None:
    """Components that drive or extend the loop (the symbiogenesis search)."""
    if plan.train_cfg.symbio:
        try:
            from alpha.symbio.search import attach_search
        except ImportError:
            trainer.bus.emit(
                Alert(
                    step=trainer.step,
                    kind="symbio_unavailable",
                    level="warn",
                    text="--symbio: the search is not available in this build; training the base activation",
                )
            )
            return
        attach_search(trainer, plan.train_cfg.symbio_config or {})


# ---------------------------------------------------------------------------- the run
def write_run_files(plan: RunPlan, tokenizer: BpeTokenizer | CharTokenizer) -> None:
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "runId": plan.run_id,
        "domain": plan.train_cfg.domain,
        "configHash": config_hash(plan.model_cfg, plan.train_cfg),
        "dataPath": plan.train_cfg.data,
        "modelConfig": plan.model_cfg.to_wire(),
        "trainConfig": plan.train_cfg.to_wire(),
    }
    (plan.run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (plan.run_dir / "tokenizer.json").write_text(tokenizer.to_json())


class PidFile:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "train.pid"

    def __enter__(self) -> PidFile:
        from alpha.events import utc_now_iso

        self.path.write_text(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now_iso()})
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def install_signal_handlers(trainer: Trainer) -> None:
    """First SIGINT/SIGTERM: finish the step, save a checkpoint, exit. A second SIGINT: abort now."""

    def handler(signum: int, frame: object) -> None:
        if trainer.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_signal = signum

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def exit_code(end: RunEnd, stop_signal: int | None, unhealthy_code: int | None) -> int:
    if end.status == "completed":
        return EXIT_OK
    if end.status == "interrupted":
        return EXIT_SIGTERM if stop_signal == signal.SIGTERM else EXIT_SIGINT
    if end.status == "unhealthy":
        return unhealthy_code or EXIT_UNHEALTHY
    return EXIT_FAILURE


def train_from_args(args: argparse.Namespace, configs: tuple[ModelConfig, TrainConfig] | None = None) -> int:
    plan = plan_from_args(args, configs)
    if plan.train_cfg.gpus > 1 and "WORLD_SIZE" not in os.environ:
        check_gpus(plan.train_cfg.gpus, plan.train_cfg.backend)
        exec_torchrun(plan.train_cfg.gpus)
    rank, local_rank, world = init_distributed()
    try:
        return run(plan, rank, local_rank, world)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run(plan: RunPlan, rank: int = 0, local_rank: int = 0, world: int = 1) -> int:
    cfg = plan.train_cfg
    check_upload_final(cfg.upload_final, cfg.remote)
    device = resolve_device(cfg, local_rank)
    sampler_mode(device)  # a bad $ALPHA_SAMPLER fails here, before anything is written
    if cfg.compile is None:
        cfg.compile = device.type == "cuda"
    if cfg.cuda_graphs is None:
        cfg.cuda_graphs = device.type == "cuda" and cfg.compile
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # the host only feeds the GPU; its CPU ops must not flood every core with spinning OpenMP
        # threads that the loop then waits behind (samples run in a process of their own)
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    plan.run_id = _broadcast(plan.run_id, world)
    plan.run_dir = Path(_broadcast(str(plan.run_dir), world))
    cfg.run_dir = str(plan.run_dir)
    if rank == 0:  # rank 0 trains the tokenizer and tokenizes; the others then read the caches
        tokenizer = prepare_tokenizer(plan)
        data = prepare_data(plan, tokenizer, show_progress=True)
    _barrier(world)
    if rank != 0:
        tokenizer = prepare_tokenizer(plan)
        data = prepare_data(plan, tokenizer, show_progress=False)
    plan.model_cfg.vocab_size = tokenizer.vocab_size
    domain = domain_for(cfg.domain)
    torch.manual_seed(cfg.seed)
    model = GPT(plan.model_cfg)
    autocast_dtype = resolve_precision(cfg, device)
    ctx = RunContext(plan.run_id, plan.run_dir, device, autocast_dtype, rank, world)
    bus = EventBus()
    if rank == 0:
        write_run_files(plan, tokenizer)
        for sink in build_sinks(plan, bus):
            bus.add(sink)
    trainer = Trainer(model, cfg, tokenizer, data, bus, ctx, domain)
    attach_components(trainer, plan)
    if plan.resume is not None:
        trainer.load_state(plan.resume)
    infra = infra_facts(device) | {
        "configHash": config_hash(plan.model_cfg, cfg),
        "precision": str(autocast_dtype).replace("torch.", "") if autocast_dtype else "fp32",
        "compile": bool(cfg.compile),
        "worldSize": world,
        "trainTokens": len(data.train),
        "valTokens": len(data.val),
        "trainDocuments": data.meta.get("train_documents"),
        "valDocuments": data.meta.get("val_documents"),
    }
    with PidFile(plan.run_dir) if rank == 0 else contextlib.nullcontext():
        bus.emit(
            RunStart(
                step=trainer.step,
                kind="run_resumed" if plan.resume is not None else "training_started",
                run_id=plan.run_id,
                run_dir=str(plan.run_dir),
                domain=domain.name,
                data_path=cfg.data,
                model_config=plan.model_cfg.to_wire(),
                train_config=cfg.to_wire(),
                total_params=model.num_params(),
                infra=infra,
                resumed_from=plan.resume.step if plan.resume is not None else None,
            )
        )
        for warning in data.warnings:
            bus.emit(Alert(step=trainer.step, kind="data_warning", level="warn", text=warning))
        install_signal_handlers(trainer)
        try:
            end = trainer.fit()
        except BaseException as exc:
            with contextlib.suppress(BaseException):  # checkpoints already copied still reach the disk
                trainer.writer.drain()
            _report_failure(bus, trainer, exc)
            bus.close()
            raise
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if trainer.graphed is not None:
                trainer.graphed.release()
            trainer.close_sampler()
        if cfg.upload_final and rank == 0:
            upload_final_checkpoint(end, bus)
        bus.close()
    return exit_code(end, trainer.stop_signal, bus.stop_request.exit_code if bus.stop_request else None)


def _report_failure(bus: EventBus, trainer: Trainer, exc: BaseException) -> None:
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    text = "".join(traceback.format_exception(exc)).rstrip()
    if status == "failed":
        bus.emit(Alert(step=trainer.step, kind="exception", level="error", text=text))
    bus.emit(
        RunEnd(
            step=trainer.step,
            status=status,
            reason=f"{type(exc).__name__}: {exc}" if status == "failed" else "aborted by a second interrupt",
            iters=trainer.cfg.iters,
            elapsed_s=0.0,
            tokens_per_sec=0.0,
            final_loss=None,
            last_checkpoint=str(trainer.last_checkpoint) if trainer.last_checkpoint else None,
        )
    )
