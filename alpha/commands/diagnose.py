"""``alpha diagnose PATH``: check a run (directory, metrics.jsonl or train log) for the five
failure signs. Exit 0 when healthy, 1 when a check fires, 2 on unusable input.

Everything it reads is local files under PATH, so a launcher can run it on a remote host as is.
"""

from __future__ import annotations

import argparse
import sys

from alpha.errors import ConfigError

HELP = "diagnose a run: crash, gradient instability, overfitting, plateau, symbio stagnation"

# flag dest -> Thresholds field (defaults are the seed's values, shown in --help)
THRESHOLD_FLAGS = {
    "instability_pct": ("--instability-pct", float, "%% of skipped/non-finite steps that fires"),
    "instability_window": ("--instability-window", int, "steps in the recent instability window"),
    "overfit_evals": ("--overfit-evals", int, "recent evals whose val-loss trend is fitted"),
    "overfit_min_rise": ("--overfit-min-rise", float, "nats the fitted val loss must rise"),
    "overfit_t": ("--overfit-t", float, "t-statistic both loss slopes must reach"),
    "plateau_steps": ("--plateau-steps", int, "steps without improvement that make a plateau"),
    "plateau_smooth": ("--plateau-smooth", int, "steps of the trailing mean of train loss"),
    "plateau_min_improvement": (
        "--plateau-min-improvement",
        float,
        "relative loss improvement that counts as progress",
    ),
    "symbio_window": ("--symbio-window", int, "steps in which CUSUM alarms are counted"),
    "symbio_alarm_pct": ("--symbio-alarm-pct", float, "%% of alarmed steps that counts as every step"),
    "symbio_generations": ("--symbio-generations", int, "recent generations that must not improve"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from alpha.health.checks import Thresholds

    defaults = Thresholds()
    p.add_argument("path", metavar="PATH", help="run directory, metrics.jsonl, or train_*.log")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="N",
        help="recent window in steps for instability and symbio (sets both)",
    )
    g = p.add_argument_group("thresholds")
    for dest, (flag, kind, text) in THRESHOLD_FLAGS.items():
        g.add_argument(
            flag,
            dest=dest,
            type=kind,
            default=None,
            metavar="N" if kind is int else "X",
            help=f"{text} (default {getattr(defaults, dest)})",
        )


def thresholds_from_args(args: argparse.Namespace):
    """Thresholds from the flags given; the seed's values otherwise."""
    from dataclasses import replace

    from alpha.health.checks import Thresholds

    given = {dest: getattr(args, dest) for dest in THRESHOLD_FLAGS if getattr(args, dest, None) is not None}
    for dest, value in given.items():
        if value <= 0 and dest != "overfit_min_rise":
            raise ConfigError(f"{THRESHOLD_FLAGS[dest][0]} must be > 0, got {value}")
    window = getattr(args, "window", None)
    if window is not None:
        if window <= 0:
            raise ConfigError(f"--window must be > 0, got {window}")
        given.setdefault("instability_window", window)
        given.setdefault("symbio_window", window)
    return replace(Thresholds(), **given)


def run(args: argparse.Namespace) -> int:
    from alpha.health.checks import run_checks
    from alpha.health.records import load_run
    from alpha.health.report import format_report, to_json

    thresholds = thresholds_from_args(args)
    try:
        history, source = load_run(args.path, smooth_width=thresholds.plateau_smooth)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot read {args.path}: {exc}") from None
    findings = run_checks(history, thresholds)
    sys.stdout.write(
        to_json(findings, history, source) + "\n" if args.json else format_report(findings, history, source)
    )
    return 1 if any(f.fired for f in findings) else 0
