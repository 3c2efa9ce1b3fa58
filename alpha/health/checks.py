"""The five health checks of a training run, as pure functions of a ``RunHistory``.

The seed tells its users to kill and diagnose a run when its log shows one of five signs: a crash,
gradient instability (>25% of steps skipped or with NaN grad_norm), overfitting (val loss rising
while train loss drops), a plateau (no improvement for 2000+ steps) or symbio stagnation (CUSUM
"throughput collapse" on every step and no candidate improving). Each check here returns a
``Finding`` whose status is ``fired``, ``ok`` or ``not_enough_data``: a check never guesses from
too little evidence. Thresholds default to the seed's values and are all parameters.

Trends are regression slopes with a t-statistic and a magnitude threshold, never a comparison of
two points, so a noisy curve does not fire and a short run says "not enough data".
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from alpha.health.history import RunHistory

OK, FIRED, NOT_ENOUGH_DATA = "ok", "fired", "not_enough_data"


@dataclass(frozen=True)
class Thresholds:
    """Every number a check compares against. Defaults are the seed's thresholds."""

    instability_pct: float = 25.0  # seed: ">25% of steps showing spike skips or NaN grad_norm"
    instability_window: int = 500  # steps in the "recent" window
    instability_min_steps: int = 50  # fewer steps than this: not enough data
    overfit_evals: int = 6  # recent evals regressed (the reference's trend uses 6)
    overfit_min_evals: int = 4
    overfit_t: float = 3.0  # t-statistic both slopes must reach
    overfit_min_rise: float = 0.02  # nats the fitted val loss must rise across the window
    plateau_steps: int = 2000  # seed: "loss stuck for 2000+ steps"
    plateau_smooth: int = 250  # steps of the trailing mean that smooths train loss
    plateau_min_improvement: float = 0.005  # relative improvement that counts as progress
    symbio_window: int = 500  # steps in which CUSUM alarms are counted
    symbio_alarm_pct: float = 90.0  # "on (nearly) every step"
    symbio_generations: int = 3  # recent generations that must fail to improve


@dataclass(frozen=True)
class Finding:
    """One check's verdict with the numbers behind it."""

    check: str
    status: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    advice: str = ""

    @property
    def fired(self) -> bool:
        return self.status == FIRED

    @property
    def title(self) -> str:
        return TITLES[self.check]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TITLES = {
    "crash": "crash",
    "instability": "gradient instability",
    "overfitting": "overfitting",
    "plateau": "plateau",
    "symbio_stagnation": "symbio stagnation",
}

ADVICE = {
    "crash": (
        "Read the traceback (or the last lines of the log) for the cause, fix it, and relaunch; "
        "`alpha train --resume latest` continues from the last checkpoint, so at most one "
        "checkpoint interval of training is lost."
    ),
    "instability": (
        "Too many updates are skipped. Lower --lr (the seed trains at 5e-5) or lengthen --warmup, "
        "keep --grad-clip 1.0, try --dtype fp32 if mixed precision overflows, and look at the data "
        "around the first skipped steps for a bad batch. Relaunch from the last healthy checkpoint."
    ),
    "overfitting": (
        "The model is memorising the training text. The best-val checkpoint is kept: use it. Next "
        "run: more or more varied data, a higher --dropout (0.1-0.2) or --weight-decay, a smaller "
        "model (--dim/--layers), or fewer --iters."
    ),
    "plateau": (
        "More steps will not help this run. If the learning rate is tiny (the seed's 5e-5) or has "
        "decayed to --lr-min, raise --lr; otherwise the model is too small for the data (raise "
        "--dim/--layers/--block) or the data too small for the model. Kill it and relaunch."
    ),
    "symbio_stagnation": (
        "The activation search is stuck: CUSUM flags a throughput shift on nearly every step (the "
        "reference's one-sided test also fires when throughput goes up, e.g. a faster candidate) "
        "and no recent candidate beats the best val loss. Adjust the symbio config (raise "
        "cusumSensitivity or cusumBaselineWindow, raise mutationRate or stepsPerCandidate, widen "
        "basisPool), or end the search and keep training the winner."
    ),
}


def _finding(check: str, status: str, summary: str, /, **evidence: Any) -> Finding:
    return Finding(check, status, summary, evidence, ADVICE[check])


