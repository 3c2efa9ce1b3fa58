"""What the GPU ran at while a benchmark was timed: SM clock, power and temperature (nvidia-smi).

The same build can differ by several percent between two machines of one kind. The clock and
the power a run saw tell whether the GPU made the difference, not the code. The query is a child
process started just before the timed steps, so it samples the GPU while they run and costs the
timed loop nothing. The GPU's utilisation is read with the rest: a low figure says the sample
came after the steps had ended (a slow nvidia-smi).

Where this nvidia-smi knows them (``--help-query-gpu`` lists them), two more fields are read: the
instantaneous power draw (``power.draw`` averages over the last second, which for a run of a
fraction of a second includes the idle time before it) and whether the software power cap is
holding the clock down. An H200 running the seed model at batch 128 draws its whole 700 W and
clocks down to 1.5–1.7 GHz, so that figure, not the code, decides how two machines compare.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

FIELDS = ("clocks.sm", "clocks.max.sm", "power.draw", "power.limit", "temperature.gpu", "utilization.gpu")
KEYS = ("sm_clock_mhz", "max_sm_clock_mhz", "power_w", "power_limit_w", "temperature_c", "utilization_pct")
# read too where nvidia-smi lists them: field -> key
OPTIONAL = {"power.draw.instant": "power_now_w", "clocks_event_reasons.sw_power_cap": "power_capped"}
TIMEOUT_S = 10

Reading = dict[str, float | bool | None]


def parse(line: str, keys: tuple[str, ...] = KEYS) -> Reading | None:
    """One ``--format=csv,noheader,nounits`` line of the fields of ``keys`` (``[N/A]`` becomes
    None; the power cap's ``Active`` / ``Not Active`` become True / False)."""
    parts = [p.strip() for p in line.strip().split(",")]
    if len(parts) != len(keys):
        return None
    values: Reading = {}
    for key, text in zip(keys, parts, strict=True):
        if key == "power_capped":
            values[key] = {"Active": True, "Not Active": False}.get(text)
            continue
        try:
            values[key] = float(text)
        except ValueError:
            values[key] = None
    return values


def supported_optional_fields(executable: str) -> tuple[str, ...]:
    """The fields of ``OPTIONAL`` that ``executable --help-query-gpu`` lists."""
    try:
        listing = subprocess.run(
            [executable, "--help-query-gpu"], capture_output=True, text=True, timeout=TIMEOUT_S
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(field for field in OPTIONAL if f'"{field}"' in listing)


class GpuProbe:
    """``start()`` queries one GPU (an nvidia-smi id: a UUID or an index) in the background;
    ``finish()`` returns its readings, or None when the query failed."""

    def __init__(self, gpu_id: str, executable: str = "nvidia-smi", optional: tuple[str, ...] = ()) -> None:
        fields = FIELDS + optional
        self.keys = KEYS + tuple(OPTIONAL[field] for field in optional)
        self.command = [
            executable,
            "-i",
            gpu_id,
            "--query-gpu=" + ",".join(fields),
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
        gpu_id = f"GPU-{uuid}" if uuid is not None else str(device.index or 0)
        return cls(gpu_id, executable, supported_optional_fields(executable))

    def start(self) -> None:
        try:
            self._process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError:
            self._process = None

    def finish(self) -> Reading | None:
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
        return parse(out.strip().splitlines()[0], self.keys)


def describe(reading: Reading | None) -> str:
    """``SM 1665 of 1980 MHz, 690 W of 700 W (power-capped), 48 C, 100% busy``: the instantaneous
    power where it was read, n/a where a value is missing."""
    if reading is None:
        return "n/a"

    def num(key: str) -> str:
        value = reading.get(key)
        return "n/a" if value is None else f"{value:.0f}"

    power = "power_now_w" if reading.get("power_now_w") is not None else "power_w"
    capped = " (power-capped)" if reading.get("power_capped") else ""
    return (
        f"SM {num('sm_clock_mhz')} of {num('max_sm_clock_mhz')} MHz, "
        f"{num(power)} W of {num('power_limit_w')} W{capped}, {num('temperature_c')} C, "
        f"{num('utilization_pct')}% busy"
    )
