"""The three search artifacts, rewritten (atomically) after every generation.

- ``symbio-candidates.jsonl``: one candidate record per line, in creation order.
- ``symbio-search-summary.json``: ``{winner, totalCandidates, generations, config,
  rankedCandidates, ...}`` (pretty-printed).
- ``symbio-search-report.md``: a readable summary: winner, per-generation progress, all candidates.

A killed run therefore still has the state of its last complete generation. Records use the
reference's field names plus ``valLoss``, ``tokensPerSec`` and ``mutationApplied``; non-finite
numbers are written as null, never as "Infinity". Each ``writeReport`` / ``writeCandidates`` /
``writeSummary`` key turns its file off.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpha.events import json_safe
from alpha.symbio.graph import from_json, graph_name

REPORT_FILE = "symbio-search-report.md"
CANDIDATES_FILE = "symbio-candidates.jsonl"
SUMMARY_FILE = "symbio-search-summary.json"


@dataclass
class SearchState:
    """What the artifacts show; built by the search from its candidates (records, plain dicts)."""

    candidates: list[dict[str, Any]]
    winner_id: str | None
    generation: int  # index of the latest evaluated generation
    config: dict[str, Any]  # the SymbioConfig wire form
    rank_by: str
    strategy: str
    finished: bool
    search_steps: int  # optimizer steps spent on candidates so far
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per generation
    timing: dict[str, float] = field(default_factory=dict)  # trainSeconds, searchSeconds

    @property
    def winner(self) -> dict[str, Any] | None:
        return next((c for c in self.candidates if c["id"] == self.winner_id), None)

    def ranked(self) -> list[dict[str, Any]]:
        """Evaluated candidates, newest generation first, best first within a generation."""
        key = "fitnessScore" if self.rank_by == "fitness" else "valLoss"
        sign = -1 if self.rank_by == "fitness" else 1

        def order(c: dict[str, Any]) -> tuple[int, int, float]:
            value = c.get(key)
            return (-c["generation"], value is None, sign * value if value is not None else 0.0)

        return sorted((c for c in self.candidates if c["steps"] > 0), key=order)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _num(value: float | None, digits: int = 4) -> str:
    return "N/A" if value is None else f"{value:.{digits}f}"


def _formula(candidate: dict[str, Any], limit: int = 40) -> str:
    text = graph_name(from_json(candidate["activationGraph"]))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_report(state: SearchState) -> str:
    winner = state.winner
    status = "complete" if state.finished else "in progress"
    lines = [
        "# Symbiogenesis FFN Activation Search Report",
        "",
        f"**Generations:** {state.generation}",
        f"**Total Candidates:** {len(state.candidates)}",
        f"**Strategy:** {state.strategy}",
        f"**Ranked By:** {state.rank_by}",
        f"**Status:** {status} ({state.search_steps:,} search steps)",
        "",
        "## Winner",
        "",
    ]
    if winner is None:
        lines.append("No generation has been evaluated yet.")
    else:
        lines += [
            f"- **Activation:** {_formula(winner, 200)}",
            f"- **Name:** {winner['name']} ({winner['id']})",
            f"- **Best Val Loss:** {_num(winner['valLoss'])}",
            f"- **Fitness Score:** {_num(winner['fitnessScore'])}",
            f"- **Steps Trained:** {winner['steps']}",
            f"- **Generation:** {winner['generation']}",
            f"- **Lineage:** {' → '.join(winner['lineage'])}",
        ]
    if state.history:
        lines += [
            "",
            "## Generations",
            "",
            "| Gen | Candidates | Mutation Rate | Winner | Val Loss | Step |",
            "|---|---|---|---|---|---|",
        ]
        for entry in state.history:
            lines.append(
                f"| {entry['generation']} | {entry['population']} | {entry['mutationRate']:.3f} "
                f"| {entry['winnerName']} | {_num(entry['bestValLoss'])} | {entry['step']} |"
            )
    lines += [
        "",
        "## All Candidates",
        "",
        "| Rank | Name | Activation | Gen | Parent | Mutation | Val Loss | Fitness | Steps | tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rank_in_gen: dict[int, int] = {}
    for c in state.ranked():
        rank_in_gen[c["generation"]] = rank_in_gen.get(c["generation"], 0) + 1
        tps = c.get("tokensPerSec")
        lines.append(
            f"| {rank_in_gen[c['generation']]} | {c['name']} | {_formula(c)} | {c['generation']} "
            f"| {c['parentName'] or '-'} | {c['mutationApplied'] or '-'} | {_num(c['valLoss'])} "
            f"| {_num(c['fitnessScore'])} | {c['steps']} | {'N/A' if tps is None else f'{tps:,.0f}'} |"
        )
    return "\n".join(lines) + "\n"


def summary(state: SearchState) -> dict[str, Any]:
    return json_safe(
        {
            "winner": state.winner,
            "totalCandidates": len(state.candidates),
            "generations": state.generation,
            "finished": state.finished,
            "searchSteps": state.search_steps,
            "rankedBy": state.rank_by,
            "config": state.config,
            "history": state.history,
            "timing": state.timing,
            "rankedCandidates": state.ranked(),
        }
    )


def write_artifacts(run_dir: str | Path, state: SearchState) -> list[Path]:
    """Write the enabled artifacts; returns the paths written."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if state.config.get("writeCandidates", True):
        path = run_dir / CANDIDATES_FILE
        text = "".join(json.dumps(json_safe(c), ensure_ascii=False) + "\n" for c in state.candidates)
        _write_atomic(path, text)
        written.append(path)
    if state.config.get("writeSummary", True):
        path = run_dir / SUMMARY_FILE
        _write_atomic(path, json.dumps(summary(state), indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    if state.config.get("writeReport", True):
        path = run_dir / REPORT_FILE
        _write_atomic(path, render_report(state))
        written.append(path)
    return written
