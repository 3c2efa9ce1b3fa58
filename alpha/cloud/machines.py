"""GCE machine types: which GPUs each one carries, and the zones worth trying for each GPU.

Pure data and lookups, no I/O. The GPU count decides ``alpha train --gpus N`` on the instance; the
accelerator flag is what ``gcloud compute instances create`` needs. G2 and N1 machines take an
explicit ``--accelerator``; A2 and A3 machines come with their GPUs built in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alpha.errors import ConfigError


@dataclass(frozen=True)
class MachineGpus:
    """The GPUs of one machine type."""

    accelerator: str  # GCE accelerator type, e.g. "nvidia-l4"
    count: int
    label: str  # short human name: "L4", "A100 40GB"
    attach_flag: bool  # True when `instances create` needs --accelerator for them

    def create_flag(self) -> str | None:
        if not self.attach_flag:
            return None
        return f"--accelerator=type={self.accelerator},count={self.count}"


# G2: the GPU count is fixed per machine type (1 L4 up to g2-standard-32, then 2, 4, 8).
G2_L4_COUNT = {4: 1, 8: 1, 12: 1, 16: 1, 32: 1, 24: 2, 48: 4, 96: 8}

# A2/A3 families: accelerator type and label; the count is the "-<N>g" suffix.
BUNDLED_FAMILIES = {
    "a2-highgpu": ("nvidia-tesla-a100", "A100 40GB"),
    "a2-megagpu": ("nvidia-tesla-a100", "A100 40GB"),
    "a2-ultragpu": ("nvidia-a100-80gb", "A100 80GB"),
    "a3-highgpu": ("nvidia-h100-80gb", "H100 80GB"),
    "a3-edgegpu": ("nvidia-h100-80gb", "H100 80GB"),
    "a3-megagpu": ("nvidia-h100-mega-80gb", "H100 80GB Mega"),
    "a3-ultragpu": ("nvidia-h200-141gb", "H200 141GB"),
}

N1_ACCELERATORS = {
    "nvidia-tesla-t4": "T4",
    "nvidia-tesla-v100": "V100",
    "nvidia-tesla-p100": "P100",
    "nvidia-tesla-p4": "P4",
}

# Zones that offer each accelerator, in the order `--zone auto` tries them. Availability changes:
# `gcloud compute accelerator-types list --filter=name=<type>` gives today's list, and --zones
# overrides this one.
ZONES_BY_ACCELERATOR = {
    "nvidia-l4": [
        "us-central1-a",
        "us-central1-b",
        "us-central1-c",
        "us-east1-b",
        "us-east1-c",
        "us-east4-a",
        "us-east4-c",
        "us-west1-a",
        "us-west1-b",
        "us-west4-a",
        "europe-west4-a",
        "europe-west4-b",
        "europe-west1-b",
        "asia-southeast1-b",
    ],
    "nvidia-tesla-a100": [
        "us-central1-a",
        "us-central1-b",
        "us-central1-c",
        "us-central1-f",
        "us-east1-b",
        "us-west1-b",
        "europe-west4-a",
        "europe-west4-b",
        "asia-northeast1-a",
    ],
    "nvidia-a100-80gb": ["us-central1-a", "us-central1-c", "us-east4-c", "us-east5-b", "europe-west4-a"],
    "nvidia-h100-80gb": [
        "us-central1-a",
        "us-central1-c",
        "us-east4-a",
        "us-east4-b",
        "us-east5-a",
        "us-west1-a",
        "europe-west4-b",
        "europe-west4-c",
    ],
    "nvidia-h100-mega-80gb": ["us-central1-a", "us-central1-c", "us-east4-a", "us-east5-a", "europe-west4-b"],
    "nvidia-h200-141gb": ["us-central1-b", "us-east4-b", "us-east5-a", "europe-west1-b"],
    "nvidia-tesla-t4": ["us-central1-a", "us-central1-b", "us-central1-f", "us-east1-c", "us-west1-b"],
    "nvidia-tesla-v100": ["us-central1-a", "us-central1-b", "us-central1-c", "us-west1-a", "europe-west4-a"],
}
DEFAULT_ZONES = ["us-central1-a", "us-central1-b", "us-central1-c", "us-east1-b", "us-west1-b"]


def parse_accelerator(spec: str) -> tuple[str, int]:
    """``nvidia-tesla-t4`` or ``nvidia-tesla-t4:2`` -> (type, count)."""
    name, _, count = spec.partition(":")
    if not count:
        return name, 1
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"--accelerator {spec!r}: the count after ':' must be a positive integer")
    return name, int(count)


def machine_gpus(machine_type: str, accelerator: str | None = None) -> MachineGpus:
    """The GPUs a machine type gets, or ConfigError for a type that has none we know of."""
    g2 = re.fullmatch(r"g2-standard-(\d+)", machine_type)
    if g2:
        vcpus = int(g2.group(1))
        if vcpus not in G2_L4_COUNT:
            raise ConfigError(f"unknown G2 machine type {machine_type!r} (g2-standard-4/8/12/16/24/32/48/96)")
        return MachineGpus("nvidia-l4", G2_L4_COUNT[vcpus], "L4", attach_flag=True)
    bundled = re.fullmatch(r"(a[23]-[a-z]+)-(\d+)g", machine_type)
    if bundled and bundled.group(1) in BUNDLED_FAMILIES:
        accel, label = BUNDLED_FAMILIES[bundled.group(1)]
        return MachineGpus(accel, int(bundled.group(2)), label, attach_flag=False)
    if machine_type.startswith("n1-"):
        if not accelerator:
            raise ConfigError(
                f"{machine_type} has no GPU of its own: add --accelerator TYPE[:COUNT] "
                f"(one of {', '.join(N1_ACCELERATORS)})"
            )
        name, count = parse_accelerator(accelerator)
        if name not in N1_ACCELERATORS:
            raise ConfigError(
                f"--accelerator {name!r} does not fit N1 machines (one of {', '.join(N1_ACCELERATORS)})"
            )
        return MachineGpus(name, count, N1_ACCELERATORS[name], attach_flag=True)
    raise ConfigError(
        f"unknown GPU machine type {machine_type!r}: use g2-standard-* (L4), a2-highgpu-*g / "
        "a2-ultragpu-*g (A100), a3-highgpu-*g / a3-ultragpu-8g (H100/H200), or n1-* with --accelerator"
    )


def zones_for(gpus: MachineGpus) -> list[str]:
    return list(ZONES_BY_ACCELERATOR.get(gpus.accelerator, DEFAULT_ZONES))
