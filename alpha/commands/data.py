"""``alpha data``: corpus utilities. ``synth`` writes the bundled synthetic chat corpus."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from alpha.errors import ConfigError

HELP = "corpus utilities (synth: make the bundled synthetic chat corpus)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(p))
    sub.required = True
    synth = sub.add_parser("synth", help="write a deterministic synthetic chat corpus")
    synth.add_argument("--out", required=True, help="output file")
    synth.add_argument("--conversations", type=int, default=30000, help="number of conversations")
    synth.add_argument("--seed", type=int, default=1234, help="generator seed")


def run(args: argparse.Namespace) -> int:
    from alpha.data.synth import synth_chat

    if args.conversations <= 0:
        raise ConfigError("--conversations must be > 0")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    lines = synth_chat(args.conversations, args.seed)
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    sys.stdout.write(f"wrote {len(lines)} conversations ({out.stat().st_size:,} bytes) to {out}\n")
    return 0
