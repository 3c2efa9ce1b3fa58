"""``RunHistory``: the compact state the health checks read, folded from step records and events.

Every update is O(1) amortised, so the watchdog can keep one per run and the offline reader can
fold 50,000 steps in a fraction of a second. The checks never scan the whole run: they read
running counters, sorted step lists (windows by bisection) and prefix sums/minima.

Train loss is kept as bucket means (``BUCKET`` steps each) with prefix sums, so a trailing mean of
any width is two subtractions. A record whose step is not after the last one means the run was
resumed from an earlier checkpoint: the history rewinds to that step, as the resumed run's own
records replace the lost tail.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any

BUCKET = 10  # steps per train-loss bucket
TRACEBACK_TAIL = 8  # last lines of a traceback kept as evidence
THROUGHPUT_COLLAPSE_BIT = 0x04  # reference cusum_alerts bit of the tokens/s monitor


def finite(value: Any) -> float | None:
    """The value as a float when it is a finite number, else None (null, NaN, strings...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Generation:
    """One finished symbio generation: its best candidate val loss and the running best."""

    step: int
    generation: int
    candidates: int
    best_candidate: float | None  # lowest val loss among this generation's candidates
    best_reported: float | None  # the event's own bestValLoss
    best_so_far: float | None  # lowest of both over this and every earlier generation


@dataclass
class RunEnding:
    """How the run ended, as far as the sources tell (filled by the readers, not by steps)."""

    observable: bool = False  # events.jsonl or a run log was read: an end would have been seen
    status: str | None = None  # completed | interrupted | unhealthy | failed | None (no end seen)
    reason: str = ""
    end_step: int | None = None
    process: str | None = None  # running | dead | elsewhere | None (no train.pid)
    pid: int | None = None
    host: str | None = None
    traceback: list[str] = field(default_factory=list)
    exit_code: int | None = None
    exit_line: str = ""


class RunHistory:
    """Steps, evals, guard skips, CUSUM alarms and symbio generations of one run."""

    def __init__(self, smooth_width: int = 250) -> None:
        self.smooth_width = smooth_width  # steps of the trailing mean behind "smoothed loss"
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.total_iters: int | None = None
        self.records = 0
        self._last_record: int | None = None  # step of the last add_step record
        self.ending = RunEnding()
        # guard skips: sorted steps, their kind ("spike" / "nonfinite"), counts per kind
        self.bad_steps: list[int] = []
        self.bad_kinds: list[str] = []
        self.bad_counts: dict[str, int] = {}
        # train loss buckets (only non-empty ones), prefix sums, smoothed prefix minimum
        self.bucket_ends: list[int] = []
        self._cum_sum: list[float] = [0.0]
        self._cum_n: list[int] = [0]
        self._open_bucket: int | None = None
        self._open_sum = 0.0
        self._open_n = 0
        # per closed bucket: the lowest smoothed loss so far and the step where it was reached
        # (inf while the trailing window still reaches before the first step)
        self.smooth_min: list[float] = []
        self.smooth_min_step: list[int] = []
        # evals: steps, val losses, prefix minimum of val loss
        self.eval_steps: list[int] = []
        self.eval_vals: list[float] = []
        self.eval_prefix_min: list[float] = []
        self.eval_prefix_argmin: list[int] = []  # index of the best eval so far
        # symbio
        self.symbio = False
        self.alarm_steps: list[int] = []
        self.generations: list[Generation] = []

    # ---- folding --------------------------------------------------------------------------

    def add_step(self, record: dict[str, Any]) -> None:
        """Fold one metrics.jsonl record (reference field names)."""
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            return
        if self._last_record is not None and step <= self._last_record:
            self.rewind(step)
        if self.first_step is None or step < self.first_step:
            self.first_step = step
        self.last_step = max(step, self.last_step or step)
        self._last_record = step
        self.records += 1

        loss = finite(record.get("loss"))
        skipped = record.get("skipped")
        if skipped:
            self.mark_bad(step, skipped if isinstance(skipped, str) else "nonfinite")
        elif loss is None or ("gradNorm" in record and finite(record["gradNorm"]) is None):
            self.mark_bad(step, "nonfinite")
        if loss is not None:
            self.add_loss(step, loss)

        val = finite(record.get("valLoss", record.get("val_loss")))
        if val is not None:
            self.add_eval(step, val)

        if "cusum_alerts" in record:
            self.symbio = True
            alerts = record.get("cusum_alerts")
            reason = record.get("cusum_alert_reason")
            if (isinstance(alerts, int) and alerts & THROUGHPUT_COLLAPSE_BIT) or (
                isinstance(reason, str) and "throughput collapse" in reason
            ):
                self.alarm_steps.append(step)

    def add_event(self, record: dict[str, Any]) -> None:
        """Fold one events.jsonl record ``{step, level, kind, message, payload, timestamp}``."""
        kind = record.get("kind")
        payload = record.get("payload") or {}
        step = record.get("step") if isinstance(record.get("step"), int) else self.last_step or 0
        if kind in ("training_started", "run_resumed"):
            iters = payload.get("totalIters")
            if isinstance(iters, int) and iters > 0:
                self.total_iters = iters
            # a new start supersedes an earlier end (a resumed run)
            self.ending.status, self.ending.reason, self.ending.end_step = None, "", None
            self.ending.traceback = []
        elif kind == "training_complete":
            self.ending.status = payload.get("status") or "completed"
            self.ending.reason = payload.get("reason") or ""
            self.ending.end_step = step
        elif kind == "exception":  # the trainer's record of an uncaught exception
            lines = str(record.get("message") or "").rstrip().splitlines()
            self.ending.traceback = lines[-TRACEBACK_TAIL:]
        elif kind == "eval_summary":
            # metrics.jsonl carries the same evals as valLoss fields (and is read first); an eval
            # event only adds what they lack, never rewinds them
            val = finite(payload.get("valLoss"))
            if val is not None and (not self.eval_steps or step > self.eval_steps[-1]):
                self.add_eval(step, val)
        elif kind == "symbio_generation":
            self.add_generation(step, payload)

    def add_loss(self, step: int, loss: float) -> None:
        bucket = (step - 1) // BUCKET
        if self._open_bucket is not None and bucket != self._open_bucket:
            self._close_bucket()
        self._open_bucket = bucket
        self._open_sum += loss
        self._open_n += 1
        if step % BUCKET == 0:
            self._close_bucket()

    def add_eval(self, step: int, val: float) -> None:
        if self.eval_steps and step <= self.eval_steps[-1]:
            if step == self.eval_steps[-1]:
                return  # the same eval seen twice
            self._truncate_evals(step)  # a resumed run re-evaluates from an earlier step
        self.eval_steps.append(step)
        self.eval_vals.append(val)
        prev = self.eval_prefix_min[-1] if self.eval_prefix_min else math.inf
        best_index = self.eval_prefix_argmin[-1] if val >= prev else len(self.eval_vals) - 1
        self.eval_prefix_min.append(min(prev, val))
        self.eval_prefix_argmin.append(best_index)

    def add_generation(self, step: int, payload: dict[str, Any]) -> None:
        self.symbio = True
        values = []
        candidates = payload.get("candidates") or []
        for cand in candidates:
            if isinstance(cand, dict):
                values += [finite(cand.get("valLoss")), finite(cand.get("bestValLoss"))]
        values = [v for v in values if v is not None]
        generation = payload.get("generation")
        reported = finite(payload.get("bestValLoss"))
        known = [v for v in (min(values) if values else None, reported) if v is not None]
        if self.generations and self.generations[-1].best_so_far is not None:
            known.append(self.generations[-1].best_so_far)
        self.generations.append(
            Generation(
                step=step,
                generation=generation if isinstance(generation, int) else len(self.generations),
                candidates=len(candidates),
                best_candidate=min(values) if values else None,
                best_reported=reported,
                best_so_far=min(known) if known else None,
            )
        )

    def mark_bad(self, step: int, kind: str) -> None:
        """Record a skipped step, in any order (a log's notice may precede its step line)."""
        i = bisect_left(self.bad_steps, step)
        if i < len(self.bad_steps) and self.bad_steps[i] == step:
            return  # the same step reported twice (a step line and its notice)
        self.bad_steps.insert(i, step)
        self.bad_kinds.insert(i, kind)
        self.bad_counts[kind] = self.bad_counts.get(kind, 0) + 1
        if self.first_step is None:
            self.first_step = step
        if self.last_step is None or step > self.last_step:
            self.last_step = step

    def _close_bucket(self) -> None:
        if self._open_bucket is None or self._open_n == 0:
            return
        end = (self._open_bucket + 1) * BUCKET
        self.bucket_ends.append(end)
        self._cum_sum.append(self._cum_sum[-1] + self._open_sum)
        self._cum_n.append(self._cum_n[-1] + self._open_n)
        self._open_bucket, self._open_sum, self._open_n = None, 0.0, 0
        best = self.smooth_min[-1] if self.smooth_min else math.inf
        best_step = self.smooth_min_step[-1] if self.smooth_min_step else 0
        smoothed = self.smoothed_loss(end, self.smooth_width)
        full = self.first_step is not None and end - self.smooth_width >= self.first_step - 1
        if full and smoothed is not None and smoothed < best:
            best, best_step = smoothed, end
        self.smooth_min.append(best)
        self.smooth_min_step.append(best_step)

    # ---- rewinding (resume from an earlier checkpoint) ------------------------------------

    def rewind(self, step: int) -> None:
        """Forget everything at or after ``step``."""
        cut = bisect_left(self.bad_steps, step)
        del self.bad_steps[cut:], self.bad_kinds[cut:]
        self.bad_counts = {}
        for kind in self.bad_kinds:
            self.bad_counts[kind] = self.bad_counts.get(kind, 0) + 1
        # buckets: keep those that end before `step`; the partly lost one is dropped
        cut = bisect_left(self.bucket_ends, step)
        del self.bucket_ends[cut:], self._cum_sum[cut + 1 :], self._cum_n[cut + 1 :]
        del self.smooth_min[cut:], self.smooth_min_step[cut:]
        self._open_bucket, self._open_sum, self._open_n = None, 0.0, 0
        self._truncate_evals(step)
        del self.alarm_steps[bisect_left(self.alarm_steps, step) :]
        self.generations = [g for g in self.generations if g.step < step]
        if self.first_step is not None and step > self.first_step:
            self.last_step = self._last_record = step - 1
        else:
            self.first_step = self.last_step = self._last_record = None

    def _truncate_evals(self, step: int) -> None:
        cut = bisect_left(self.eval_steps, step)
        del (
            self.eval_steps[cut:],
            self.eval_vals[cut:],
            self.eval_prefix_min[cut:],
            self.eval_prefix_argmin[cut:],
        )

    # ---- queries (used by the checks) -----------------------------------------------------

    @property
    def step_count(self) -> int:
        if self.first_step is None or self.last_step is None:
            return 0
        return self.last_step - self.first_step + 1

    def bad_since(self, step: int) -> int:
        """Number of bad steps at or after ``step``."""
        return len(self.bad_steps) - bisect_left(self.bad_steps, step)

    def alarms_between(self, lo: int, hi: int) -> int:
        """Alarmed steps in [lo, hi] (a log's alert notices can run ahead of its step lines)."""
        return bisect_right(self.alarm_steps, hi) - bisect_left(self.alarm_steps, lo)

    def loss_points(self, lo: int, hi: int) -> tuple[list[int], list[float]]:
        """(bucket end step, bucket mean loss) for closed buckets ending in [lo, hi]."""
        i, j = bisect_left(self.bucket_ends, lo), bisect_right(self.bucket_ends, hi)
        xs = self.bucket_ends[i:j]
        ys = [
            (self._cum_sum[k + 1] - self._cum_sum[k]) / (self._cum_n[k + 1] - self._cum_n[k])
            for k in range(i, j)
        ]
        return xs, ys

    def best_smoothed_until(self, step: int) -> tuple[float, int] | None:
        """Lowest fully-smoothed train loss of buckets ending at or before ``step``, and where."""
        k = bisect_right(self.bucket_ends, step)
        if k == 0 or not math.isfinite(self.smooth_min[k - 1]):
            return None
        return self.smooth_min[k - 1], self.smooth_min_step[k - 1]

    def smoothed_loss(self, step: int, width: int) -> float | None:
        """Mean train loss over the closed buckets ending in (step - width, step]."""
        j = bisect_right(self.bucket_ends, step)
        i = bisect_right(self.bucket_ends, step - width)
        n = self._cum_n[j] - self._cum_n[i]
        return (self._cum_sum[j] - self._cum_sum[i]) / n if n else None
