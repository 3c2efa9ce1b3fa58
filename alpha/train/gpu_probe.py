"""What the GPU ran at while a benchmark was timed: SM clock, power and temperature (nvidia-smi).

The same build can differ by several percent between two machines of one kind. The clock and
the power a run saw tell whether the GPU made the difference, not the code. The query is a child
process started once the timed steps are under way, so it samples the GPU under load, and it
costs the timed loop nothing but the start of a process. The GPU's utilisation is read with the
rest: a low figure says the sample came after the steps had ended (a slow nvidia-smi).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

FIELDS = ("clocks.sm", "clocks.max.sm", "power.draw", "power.limit", "temperature.gpu", "utilization.gpu")
KEYS = ("sm_clock_mhz", "max_sm_clock_mhz", "power_w", "power_limit_w", "temperature_c", "utilization_pct")
TIMEOUT_S = 10


def parse(line: str) -> dict[str, float | None] | None:
    """One ``--format=csv,noheader,nounits`` line of ``FIELDS`` (``[N/A]`` becomes None)."""
    parts = [p.strip() for p in line.strip().split(",")]
    if len(parts) != len(FIELDS):
        return None
    values: dict[str, float | None] = {}
    for key, text in zip(KEYS, parts, strict=True):
        try:
            values[key] = float(text)
        except ValueError:
            values[key] = None
    return values


class GpuProbe:
    """``start()`` queries one GPU (an nvidia-smi id: a UUID or an index) in the background;
    ``finish()`` returns its readings, or None when the query failed."""

    def __init__(self, gpu_id: str, executable: str = "nvidia-smi") -> None:
        self.command = [
            executable,
            "-i",
            gpu_id,
            "--query-gpu=" + ",".join(FIELDS),
            "--format=csv,noheader,nounits",
        ]
        self._process: subprocess.Popen[str] | None = None

    @classmethod
    def for_device(cls, device: Any) -> GpuProbe | None:
        """A probe of a CUDA device, or None (another device, or no nvidia-smi on PATH)."""
        import torch

        executable = shutil.which("nvidia-smi")
        if device.type != "cuda" or executable is None:
            return None
        uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
        return cls(f"GPU-{uuid}" if uuid is not None else str(device.index or 0), executable)

    def start(self) -> None:
        try:
            self._process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError:
            self._process = None

    def finish(self) -> dict[str, float | None] | None:
        process, self._process = self._process, None
        if process is None:
            return None
        try:
            out, _ = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return None
        if process.returncode != 0 or not out.strip():
            return None
        return parse(out.strip().splitlines()[0])


def describe(reading: dict[str, float | None] | None) -> str:
    """``SM 1980 of 1980 MHz, 512 W of 700 W, 48 C, 100% busy``, n/a where a value is missing."""
    if reading is None:
        return "n/a"

    def num(key: str) -> str:
        value = reading.get(key)
        return "n/a" if value is None else f"{value:.0f}"

    return (
        f"SM {num('sm_clock_mhz')} of {num('max_sm_clock_mhz')} MHz, "
        f"{num('power_w')} W of {num('power_limit_w')} W, {num('temperature_c')} C, "
        f"{num('utilization_pct')}% busy"
    )
