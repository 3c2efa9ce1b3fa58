"""CUSUM monitors: quiet on a stationary run, one alarm per real change, on the right side."""

from __future__ import annotations

import math
import random

from alpha.symbio.cusum import ALERT_CLIP, ALERT_GRAD, ALERT_TPS, ALERT_VAL, CusumMonitor


def _steps(monitor: CusumMonitor, n: int, rng: random.Random, *, grad=0.5, clip_p=0.05, tps=20000.0, start=0):
    alarms = []
    for i in range(n):
        reading = monitor.update(
            grad * math.exp(0.2 * rng.gauss(0, 1)),
            rng.random() < clip_p,
            tps * math.exp(0.05 * rng.gauss(0, 1)),
        )
        if reading.alerts:
            alarms.append((start + i, reading.alerts, reading.fields()["cusum_alert_reason"]))
    return alarms


def test_stationary_series_with_candidate_switches_is_almost_never_in_alarm():
    rng = random.Random(0)
    monitor = CusumMonitor(sensitivity=4.0, baseline_window=5)
    alarms = []
    for start in range(0, 20_000, 25):  # the seed config switches candidates every 25 steps
        monitor.switch()
        alarms += _steps(monitor, 25, rng, start=start)
    assert len(alarms) < 40, alarms[:10]  # < 0.2% of steps (the reference: 99%)


def test_throughput_drop_gives_one_collapse_alarm_and_a_rise_gives_none():
    rng = random.Random(1)
    monitor = CusumMonitor(4.0, 10)
    assert not [a for a in _steps(monitor, 600, rng) if a[1] & ALERT_TPS]
    assert not [a for a in _steps(monitor, 600, rng, tps=40000.0) if a[1] & ALERT_TPS]  # faster: fine
    collapse = [a for a in _steps(monitor, 600, rng, tps=12000.0, start=1200) if a[1] & ALERT_TPS]
    assert len(collapse) == 1 and 1200 <= collapse[0][0] < 1210
    assert "throughput collapse" in collapse[0][2]


def test_grad_norm_step_and_clipping_onset_are_detected_once():
    rng = random.Random(2)
    monitor = CusumMonitor(4.0, 10)
    _steps(monitor, 500, rng)
    grad = [a for a in _steps(monitor, 500, rng, grad=2.0, start=500) if a[1] & ALERT_GRAD]
    assert len(grad) == 1 and grad[0][0] < 510
    clip = [a for a in _steps(monitor, 500, rng, grad=2.0, clip_p=0.7, start=1000) if a[1] & ALERT_CLIP]
    assert len(clip) == 1 and clip[0][0] < 1060 and "persistent clipping onset" in clip[0][2]


def test_validation_divergence_alarms_and_reaches_the_next_step():
    monitor = CusumMonitor(4.0, 5)
    losses = [6.0 - 0.1 * i for i in range(20)] + [4.1 + 0.08 * i for i in range(10)]
    alarms = [i for i, loss in enumerate(losses) if monitor.update_val(loss)]
    assert len(alarms) == 1 and alarms[0] >= 20
    reading = monitor.update(0.5, False, 1000.0)
    assert reading.alerts & ALERT_VAL and "validation loss divergence" in reading.reasons


def test_non_finite_inputs_are_skipped_not_poisonous():
    rng = random.Random(3)
    monitor = CusumMonitor(4.0, 10)
    _steps(monitor, 200, rng)
    for _ in range(5):
        reading = monitor.update(float("nan"), False, float("inf"))
        assert all(math.isfinite(v) for v in reading.values.values())
    grad = [a for a in _steps(monitor, 200, rng, grad=3.0) if a[1] & ALERT_GRAD]
    assert len(grad) == 1


def test_state_round_trip_continues_identically():
    rng = random.Random(4)
    first = CusumMonitor(4.0, 5)
    _steps(first, 300, rng)
    second = CusumMonitor(4.0, 5)
    second.load_state_dict(first.state_dict())
    inputs = [
        (0.5 * math.exp(rng.gauss(0, 0.3)), rng.random() < 0.2, 1000 * math.exp(rng.gauss(0, 0.1)))
        for _ in range(300)
    ]
    assert [first.update(*x).fields() for x in inputs] == [second.update(*x).fields() for x in inputs]
