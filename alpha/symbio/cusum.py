"""CUSUM change detectors over the training signals: alarms that mean something.

Four channels, with the reference's alert bits and reason texts:

| bit  | channel      | input                      | side      | reason                        |
|------|--------------|----------------------------|-----------|-------------------------------|
| 0x01 | ``grad``     | log(grad norm), every step | both      | grad_norm regime shift        |
| 0x02 | ``clip``     | clip rate per 10-step block| up        | persistent clipping onset     |
| 0x04 | ``tps``      | log(tokens/s), every step  | down      | throughput collapse           |
| 0x08 | ``val``      | validation loss, per eval  | up        | validation loss divergence    |

Each channel is a tabular (Page) CUSUM on standardized values z = (x - center) / sigma, clipped to
±3 so that one outlier cannot raise an alarm alone: S+ <- max(0, S+ + z - k), S- <- max(0, S- - z - k),
alarm when the watched side exceeds h (``cusumSensitivity``). The baseline is robust and rolling:
the center is the median of the last ``WINDOW`` samples (``cusumBaselineWindow`` evals for val),
sigma the MAD of first differences (which a slow trend, such as the grad norm falling during
training, does not inflate), floored per channel.
A channel starts watching after ``cusumBaselineWindow`` samples. After an alarm it re-learns its
center (the new regime becomes the baseline, so one change gives one alarm). At every candidate
switch grad and tps re-learn too, because each activation has its own speed and gradient scale
(the clip channel keeps its rate baseline). Non-finite inputs are skipped. With k = 1 a
stationary series raises about one false alarm per 2,500 samples, while a 2-sigma shift is caught
within about 7 samples.

The clip channel standardizes the clip fraction of each block of ``CLIP_BLOCK`` steps by its
binomial standard deviation around the baseline rate, since a 0/1 indicator has no useful MAD.
Alarms are observational: they are logged and emitted as Alert events, nothing else acts on them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from statistics import median
from typing import Any

ALERT_GRAD, ALERT_CLIP, ALERT_TPS, ALERT_VAL = 0x01, 0x02, 0x04, 0x08
REASONS = {
    ALERT_GRAD: "grad_norm regime shift",
    ALERT_CLIP: "persistent clipping onset",
    ALERT_TPS: "throughput collapse",
    ALERT_VAL: "validation loss divergence",
}
ALLOWANCE = 1.0  # k, in robust sigma units
Z_CLIP = 3.0
WINDOW = 64  # rolling baseline length (samples)
SIGMA_WINDOW = 128  # first differences kept for the noise scale
CLIP_BLOCK = 10  # steps per clip-rate sample
MAD_TO_SIGMA = 1.4826


@dataclass
class Channel:
    """One robust two-sided CUSUM; ``side`` ("up", "down", "both") says which side alarms."""

    side: str
    warmup: int
    min_sigma: float
    rel_sigma: float = 0.0  # sigma floor relative to |center|
    window_len: int = WINDOW
    window: deque[float] = field(default_factory=deque)
    diffs: deque[float] = field(default_factory=lambda: deque(maxlen=SIGMA_WINDOW))
    previous: float | None = None
    s_up: float = 0.0
    s_down: float = 0.0
    h: float = 4.0

    def __post_init__(self) -> None:
        self.window = deque(self.window, maxlen=self.window_len)

    @property
    def value(self) -> float:
        """The statistic of the watched side(s), as reported in ``cusum_*``."""
        if self.side == "up":
            return self.s_up
        if self.side == "down":
            return self.s_down
        return max(self.s_up, self.s_down)

    def sigma(self, center: float) -> float:
        floor = max(self.min_sigma, self.rel_sigma * abs(center))
        if len(self.diffs) < 2:
            return floor
        d_med = median(self.diffs)
        mad = median(abs(d - d_med) for d in self.diffs)
        return max(MAD_TO_SIGMA * mad / math.sqrt(2), floor)

    def update(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        if self.previous is not None:
            self.diffs.append(x - self.previous)
        self.previous = x
        if len(self.window) < self.warmup:
            self.window.append(x)
            return False
        center = median(self.window)
        z = max(-Z_CLIP, min(Z_CLIP, (x - center) / self.sigma(center)))
        self.window.append(x)
        return self._accumulate(z)

    def _accumulate(self, z: float) -> bool:
        self.s_up = max(0.0, self.s_up + z - ALLOWANCE)
        self.s_down = max(0.0, self.s_down - z - ALLOWANCE)
        return self.value > self.h

    def reset_statistic(self) -> None:
        self.s_up = self.s_down = 0.0

    def relearn(self) -> None:
        """Forget the center and the statistic (keep the noise scale); watch again after warm-up."""
        self.window.clear()
        self.previous = None
        self.s_up = self.s_down = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": list(self.window),
            "diffs": list(self.diffs),
            "previous": self.previous,
            "s_up": self.s_up,
            "s_down": self.s_down,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = deque(state["window"], maxlen=self.window_len)
        self.diffs = deque(state["diffs"], maxlen=SIGMA_WINDOW)
        self.previous = state["previous"]
        self.s_up, self.s_down = state["s_up"], state["s_down"]


@dataclass
class ClipChannel(Channel):
    """Upward CUSUM on the clip fraction of blocks of ``CLIP_BLOCK`` steps (binomial sigma)."""

    block: list[bool] = field(default_factory=list)

    def update_clip(self, clipped: bool) -> bool:
        self.block.append(bool(clipped))
        if len(self.block) < CLIP_BLOCK:
            return False
        rate = sum(self.block) / len(self.block)
        self.block.clear()
        if len(self.window) < self.warmup:
            self.window.append(rate)
            return False
        # Laplace-smoothed baseline rate, so a run that never clipped still has a finite sigma.
        p0 = (sum(self.window) * CLIP_BLOCK + 1) / (len(self.window) * CLIP_BLOCK + 2)
        sigma = math.sqrt(p0 * (1 - p0) / CLIP_BLOCK)
        z = max(-Z_CLIP, min(Z_CLIP, (rate - p0) / sigma))
        self.window.append(rate)
        return self._accumulate(z)

    def relearn(self) -> None:
        super().relearn()
        self.block.clear()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "block": list(self.block)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.block = list(state["block"])


@dataclass
class CusumReading:
    """One step's monitor output: the ``cusum_*`` metric fields and any new alarms."""

    values: dict[str, float]
    alerts: int = 0

    @property
    def reasons(self) -> list[str]:
        return [text for bit, text in REASONS.items() if self.alerts & bit]

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.values, "cusum_alerts": self.alerts}
        if self.alerts:
            out["cusum_alert_reason"] = "; ".join(self.reasons)
        return out