def _pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def linear_fit(xs: list[int] | list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys over xs and its t-statistic (slope / standard error)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 3 or sxx == 0:
        return 0.0, 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(residual / (n - 2) / sxx)
    if se == 0:
        return slope, math.copysign(math.inf, slope) if slope else 0.0
    return slope, slope / se


# ---- crash ---------------------------------------------------------------------------------


def check_crash(h: RunHistory, t: Thresholds) -> Finding:
    """The run died: a traceback or a non-zero exit in the log, or no end event and no live process."""
    end = h.ending
    if h.last_step is None:
        at = "before its first step"
    else:
        at = f"at step {h.last_step}" + (f"/{h.total_iters}" if h.total_iters else "")
    if end.traceback:
        return _finding(
            "crash",
            FIRED,
            f"the run died with an exception: {end.traceback[-1].strip()}",
            traceback=end.traceback,
            last_step=h.last_step,
        )
    if end.exit_code not in (None, 0):
        return _finding(
            "crash",
            FIRED,
            f"the process exited with code {end.exit_code}: {end.exit_line.strip()}",
            exit_code=end.exit_code,
            last_step=h.last_step,
        )
    if end.status == "failed":
        return _finding(
            "crash",
            FIRED,
            f"training failed at step {end.end_step}: {end.reason or 'no reason given'}",
            status=end.status,
            reason=end.reason,
            end_step=end.end_step,
        )
    if end.status is not None:
        what = {
            "completed": "completed",
            "interrupted": "was interrupted",
            "unhealthy": "was stopped by the watchdog",
        }.get(end.status, end.status)
        summary = f"the run {what} at step {end.end_step}"
        return _finding(
            "crash",
            OK,
            summary + (f": {end.reason}" if end.reason else ""),
            status=end.status,
            end_step=end.end_step,
        )
    if end.process == "running":
        return _finding(
            "crash",
            OK,
            f"still running (pid {end.pid}), {at}",
            pid=end.pid,
            last_step=h.last_step,
        )
    if end.process == "elsewhere":
        return _finding(
            "crash",
            NOT_ENOUGH_DATA,
            f"no end recorded; train.pid names pid {end.pid} on host {end.host}, which cannot be "
            "checked from here",
            pid=end.pid,
            host=end.host,
            last_step=h.last_step,
        )
    if not end.observable and end.process != "dead":
        return _finding(
            "crash",
            NOT_ENOUGH_DATA,
            f"no end recorded ({at}); without events.jsonl and train.pid a run still going "
            "cannot be told from a killed one",
            last_step=h.last_step,
        )
    why = f" and train.pid names dead pid {end.pid}" if end.process == "dead" else ""
    return _finding(
        "crash",
        FIRED,
        f"the run stopped {at} without a training_complete event{why}",
        last_step=h.last_step,
        total_iters=h.total_iters,
        pid=end.pid,
    )


# ---- gradient instability ------------------------------------------------------------------


def check_instability(h: RunHistory, t: Thresholds) -> Finding:
    """More than ``instability_pct``% of steps skipped (spike/nonfinite) or with NaN grad_norm."""
    n = h.step_count
    if n < t.instability_min_steps:
        return _finding(
            "instability", NOT_ENOUGH_DATA, f"{n} steps recorded; needs {t.instability_min_steps}", steps=n
        )
    assert h.first_step is not None and h.last_step is not None
    bad = len(h.bad_steps)
    lo = max(h.first_step, h.last_step - t.instability_window + 1)
    window_steps = h.last_step - lo + 1
    window_bad = h.bad_since(lo)
    pct, window_pct = _pct(bad, n), _pct(window_bad, window_steps)
    kinds = ", ".join(f"{c} {k}" for k, c in sorted(h.bad_counts.items())) or "none"
    evidence = dict(
        steps=n,
        bad_steps=bad,
        bad_pct=round(pct, 2),
        kinds=dict(h.bad_counts),
        window=[lo, h.last_step],
        window_bad_steps=window_bad,
        window_bad_pct=round(window_pct, 2),
        first_bad_steps=h.bad_steps[:5],
        last_bad_steps=h.bad_steps[-5:],
        threshold_pct=t.instability_pct,
    )
    text = f"{pct:.1f}% of steps skipped or non-finite in the whole run ({bad} of {n}: {kinds})"
    if lo > h.first_step:
        text += f"; {window_pct:.1f}% in the last {window_steps} steps ({lo}-{h.last_step})"
    fired = pct > t.instability_pct or (
        window_steps >= t.instability_min_steps and window_pct > t.instability_pct
    )
    return _finding("instability", FIRED if fired else OK, text, **evidence)


# ---- overfitting ---------------------------------------------------------------------------

MAX_EVALS_SINCE_BEST = 64  # bounds the live cost of the since-best trend


def check_overfitting(h: RunHistory, t: Thresholds) -> Finding:
    """Val loss rising while train loss drops: over the recent evals, or since the best val loss.

    The first catches overfitting as it starts (the live case); the second a finished run whose
    val loss rose and then levelled off above its best. Both need a significant regression slope
    of val loss (t-statistic and total rise) and of train loss, so wiggles do not fire.
    """
    n = len(h.eval_steps)
    k = min(n, t.overfit_evals)
    if k < t.overfit_min_evals:
        return _finding(
            "overfitting", NOT_ENOUGH_DATA, f"{n} evals recorded; needs {t.overfit_min_evals}", evals=n
        )
    recent = _val_trend(h, n - k, t, f"over the last {k} evals")
    if recent is None:
        return _finding("overfitting", NOT_ENOUGH_DATA, "too few train-loss points between the recent evals")
    fired, text, evidence = recent
    best = h.eval_prefix_argmin[-1]
    first = max(best + 1, n - MAX_EVALS_SINCE_BEST)
    if not fired and n - first >= t.overfit_min_evals:
        since = _val_trend(
            h,
            first,
            t,
            f"over the {n - first} evals since its best {h.eval_vals[best]:.4f} at step {h.eval_steps[best]}",
        )
        if since is not None and since[0]:
            fired, text, evidence = since
            evidence.update(best_val=round(h.eval_vals[best], 4), best_val_step=h.eval_steps[best])
    return _finding("overfitting", FIRED if fired else OK, text, **evidence)


def _val_trend(h: RunHistory, first: int, t: Thresholds, label: str) -> tuple[bool, str, dict] | None:
    """Fit val loss over evals ``first``.. and train loss over the same steps."""
    xs, ys = h.eval_steps[first:], h.eval_vals[first:]
    lo, hi = xs[0], xs[-1]
    train_x, train_y = h.loss_points(lo, hi)
    if len(train_x) < 3:
        return None
    val_slope, val_t = linear_fit(xs, ys)
    train_slope, train_t = linear_fit(train_x, train_y)
    span = hi - lo
    val_rise = val_slope * span
    width = max(1, min(h.smooth_width, span // max(1, len(xs) - 1)))
    train_lo, train_hi = h.smoothed_loss(lo, width), h.smoothed_loss(hi, width)
    gap_lo = ys[0] - train_lo if train_lo is not None else None
    gap_hi = ys[-1] - train_hi if train_hi is not None else None
    evidence = dict(
        window=[lo, hi],
        evals=len(xs),
        val_losses=[round(v, 4) for v in ys[-12:]],
        val_slope=val_slope,
        val_t=round(val_t, 2),
        val_rise=round(val_rise, 4),
        train_slope=train_slope,
        train_t=round(train_t, 2),
        train_change=round(train_slope * span, 4),
        gap_start=None if gap_lo is None else round(gap_lo, 4),
        gap_end=None if gap_hi is None else round(gap_hi, 4),
    )
    gaps = (
        f"; gap val-train {gap_lo:.3f} -> {gap_hi:.3f}" if gap_lo is not None and gap_hi is not None else ""
    )
    text = (
        f"{label} (steps {lo}-{hi}) val loss slope {val_slope:+.2e}/step "
        f"(t={val_t:.1f}, {val_rise:+.3f} across the window), train loss slope "
        f"{train_slope:+.2e}/step (t={train_t:.1f}){gaps}"
    )
    val_rising = val_t >= t.overfit_t and val_rise >= t.overfit_min_rise
    return val_rising and train_slope < 0 and train_t <= -t.overfit_t, text, evidence


# ---- plateau -------------------------------------------------------------------------------


def check_plateau(h: RunHistory, t: Thresholds) -> Finding:
    """Smoothed train loss (and val loss, where present) not improved for ``plateau_steps``."""
    if h.last_step is None:
        return _finding("plateau", NOT_ENOUGH_DATA, "no steps recorded")
    boundary = h.last_step - t.plateau_steps
    before = h.best_smoothed_until(boundary)
    if before is None:
        need = t.plateau_steps + h.smooth_width
        return _finding(
            "plateau",
            NOT_ENOUGH_DATA,
            f"{h.step_count} steps of train loss recorded; needs {need}",
            steps=h.step_count,
            needed=need,
        )
    best_before, best_before_step = before
    xs, _ = h.loss_points(boundary + 1, h.last_step)
    recent = [s for s in (h.smoothed_loss(x, h.smooth_width) for x in xs) if s is not None]
    if not recent:
        return _finding("plateau", NOT_ENOUGH_DATA, f"no train loss after step {boundary}")
    best_recent = min(recent)
    margin = t.plateau_min_improvement * abs(best_before)
    train_improved = best_before - best_recent >= margin
    best_ever = h.best_smoothed_until(h.last_step)
    since = best_ever[1] if best_ever else best_before_step

    evidence: dict[str, Any] = dict(
        window=[boundary + 1, h.last_step],
        smooth_width=h.smooth_width,
        best_train_before=round(best_before, 4),
        best_train_before_step=best_before_step,
        best_train_in_window=round(best_recent, 4),
        needed_improvement=round(margin, 4),
        best_step=since,
    )
    gain = (best_before - best_recent) / abs(best_before) if best_before else 0.0
    text = (
        f"smoothed train loss: best {best_before:.4f} up to step {boundary}, "
        f"best {best_recent:.4f} in the last {t.plateau_steps} steps "
        f"({gain:+.1%}, progress needs {t.plateau_min_improvement:.1%})"
    )
    val_improved = None
    i = bisect_right(h.eval_steps, boundary)
    if 0 < i < len(h.eval_steps):
        val_before, val_recent = h.eval_prefix_min[i - 1], min(h.eval_vals[i:])
        val_improved = val_before - val_recent >= t.plateau_min_improvement * abs(val_before)
        evidence.update(best_val_before=round(val_before, 4), best_val_in_window=round(val_recent, 4))
        text += f"; val loss best {val_before:.4f} before, {val_recent:.4f} since"
    fired = not train_improved and not val_improved
    if fired:
        text = f"loss has not improved in the last {t.plateau_steps} steps: " + text
    return _finding("plateau", FIRED if fired else OK, text, **evidence)


# ---- symbio stagnation ---------------------------------------------------------------------


def check_symbio_stagnation(h: RunHistory, t: Thresholds) -> Finding:
    """CUSUM throughput-collapse alarms on nearly every recent step, and no candidate improving."""
    if not h.symbio:
        return _finding("symbio_stagnation", OK, "not a symbio run (no CUSUM fields or generations)")
    if h.step_count < t.symbio_window:
        return _finding(
            "symbio_stagnation",
            NOT_ENOUGH_DATA,
            f"{h.step_count} steps recorded; needs {t.symbio_window}",
            steps=h.step_count,
        )
    assert h.last_step is not None
    lo = h.last_step - t.symbio_window + 1
    alarms = h.alarms_between(lo, h.last_step)
    alarm_pct = _pct(alarms, t.symbio_window)
    evidence: dict[str, Any] = dict(
        window=[lo, h.last_step],
        alarm_steps=alarms,
        alarm_pct=round(alarm_pct, 2),
        generations=len(h.generations),
    )
    alarm_text = f"CUSUM throughput-collapse alarm on {alarm_pct:.0f}% of steps {lo}-{h.last_step}"
    if alarm_pct < t.symbio_alarm_pct:
        return _finding("symbio_stagnation", OK, alarm_text, **evidence)
    g = t.symbio_generations
    if len(h.generations) <= g:
        return _finding(
            "symbio_stagnation",
            NOT_ENOUGH_DATA,
            f"{alarm_text}, but only {len(h.generations)} generations recorded; needs {g + 1} "
            "to tell whether candidates still improve",
            **evidence,
        )
    best_before = h.generations[-g - 1].best_so_far
    recent_gens = h.generations[-g:]
    recent = [gen.best_candidate for gen in recent_gens if gen.best_candidate is not None]
    if best_before is None or not recent:
        return _finding(
            "symbio_stagnation",
            NOT_ENOUGH_DATA,
            f"{alarm_text}, but the generations carry no candidate val losses",
            **evidence,
        )
    best_recent = min(recent)
    evidence.update(
        recent_generations=[gen.generation for gen in recent_gens],
        recent_candidates=sum(gen.candidates for gen in recent_gens),
        best_val_before=round(best_before, 4),
        best_val_recent=round(best_recent, 4),
    )
    improved = best_recent < best_before
    text = (
        f"{alarm_text}; best candidate val loss of generations "
        f"{recent_gens[0].generation}-{recent_gens[-1].generation}: {best_recent:.4f} vs "
        f"{best_before:.4f} before ({'improved' if improved else 'no improvement'})"
    )
    return _finding("symbio_stagnation", OK if improved else FIRED, text, **evidence)


CHECKS: dict[str, Callable[[RunHistory, Thresholds], Finding]] = {
    "crash": check_crash,
    "instability": check_instability,
    "overfitting": check_overfitting,
    "plateau": check_plateau,
    "symbio_stagnation": check_symbio_stagnation,
}
LIVE_CHECKS = ("instability", "overfitting", "plateau", "symbio_stagnation")  # crash: offline only


def run_checks(
    h: RunHistory, t: Thresholds | None = None, names: tuple[str, ...] = tuple(CHECKS)
) -> list[Finding]:
    """Run the named checks (all five by default)."""
    t = t or Thresholds()
    return [CHECKS[name](h, t) for name in names]
