"""``alpha sample``: generate text from any checkpoint (its tokenizer and activation travel in it)."""

from __future__ import annotations

import argparse
import sys

HELP = "generate text from a checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or a run directory (its latest)")
    p.add_argument("--prompt", default=None, help="prompt text (chat checkpoints: wrapped as a user turn)")
    p.add_argument("--raw", action="store_true", help="use the prompt exactly, without the chat wrapping")
    p.add_argument("--steps", type=int, default=200, help="max new tokens")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (<= 0: greedy)")
    p.add_argument("--top-k", "--topk", type=int, default=40, help="top-k (0: off)")
    p.add_argument("--top-p", "--topp", type=float, default=1.0, help="nucleus mass (1: off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alpha.errors import ConfigError
    from alpha.train.checkpoint_files import find_checkpoint

    # the arguments and the checkpoint's path are checked before torch is imported (seconds)
    if args.steps <= 0:
        raise ConfigError("--steps must be > 0")
    path = find_checkpoint(Path(args.checkpoint), "--checkpoint")

    import torch

    from alpha.config import ModelConfig, domain_for
    from alpha.data.tokenizer import load_tokenizer
    from alpha.model.gpt import GPT
    from alpha.train.checkpoint import load_checkpoint
    from alpha.train.sampling import generate

    ckpt = load_checkpoint(path)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is available")
    device = torch.device(args.device)
    tokenizer = load_tokenizer(ckpt.meta["tokenizer"])
    model_cfg = ModelConfig.from_wire(ckpt.meta["modelConfig"])
    model = GPT(model_cfg)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as exc:
        raise ConfigError(
            f"{path}: weights do not match its model config ({str(exc).splitlines()[0]})"
        ) from None
    model.to(device)
    domain_name = ckpt.meta.get("domain", "text")
    domain = domain_for(domain_name)
    prompt = args.prompt if args.prompt is not None else domain.prompts[0]
    text = prompt if args.raw else domain.format_prompt(prompt)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    ids = generate(
        model,
        tokenizer.encode(text),
        args.steps,
        temperature=args.temp,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_id=tokenizer.eot_id,
        generator=gen,
    )
    sys.stdout.write(f"checkpoint: {path} (step {ckpt.step})\n---\n{text}{tokenizer.decode(ids)}\n")
    return 0
