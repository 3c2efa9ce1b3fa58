"""Render findings: a short human report (verdict first, then evidence, then advice) or JSON."""

from __future__ import annotations

import json
from typing import Any

from alpha.health.checks import FIRED, NOT_ENOUGH_DATA, Finding
from alpha.health.history import RunHistory
from alpha.health.records import Source

STATUS_LABEL = {FIRED: "FIRED", "ok": "ok", NOT_ENOUGH_DATA: "not enough data"}
# evidence keys shown in the human report (the JSON report has all of them)
SHOWN_EVIDENCE = {
    "instability": ("first_bad_steps", "last_bad_steps", "kinds"),
    "overfitting": ("val_losses", "gap_start", "gap_end"),
    "plateau": ("best_step", "best_train_before_step", "needed_improvement"),
    "symbio_stagnation": ("recent_generations", "recent_candidates"),
    "crash": ("pid", "host", "reason"),
}


def verdict(findings: list[Finding]) -> str:
    fired = [f.title for f in findings if f.fired]
    if fired:
        return f"UNHEALTHY: {', '.join(fired)}"
    missing = sum(f.status == NOT_ENOUGH_DATA for f in findings)
    return "HEALTHY: no check fired" + (f" ({missing} without enough data)" if missing else "")


def describe_source(history: RunHistory, source: Source) -> str:
    steps = "no steps"
    if history.last_step is not None:
        of = f" of {history.total_iters}" if history.total_iters else ""
        steps = f"steps {history.first_step}-{history.last_step}{of}"
    evals = f", {len(history.eval_steps)} evals" if history.eval_steps else ""
    gens = f", {len(history.generations)} symbio generations" if history.generations else ""
    bad = f", {source.bad_lines} unreadable lines skipped" if source.bad_lines else ""
    return f"{source.path} ({source.kind}): {steps}{evals}{gens}{bad}"


def _evidence_line(finding: Finding) -> str:
    keys = SHOWN_EVIDENCE.get(finding.check, ())
    parts = [f"{k}={finding.evidence[k]}" for k in keys if finding.evidence.get(k) not in (None, [], {})]
    return ", ".join(parts)


def format_report(findings: list[Finding], history: RunHistory, source: Source) -> str:
    lines = [verdict(findings), f"  {describe_source(history, source)}", ""]
    for finding in sorted(findings, key=lambda f: not f.fired):
        if finding.fired:
            lines.append(f"{finding.title}: FIRED")
            lines.append(f"  {finding.summary}")
            if finding.check == "crash" and finding.evidence.get("traceback"):
                lines += [f"  | {line}" for line in finding.evidence["traceback"]]
            detail = _evidence_line(finding)
            if detail:
                lines.append(f"  evidence: {detail}")
            lines.append(f"  advice: {finding.advice}")
            lines.append("")
        else:
            lines.append(f"{finding.title + ':':<22}{STATUS_LABEL[finding.status]:<17}{finding.summary}")
    return "\n".join(lines).rstrip() + "\n"


def to_json(findings: list[Finding], history: RunHistory, source: Source) -> str:
    doc: dict[str, Any] = {
        "path": source.path,
        "source": source.kind,
        "files": source.files,
        "healthy": not any(f.fired for f in findings),
        "verdict": verdict(findings),
        "firstStep": history.first_step,
        "lastStep": history.last_step,
        "totalIters": history.total_iters,
        "findings": [f.to_dict() for f in findings],
    }
    return json.dumps(doc, indent=2, default=str)
