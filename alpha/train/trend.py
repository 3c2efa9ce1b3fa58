"""The train/val trend over recent evals, sent with every sample batch (reference ``trend``).

Over the last six evals: ``plateau_likely`` when train and val both moved by less than 1%;
``overfitting_likely`` when train improved by more than 1% while val worsened by more than 0.3%
and the train/val gap grew by more than 0.03.
"""

from __future__ import annotations

from typing import Any

WINDOW = 6


def summarize_trend(history: list[tuple[int, float, float]]) -> dict[str, Any] | None:
    """``history`` is ``[(step, train_loss, val_loss)]`` in step order; None until two evals exist."""
    window = history[-WINDOW:]
    if len(window) < 2:
        return None
    (s0, t0, v0), (s1, t1, v1) = window[0], window[-1]
    train_rel = (t0 - t1) / abs(t0) if t0 else 0.0
    val_rel = (v0 - v1) / abs(v0) if v0 else 0.0
    gap_delta = (v1 - t1) - (v0 - t0)
    plateau = abs(train_rel) < 0.01 and abs(val_rel) < 0.01
    overfitting = train_rel > 0.01 and val_rel < -0.003 and gap_delta > 0.03
    if overfitting:
        summary = "overfitting_likely"
    elif plateau:
        summary = "plateau_likely"
    elif train_rel > 0 and val_rel > 0:
        summary = "improving"
    elif train_rel > 0 >= val_rel:
        summary = "possible_generalization_drift"
    else:
        summary = "unstable_or_regressing"
    return {
        "summary": summary,
        "plateauLikely": plateau,
        "overfittingLikely": overfitting,
        "windowStartStep": s0,
        "windowEndStep": s1,
        "trainLossDelta": t1 - t0,
        "valLossDelta": v1 - v0,
        "gapDelta": gap_delta,
    }
