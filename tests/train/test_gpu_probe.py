"""The GPU probe of ``alpha bench``: nvidia-smi's readings parsed, a failed query reported as
missing. nvidia-smi cannot run here, so a stand-in executable records its arguments and answers."""

from __future__ import annotations

import stat
from pathlib import Path

from alpha.train.gpu_probe import FIELDS, KEYS, GpuProbe, describe, parse, supported_optional_fields


def _stand_in(tmp_path: Path, answer: str, code: int = 0) -> Path:
    exe = tmp_path / "nvidia-smi"
    exe.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\nprintf "{answer}"\nexit {code}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_a_reading_is_parsed_with_missing_values_as_none() -> None:
    assert parse("1980, 1980, 512.34, 700.00, 48, 100") == {
        "sm_clock_mhz": 1980.0,
        "max_sm_clock_mhz": 1980.0,
        "power_w": 512.34,
        "power_limit_w": 700.0,
        "temperature_c": 48.0,
        "utilization_pct": 100.0,
    }
    assert parse("1755, 1980, [N/A], 700.00, 61, 97")["power_w"] is None  # type: ignore[index]
    assert parse("1980, 1980") is None


def test_the_probe_queries_one_gpu_and_returns_its_readings(tmp_path: Path) -> None:
    probe = GpuProbe("GPU-1234", str(_stand_in(tmp_path, "1755, 1980, 650.10, 700.00, 71, 99\\n")))
    probe.start()
    reading = probe.finish()
    assert reading is not None and reading["sm_clock_mhz"] == 1755.0 and reading["temperature_c"] == 71.0
    args = (tmp_path / "args").read_text().split()
    assert args[:2] == ["-i", "GPU-1234"] and args[2] == "--query-gpu=" + ",".join(FIELDS)
    assert describe(reading) == "SM 1755 of 1980 MHz, 650 W of 700 W, 71 C, 99% busy"


def test_a_failed_or_missing_query_is_no_reading(tmp_path: Path) -> None:
    failing = GpuProbe("0", str(_stand_in(tmp_path, "No devices were found\\n", code=6)))
    failing.start()
    assert failing.finish() is None
    missing = GpuProbe("0", str(tmp_path / "no-such-tool"))
    missing.start()
    assert missing.finish() is None and describe(None) == "n/a"
    assert GpuProbe("0").finish() is None  # never started


def test_the_optional_fields_are_read_where_nvidia_smi_lists_them(tmp_path: Path) -> None:
    listing = tmp_path / "listing"
    listing.write_text(
        '"power.draw" or "power.draw.average"\nLast measured power draw.\n'
        '"power.draw.instant"\nInstantaneous power draw.\n'
        '"clocks_event_reasons.sw_power_cap" or "clocks_throttle_reasons.sw_power_cap"\nSW Power Cap.\n'
    )
    lister = tmp_path / "lister"
    lister.write_text(f"#!/bin/sh\ncat {listing}\n")
    lister.chmod(lister.stat().st_mode | stat.S_IEXEC)
    optional = supported_optional_fields(str(lister))
    assert optional == ("power.draw.instant", "clocks_event_reasons.sw_power_cap")
    listing.write_text('"power.draw" or "power.draw.average"\n')  # an older nvidia-smi
    assert supported_optional_fields(str(lister)) == ()
    assert supported_optional_fields(str(tmp_path / "no-such-tool")) == ()

    answer = "1665, 1980, 241.50, 700.00, 49, 100, 690.40, Active\\n"
    probe = GpuProbe("0", str(_stand_in(tmp_path, answer)), optional)
    probe.start()
    reading = probe.finish()
    args = (tmp_path / "args").read_text().split()
    assert args[2] == "--query-gpu=" + ",".join(FIELDS + optional)
    assert reading is not None and reading["power_capped"] is True and reading["power_now_w"] == 690.4
    assert describe(reading) == "SM 1665 of 1980 MHz, 690 W of 700 W (power-capped), 49 C, 100% busy"
    keys = (*KEYS, "power_now_w", "power_capped")
    assert parse("1980, 1980, 122.2, 700.00, 40, 0, 122.5, Not Active", keys)["power_capped"] is False  # type: ignore[index]