class CusumMonitor:
    """The four channels; ``update`` per optimizer step, ``update_val`` per validation loss."""

    def __init__(self, sensitivity: float = 4.0, baseline_window: int = 10) -> None:
        warmup = max(2, baseline_window)
        self.channels: dict[str, Channel] = {
            "grad": Channel("both", warmup, min_sigma=0.02, h=sensitivity),
            "clip": ClipChannel("up", warmup, min_sigma=0.0, h=sensitivity),
            "tps": Channel("down", warmup, min_sigma=0.1, h=sensitivity),
            # Few samples (one per eval) on a falling curve: only the recent evals are the baseline.
            "val": Channel("up", warmup, min_sigma=1e-3, rel_sigma=2e-3, window_len=warmup, h=sensitivity),
        }
        self.pending_val_alert = 0

    def _values(self) -> dict[str, float]:
        return {f"cusum_{name}": channel.value for name, channel in self.channels.items()}

    def update(self, grad_norm: float | None, clipped: bool, tokens_per_sec: float | None) -> CusumReading:
        alerts = self.pending_val_alert
        self.pending_val_alert = 0
        grad, tps, clip = self.channels["grad"], self.channels["tps"], self.channels["clip"]
        assert isinstance(clip, ClipChannel)
        if grad_norm is not None and grad_norm > 0 and grad.update(math.log(grad_norm)):
            alerts |= ALERT_GRAD
        if clip.update_clip(clipped):
            alerts |= ALERT_CLIP
        if tokens_per_sec is not None and tokens_per_sec > 0 and tps.update(math.log(tokens_per_sec)):
            alerts |= ALERT_TPS
        reading = CusumReading(self._values(), alerts)
        for bit, name in ((ALERT_GRAD, "grad"), (ALERT_CLIP, "clip"), (ALERT_TPS, "tps")):
            if alerts & bit:
                self.channels[name].relearn()
        return reading

    def update_val(self, val_loss: float) -> bool:
        """Feed a validation loss; an alarm is reported with the next step's reading too."""
        alarm = self.channels["val"].update(val_loss)
        if alarm:
            self.channels["val"].relearn()
            self.pending_val_alert |= ALERT_VAL
        return alarm

    def switch(self) -> None:
        """A candidate switch: grad and tps re-learn their baselines; clip restarts its statistic
        but keeps its rate baseline (a candidate window holds too few blocks to learn one); val,
        fed once per evaluation, is unaffected."""
        self.channels["grad"].relearn()
        self.channels["tps"].relearn()
        self.channels["clip"].reset_statistic()

    def state_dict(self) -> dict[str, Any]:
        return {
            "channels": {name: ch.state_dict() for name, ch in self.channels.items()},
            "pending_val_alert": self.pending_val_alert,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, channel_state in state["channels"].items():
            self.channels[name].load_state_dict(channel_state)
        self.pending_val_alert = int(state["pending_val_alert"])
