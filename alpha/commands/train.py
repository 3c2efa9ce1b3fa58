"""``alpha train``: parse the seed's training flags, validate once, run the trainer.

Every flag defaults to None, meaning "not given", so that domain presets (and, on resume, the
checkpoint's own config) fill the rest. The reference's camelCase spellings (``--evalInterval``)
are accepted as aliases of the kebab-case ones (``--eval-interval``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from alpha.config import (
    ACTIVATIONS,
    BACKENDS,
    DOMAINS,
    DTYPES,
    TOKENIZERS,
    ModelConfig,
    TrainConfig,
    resolve,
    validate,
)
from alpha.data.corpus import check_data_file
from alpha.errors import ConfigError

HELP = "train a GPT on a text or chat corpus"

# flag dest -> ModelConfig field
MODEL_FLAGS = {
    "dim": "n_embd",
    "heads": "n_head",
    "layers": "n_layer",
    "block": "block_size",
    "dropout": "dropout",
    "activation": "ffn_activation",
    "activation_graph": "activation_graph",
    "ffn_dim": "ffn_dim",
    "soft_cap": "soft_cap",
    "fp32_residual": "fp32_residual",
}
# flag dest -> TrainConfig field
TRAIN_FLAGS = {
    "data": "data",
    "val_data": "val_data",
    "domain": "domain",
    "iters": "iters",
    "batch": "batch_size",
    "accum_steps": "grad_accum_steps",
    "lr": "lr",
    "lr_min": "lr_min",
    "warmup": "warmup_iters",
    "beta1": "beta1",
    "beta2": "beta2",
    "eps": "eps",
    "weight_decay": "weight_decay",
    "grad_clip": "grad_clip",
    "spike_threshold": "spike_threshold",
    "eval_interval": "eval_interval",
    "eval_iters": "eval_iters",
    "sample_interval": "sample_interval",
    "sample_tokens": "sample_tokens",
    "sample_prompts": "sample_prompts",
    "checkpoint_interval": "checkpoint_interval",
    "keep_checkpoints": "keep_checkpoints",
    "seed": "seed",
    "backend": "backend",
    "tokenizer": "tokenizer",
    "vocab_size": "vocab_size",
    "dtype": "dtype",
    "compile": "compile",
    "cuda_graphs": "cuda_graphs",
    "wgrad_stream": "wgrad_stream",
    "wgrad_sms": "wgrad_sms",
    "log_every": "log_every",
    "run_dir": "run_dir",
    "resume": "resume",
    "symbio": "symbio",
    "symbio_config": "symbio_config_path",
    "symbio_resume_graph": "symbio_resume_graph",
    "on_unhealthy": "on_unhealthy",
    "remote": "remote",
    "upload_final": "upload_final",
    "gpus": "gpus",
}
# Reference flags that only made sense for its Vulkan backend: accepted, ignored with a warning.
IGNORED_REFERENCE_FLAGS = ("gpuProfile", "minGpuSize", "syncEvery", "gcEvery", "no-fallback", "noFallback")


def _flag(parser: argparse.ArgumentParser, name: str, *aliases: str, **kwargs: Any) -> None:
    parser.add_argument(name, *aliases, default=None, **kwargs)


def _toggle(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    """``--name`` / ``--no-name``; None when neither is given (the preset decides)."""
    _flag(parser, name, action=argparse.BooleanOptionalAction, help=help)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    _flag(g, "--data", help="training text file (UTF-8); chat: one conversation per line")
    _flag(g, "--val-data", "--valData", help="separate validation file (default: 10%% of conversations)")
    _flag(g, "--domain", choices=list(DOMAINS), help="preset: chat or text (default text)")
    _flag(g, "--tokenizer", choices=list(TOKENIZERS), help="bpe (byte-level) or char")
    _flag(g, "--vocab-size", "--vocabSize", type=int, help="BPE vocabulary size (chat default 4000)")

    g = p.add_argument_group("model")
    _flag(g, "--dim", type=int, help="embedding width C")
    _flag(g, "--heads", type=int, help="attention heads H (must divide --dim)")
    _flag(g, "--layers", type=int, help="transformer blocks L")
    _flag(g, "--block", type=int, help="context length T")
    _flag(g, "--dropout", type=float, help="dropout probability")
    _flag(g, "--activation", choices=list(ACTIVATIONS), help="FFN activation")
    _flag(
        g,
        "--activation-graph",
        type=_activation_graph,
        help="FFN activation given as a composed graph (JSON, e.g. a symbio winner's activationGraph)",
    )
    _flag(g, "--ffn-dim", "--ffnDim", type=int, help="FFN hidden width (default 4C; swiglu 8C/3)")
    _flag(g, "--soft-cap", type=float, help="tanh soft-cap on attention scores (0 = off, flash path)")
    _toggle(g, "--fp32-residual", "keep the residual stream in fp32 under bf16 autocast (default: bf16)")

    g = p.add_argument_group("optimisation")
    _flag(g, "--iters", "--steps", type=int, help="optimizer steps")
    _flag(g, "--batch", type=int, help="micro-batch size B")
    _flag(g, "--accum-steps", "--accumSteps", type=int, help="gradient-accumulation micro-batches K")
    _flag(g, "--lr", type=float, help="peak learning rate")
    _flag(g, "--lr-min", "--lrMin", type=float, help="final learning rate of the cosine (default lr/10)")
    _flag(g, "--warmup", "--warmupIters", type=int, help="linear warmup steps (default min(cap, iters/10))")
    _flag(g, "--beta1", type=float, help="AdamW beta1")
    _flag(g, "--beta2", type=float, help="AdamW beta2")
    _flag(g, "--eps", type=float, help="AdamW epsilon")
    _flag(g, "--weight-decay", "--weightDecay", type=float, help="decoupled weight decay (matrices only)")
    _flag(g, "--grad-clip", "--gradClip", type=float, help="global-norm clip (0 = off)")
    _flag(
        g,
        "--spike-threshold",
        "--spikeThreshold",
        type=float,
        help="skip the update when grad_norm > X * EMA(grad_norm) (0 = off)",
    )
    _flag(g, "--seed", type=int, help="seed for init, data order and dropout")

    g = p.add_argument_group("eval, samples, checkpoints")
    _flag(g, "--eval-interval", "--evalInterval", type=int, help="steps between val-loss evals")
    _flag(g, "--eval-iters", "--evalIters", type=int, help="val batches per eval (fixed windows)")
    _flag(g, "--sample-interval", "--sampleInterval", type=int, help="steps between samples (0 = off)")
    _flag(g, "--sample-tokens", type=int, help="max new tokens per training sample")
    _flag(g, "--sample-prompts", type=int, help="domain prompts sampled each time")
    _flag(g, "--checkpoint-interval", type=int, help="steps between checkpoints (default: eval interval)")
    _flag(g, "--keep-checkpoints", type=int, help="recent checkpoints kept (the best-val one is kept too)")
    _flag(g, "--log-every", "--logEvery", type=int, help="steps between step lines (metrics: every step)")
    _flag(g, "--run-dir", "--runDir", help="run directory (default runs/<run id>)")
    _flag(g, "--resume", help="checkpoint file, run directory, or 'latest'")

    g = p.add_argument_group("hardware")
    _flag(g, "--backend", choices=list(BACKENDS), help="auto, cpu, cuda; helios means the GPU")
    _flag(g, "--dtype", choices=list(DTYPES), help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32")
    _toggle(g, "--compile", "torch.compile the model (default: on for CUDA)")
    _toggle(g, "--cuda-graphs", "replay each step as one CUDA graph (default: on when compiling on CUDA)")
    _toggle(g, "--wgrad-stream", "weight gradients on a side CUDA stream (default: on for CUDA autocast)")
    _flag(g, "--wgrad-sms", type=int, help="SMs for the side stream's GEMMs (default: by batch; 0: all)")
    _flag(g, "--gpus", type=int, help="GPUs on this host (starts torchrun when > 1)")
    g.add_argument(
        "--fp16", action="store_true", default=None, help="reference alias: mixed precision (bf16 autocast)"
    )

    g = p.add_argument_group("symbiogenesis, health, reporting")
    g.add_argument("--symbio", action="store_true", default=None, help="run the activation search")
    _flag(g, "--symbio-config", help="symbio JSON config")
    _flag(
        g,
        "--symbio-resume-graph",
        help="activation graph (JSON) that founds a composed search: candidate 0 plus mutations of it",
    )
    _flag(g, "--on-unhealthy", choices=["warn", "stop"], help="watchdog action (default warn)")
    _toggle(g, "--remote", "stream to ALPHA_REMOTE_URL when it and ALPHA_REMOTE_SECRET are set (default on)")
    g.add_argument(
        "--upload-final",
        action="store_true",
        default=None,
        help="upload the final checkpoint to the dashboard server",
    )
    for name in IGNORED_REFERENCE_FLAGS:
        p.add_argument(f"--{name}", dest=f"ignored_{name}", default=None, nargs="?", help=argparse.SUPPRESS)


def _activation_graph(text: str) -> dict[str, Any]:
    """``--activation-graph``: a validated graph in its canonical JSON form."""
    from alpha.symbio.graph import loads, to_json

    try:
        return to_json(loads(text))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """Resolve presets and defaults; does not validate (callers call config.validate)."""
    model_flags = {field: getattr(args, dest) for dest, field in MODEL_FLAGS.items()}
    if model_flags["activation_graph"] is not None and model_flags["ffn_activation"] is None:
        model_flags["ffn_activation"] = "composed"
    train_flags = {field: getattr(args, dest) for dest, field in TRAIN_FLAGS.items()}
    if getattr(args, "fp16", None) and train_flags["dtype"] is None:
        train_flags["dtype"] = "bf16"
    return resolve(model_flags, train_flags)


def checked_configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """The configs of a new run (not a resume) with every check that needs no torch passed: the
    flags, the data files, the symbio config and whether its search fits ``--iters``. Raises
    ConfigError otherwise."""
    model_cfg, train_cfg = configs_from_args(args)
    validate(model_cfg, train_cfg)
    check_data_file(train_cfg.data)
    if train_cfg.val_data is not None:
        check_data_file(train_cfg.val_data, "val data file")
    if train_cfg.symbio:
        from alpha.symbio.preflight import prepare_config  # not needed by `alpha --help`

        prepare_config(model_cfg, train_cfg)
    return model_cfg, train_cfg


def given_flags(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model and train fields the user gave explicitly (for resume overrides)."""
    model = {f: getattr(args, d) for d, f in MODEL_FLAGS.items() if getattr(args, d) is not None}
    train = {f: getattr(args, d) for d, f in TRAIN_FLAGS.items() if getattr(args, d) is not None}
    return model, train


def run(args: argparse.Namespace) -> int:
    for name in IGNORED_REFERENCE_FLAGS:
        if getattr(args, f"ignored_{name}", None) is not None:
            sys.stderr.write(f"[warn] --{name} tuned the reference's Vulkan backend; it has no effect here\n")
    # wrong flags and files fail here, before torch is imported (seconds on a small machine); the
    # launch plans a new run from these configs (a resume from its checkpoint)
    configs = checked_configs(args) if args.resume is None else None
    from alpha.train.launch import train_from_args

    return train_from_args(args, configs)
