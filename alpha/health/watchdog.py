"""The watchdog: the health checks of ``alpha diagnose``, run live inside ``alpha train`` as a sink.

It folds every event into a ``RunHistory`` (O(1) amortised per step) and re-runs the checks every
``every`` steps and after each eval or symbio generation, so a step costs a few list appends and
an evaluation costs O(window / bucket), independent of the run's length.

A check that starts firing emits one ``Alert`` (kind ``health_<check>``) for the episode. The
episode ends only once the check has stayed ok for as many steps as its own window, so a loss
hovering at the plateau threshold does not alert again and again; a later firing is a new episode
with a new alert. With ``--on-unhealthy stop`` the first alert also asks the trainer to save a
checkpoint and stop (exit code 3), and the watchdog's last word is one line on stderr saying why.
The crash check is offline only: a live run has not crashed.
"""

from __future__ import annotations

import sys
from typing import TextIO

from alpha.errors import EXIT_UNHEALTHY
from alpha.events import Alert, Event, EventBus, RunEnd, Step
from alpha.health.checks import CHECKS, FIRED, LIVE_CHECKS, OK, Finding, Thresholds
from alpha.health.history import RunHistory

EVALUATE_EVERY = 25  # steps between evaluations (evals and generations trigger one too)
TRIGGER_KINDS = ("eval_summary", "symbio_generation")


class Watchdog:
    """A sink that alerts (and, with ``action="stop"``, stops the run) when a check fires."""

    def __init__(
        self,
        bus: EventBus,
        action: str = "warn",
        thresholds: Thresholds | None = None,
        every: int = EVALUATE_EVERY,
        stream: TextIO | None = None,
    ) -> None:
        if action not in ("warn", "stop"):
            raise ValueError(f"watchdog action must be warn or stop, not {action!r}")
        self.bus = bus
        self.action = action
        self.thresholds = thresholds or Thresholds()
        self.every = every
        self.stream = stream or sys.stderr
        self.history = RunHistory(smooth_width=self.thresholds.plateau_smooth)
        self.firing: dict[str, bool] = {name: False for name in LIVE_CHECKS}
        self._quiet_steps: dict[str, int] = {}  # ok steps that end the current episode
        self._ok_since: dict[str, int | None] = {name: None for name in LIVE_CHECKS}
        self._evals_checked = -1
        self.alerts: list[Finding] = []
        self.stopped_by: Finding | None = None
        self._end: RunEnd | None = None

    def handle(self, event: Event) -> None:
        if isinstance(event, Step):
            self.history.add_step(event.metrics)
            step = self.history.last_step or 0
            if step % self.every == 0 or "valLoss" in event.metrics:
                self.evaluate(step)
        elif isinstance(event, RunEnd):
            self._end = event
        elif isinstance(event, Alert) and event.kind.startswith("health_"):
            return  # our own alert coming back through the bus
        else:
            record = event.to_record()
            self.history.add_event(record)
            if event.kind in TRIGGER_KINDS:
                self.evaluate(event.step)

    def evaluate(self, step: int) -> list[Finding]:
        """Run the live checks; alert on each check that has just started firing."""
        evals = len(self.history.eval_steps)
        # overfitting reads eval windows only, so its verdict can change only with a new eval
        names = [n for n in LIVE_CHECKS if n != "overfitting" or evals != self._evals_checked]
        self._evals_checked = evals
        findings = [CHECKS[name](self.history, self.thresholds) for name in names]
        for finding in findings:
            name = finding.check
            if finding.status == FIRED:
                self._ok_since[name] = None
                if not self.firing[name]:
                    self.firing[name] = True
                    window = finding.evidence.get("window")
                    self._quiet_steps[name] = window[1] - window[0] + 1 if window else self.every
                    self._alert(step, finding)
            elif finding.status == OK and self.firing[name]:
                since = self._ok_since[name]
                if since is None:
                    self._ok_since[name] = step
                elif step - since >= self._quiet_steps[name]:
                    self.firing[name], self._ok_since[name] = False, None  # the episode is over
        return findings

    def _alert(self, step: int, finding: Finding) -> None:
        self.alerts.append(finding)
        stop = self.action == "stop" and self.stopped_by is None
        self.bus.emit(
            Alert(
                step=step,
                kind=f"health_{finding.check}",
                level="error" if stop else "warn",
                text=f"{finding.title}: {finding.summary}",
                data={
                    "check": finding.check,
                    "status": finding.status,
                    "summary": finding.summary,
                    "evidence": finding.evidence,
                    "advice": finding.advice,
                    "action": self.action,
                },
            )
        )
        if stop:
            self.stopped_by = finding
            self.bus.request_stop(f"{finding.title}: {finding.summary}", EXIT_UNHEALTHY)

    def close(self) -> None:
        if self.stopped_by is None:
            return
        checkpoint = self._end.last_checkpoint if self._end is not None else None
        saved = f"; checkpoint saved: {checkpoint}" if checkpoint else ""
        self.stream.write(
            f"stopped by the watchdog (--on-unhealthy stop, exit {EXIT_UNHEALTHY}): "
            f"{self.stopped_by.title}: {self.stopped_by.summary}{saved}\n"
        )
        self.stream.flush()
