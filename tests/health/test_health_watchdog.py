"""The watchdog sink: the same checks as ``alpha diagnose``, live, one alert per episode, and a stop
request (exit code 3) under ``--on-unhealthy stop``."""

from __future__ import annotations

import io
import json

import pytest

from alpha.cli import main
from alpha.errors import EXIT_UNHEALTHY
from alpha.events import Alert, EventBus
from alpha.health.watchdog import Watchdog
from alpha.sinks.jsonl import EventsSink
from tests import conftest
from tests.health import health_streams as hs


class Recorder(conftest.Recorder):
    """A sink that keeps what it is given (as the dashboard or Discord sinks would receive it)."""

    def health_alerts(self) -> list[Alert]:
        return [e for e in self.events if isinstance(e, Alert) and e.kind.startswith("health_")]


def replay(
    stream: hs.Stream, action: str = "warn", extra_sinks: tuple = ()
) -> tuple[Recorder, EventBus, str]:
    """Feed the stream through a bus with the watchdog last, stopping as the trainer would."""
    bus = EventBus()
    recorder = Recorder()
    stderr = io.StringIO()
    for sink in (recorder, *extra_sinks):
        bus.add(sink)
    bus.add(Watchdog(bus, action=action, stream=stderr))
    for event in hs.as_events(stream):
        if bus.stop_request is not None and event.kind == "step":
            break  # the trainer stops stepping once a stop is requested
        bus.emit(event)
    bus.close()
    return recorder, bus, stderr.getvalue()


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (hs.healthy(), []),
        (hs.wiggling_val(1.5), []),
        (hs.overfitting(), ["health_overfitting"]),
        (hs.plateau(), ["health_plateau"]),
        (hs.instability_recent(), ["health_instability"]),
        (hs.symbio(), ["health_symbio_stagnation"]),
    ],
)
def test_each_failure_alerts_once_and_healthy_runs_never(stream, expected):
    recorder, bus, stderr = replay(stream)
    alerts = recorder.health_alerts()
    assert [a.kind for a in alerts] == expected  # once per episode, not on every step
    assert all(a.level == "warn" for a in alerts)
    assert bus.stop_request is None and stderr == ""


def test_alert_comes_at_the_first_evaluation_where_diagnose_would_fire(tmp_path, capsys):
    stream = hs.instability_recent()
    recorder, _, _ = replay(stream)
    (alert,) = recorder.health_alerts()
    for step, should_fire in ((alert.step, True), (alert.step - 25, False)):
        prefix = hs.Stream(records=stream.records[:step], completed=False)
        prefix.write(tmp_path / str(step))
        main(["diagnose", str(tmp_path / str(step)), "--json"])
        doc = json.loads(capsys.readouterr().out)
        status = {f["check"]: f["status"] for f in doc["findings"]}["instability"]
        assert (status == "fired") is should_fire, step
    assert alert.data["evidence"]["window_bad_pct"] > 25 and alert.data["advice"]


def test_a_second_episode_alerts_again():
    # bad 201-400 (fires), healthy 401-3000 (recovers), bad again 3001-3300 (fires again)
    def bad(s, rng):
        return "nonfinite" if 200 < s <= 400 or s > 3000 else None

    recorder, _, _ = replay(hs.build(3300, hs.decaying, bad=bad))
    alerts = recorder.health_alerts()
    assert [a.kind for a in alerts] == ["health_instability", "health_instability"]
    assert 200 < alerts[0].step <= 400 and 3000 < alerts[1].step <= 3300


def test_stop_action_requests_exit_3_once_and_says_why(tmp_path):
    recorder, bus, stderr = replay(
        hs.instability_recent(), action="stop", extra_sinks=(EventsSink(tmp_path),)
    )
    (alert,) = recorder.health_alerts()
    assert alert.level == "error"
    assert bus.stop_request is not None and bus.stop_request.exit_code == EXIT_UNHEALTHY == 3
    assert bus.stop_request.reason.startswith("gradient instability: ")
    assert stderr.startswith("stopped by the watchdog (--on-unhealthy stop, exit 3): gradient instability")
    # what the dashboard and Discord will get: the events.jsonl record with evidence and advice
    records = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    (health,) = [r for r in records if r["kind"] == "health_instability"]
    assert health["level"] == "error" and health["step"] == alert.step
    assert health["payload"]["evidence"]["window"][1] == alert.step
    assert "Lower --lr" in health["payload"]["advice"]


def test_watchdog_rejects_an_unknown_action():
    with pytest.raises(ValueError):
        Watchdog(EventBus(), action="explode")
