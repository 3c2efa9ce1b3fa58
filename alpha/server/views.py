"""Shapes stored data for the pages: number formats, and the symbio views of a run.

The symbio views are built from the run's ``symbio_generation`` events (payload
``{generation, candidates, winner, bestValLoss}``): a candidate table, the best and mean val loss
per generation, and a lineage tree laid out in generation columns.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any


def fmt_num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_params(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return str(int(value))


def fmt_bytes(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def fmt_ago(iso: Any, now: datetime | None = None) -> str:
    if not isinstance(iso, str):
        return "—"
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    seconds = ((now or datetime.now(timezone.utc)) - moment).total_seconds()
    if seconds < 60:
        return f"{max(0, int(seconds))}s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)}m ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h ago"
    return f"{int(seconds // 86400)}d ago"


def winner_name(winner: Any) -> str | None:
    if not isinstance(winner, dict):
        return None
    name = winner.get("name") or winner.get("id")
    formula = winner.get("activation")
    if name and formula and formula != name:
        return f"{name} · {formula}"
    return str(name or formula) if (name or formula) else None


def _val(candidate: dict[str, Any]) -> float | None:
    for key in ("bestValLoss", "valLoss"):
        value = candidate.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def symbio_view(generations: list[dict[str, Any]], max_tree_generations: int = 40) -> dict[str, Any] | None:
    """Candidate table rows, per-generation stats and a lineage-tree layout, or None without data."""
    if not generations:
        return None
    candidates: dict[str, dict[str, Any]] = {}
    per_generation = []
    for payload in generations:
        gen = payload["generation"]
        winner = payload.get("winner") if isinstance(payload.get("winner"), dict) else {}
        vals = []
        for raw in payload.get("candidates") or []:
            if not isinstance(raw, dict):
                continue
            cid = str(raw.get("id") or raw.get("name") or f"g{gen}-{len(candidates)}")
            generation = raw.get("generation") if isinstance(raw.get("generation"), int) else gen
            row = {
                "id": cid,
                "name": raw.get("name") or cid,
                "generation": generation,
                "parent_id": None if raw.get("parentId") is None else str(raw.get("parentId")),
                "parent": raw.get("parentName") or raw.get("parentId"),
                "formula": raw.get("activation"),
                "mutation": raw.get("mutationApplied"),
                "val_loss": _val(raw),
                "best_loss": raw.get("bestLoss"),
                "fitness": raw.get("fitnessScore"),
                "tokens_per_sec": raw.get("tokensPerSec"),
                "steps": raw.get("steps"),
                "alive": raw.get("alive"),
                "winner": False,
            }
            candidates[cid] = row
            if row["val_loss"] is not None and generation == gen:
                vals.append(row["val_loss"])
        best = payload.get("bestValLoss")
        if not isinstance(best, (int, float)) or isinstance(best, bool) or not math.isfinite(best):
            best = min(vals) if vals else None
        per_generation.append(
            {
                "generation": gen,
                "best_val_loss": best,
                "mean_val_loss": sum(vals) / len(vals) if vals else None,
                "candidates": len(vals),
                "winner": winner_name(winner),
            }
        )
    latest_winner = generations[-1].get("winner") or {}
    winner_id = str(latest_winner.get("id") or latest_winner.get("name") or "")
    if winner_id in candidates:
        candidates[winner_id]["winner"] = True
    rows = sorted(
        candidates.values(), key=lambda r: (r["generation"], r["val_loss"] is None, r["val_loss"] or 0)
    )
    return {
        "candidates": rows,
        "generations": per_generation,
        "winner": winner_name(latest_winner),
        "tree": lineage_layout(rows, max_tree_generations),
    }


def lineage_layout(rows: list[dict[str, Any]], max_generations: int) -> dict[str, Any]:
    """Node positions (generation columns, one row per candidate) and parent->child edges for SVG."""
    gens = sorted({r["generation"] for r in rows})
    shown = gens[-max_generations:]
    col_w, row_h, pad = 140, 26, 16
    positions: dict[str, tuple[float, float]] = {}
    nodes, height = [], 0
    for col, gen in enumerate(shown):
        members = [r for r in rows if r["generation"] == gen]
        for i, r in enumerate(members):
            x, y = pad + col * col_w, pad + i * row_h
            positions[r["id"]] = (x, y)
            nodes.append({**r, "x": x, "y": y})
            height = max(height, y)
    by_id = {node["id"]: node for node in nodes}
    edges = []
    for node in nodes:
        parent = node["parent_id"]
        if parent in positions and parent != node["id"]:
            px, py = positions[parent]
            label_w = 12 + 6.5 * min(16, len(str(by_id[parent]["name"])))
            edges.append({"x1": px + label_w, "y1": py, "x2": node["x"] - 7, "y2": node["y"]})
    return {
        "nodes": nodes,
        "edges": edges,
        "width": pad * 2 + max(1, len(shown)) * col_w,
        "height": height + pad * 2,
        "hidden_generations": len(gens) - len(shown),
        "columns": [{"generation": g, "x": pad + i * col_w} for i, g in enumerate(shown)],
    }
