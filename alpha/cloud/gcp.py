"""GCP provider: the one ``alpha-train`` instance, driven through the gcloud CLI.

Finds the instance in any zone, creates it with the machine type's GPUs and a CUDA + PyTorch image,
starts it when stopped, falls back across zones on capacity or quota errors (``--zone auto``),
and hands the launcher an ``SshTarget`` that keeps host-key checking on: the first connection goes
through ``gcloud compute ssh`` (which creates the key, publishes it and records the host key under
``compute.<instance id>``), later ones are plain ssh/rsync with the same key and known-hosts file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

from alpha.cloud.machines import MachineGpus, machine_gpus, zones_for
from alpha.cloud.shell import LaunchError, Runner, SshTarget, last_line
from alpha.errors import ConfigError

INSTANCE = "alpha-train"
DEFAULT_ZONE = "us-central1-a"
DEFAULT_MACHINE_TYPE = "g2-standard-4"
IMAGE_FAMILY = "pytorch-2-7-cu128-ubuntu-2204-nvidia-570"
IMAGE_PROJECT = "deeplearning-platform-release"
SSH_KEY = "~/.ssh/google_compute_engine"
KNOWN_HOSTS = "~/.ssh/google_compute_known_hosts"
PD_SSD_PER_GB_MONTH = 0.17  # USD, us-central1 list price; a stopped instance still pays for its disk
POLL_SECONDS = 5.0

CAPACITY_MARKERS = ("ZONE_RESOURCE_POOL_EXHAUSTED", "does not have enough resources available", "STOCKOUT")
QUOTA_MARKERS = ("QUOTA_EXCEEDED", "Quota '", "quota exceeded", "Quota exceeded")
UNAVAILABLE_MARKERS = ("does not exist in zone", "is not available in zone", "not found in zone")


def classify_error(stderr: str) -> str | None:
    """'capacity', 'quota' or 'unavailable' for errors another zone may not have; else None."""
    if any(m in stderr for m in CAPACITY_MARKERS):
        return "capacity"
    if any(m in stderr for m in QUOTA_MARKERS):
        return "quota"
    if any(m in stderr for m in UNAVAILABLE_MARKERS):
        return "unavailable"
    return None


REASONS = {
    "capacity": "no capacity for it there right now (ZONE_RESOURCE_POOL_EXHAUSTED)",
    "quota": "the project's GPU quota for that region is used up",
    "unavailable": "that machine or GPU type is not offered there",
}


@dataclass
class Instance:
    name: str
    zone: str
    status: str
    machine_type: str
    external_ip: str | None
    instance_id: str
    accelerators: list[tuple[str, int]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instance:
        ip = None
        for nic in data.get("networkInterfaces", []):
            for access in nic.get("accessConfigs", []):
                ip = ip or access.get("natIP")
        accelerators = [
            (a.get("acceleratorType", "").rsplit("/", 1)[-1], int(a.get("acceleratorCount", 0)))
            for a in data.get("guestAccelerators", [])
        ]
        return cls(
            name=data.get("name", INSTANCE),
            zone=data.get("zone", "").rsplit("/", 1)[-1],
            status=data.get("status", "UNKNOWN"),
            machine_type=data.get("machineType", "").rsplit("/", 1)[-1],
            external_ip=ip,
            instance_id=str(data.get("id", "")),
            accelerators=accelerators,
        )


class GcpProvider:
    name = "gcp"
    bills = True
    require_cuda = True
    wait_gpu_seconds = 900.0

    def __init__(
        self,
        runner: Runner,
        *,
        project: str | None,
        zone: str | None,
        zones: str | None,
        machine_type: str,
        accelerator: str | None,
        image_family: str,
        image_project: str,
        disk_size: int,
        disk_type: str,
        spot: bool,
        ssh_timeout: float,
        gpus: int | None = None,
    ) -> None:
        self.runner = runner
        self.project = project
        self.zone = zone
        self.zone_list = [z.strip() for z in zones.split(",") if z.strip()] if zones else None
        self.machine_type = machine_type
        self.accelerator = accelerator
        self.image_family = image_family
        self.image_project = image_project
        self.disk_size = disk_size
        self.disk_type = disk_type
        self.spot = spot
        self.ssh_timeout = ssh_timeout
        self.gpus_requested = gpus
        self.instance: Instance | None = None
        self.wanted: MachineGpus | None = None
        self._for_training = False

    # ---- preflight ------------------------------------------------------------------------

    def preflight(self, training: bool) -> None:
        if shutil.which("gcloud") is None:
            raise ConfigError(
                "gcloud is not installed or not on PATH (https://cloud.google.com/sdk/docs/install)"
            )
        if training:
            self.wanted = machine_gpus(self.machine_type, self.accelerator)
            if self.gpus_requested and self.gpus_requested > self.wanted.count:
                raise ConfigError(
                    f"--gpus {self.gpus_requested}: {self.machine_type} has {self.wanted.count} "
                    f"× {self.wanted.label}"
                )
        if self.project:
            return
        if self.runner.dry_run:
            self.runner.show(["gcloud", "config", "get-value", "project"])
            self.project = "PROJECT"
            return
        result = self.runner.run(
            ["gcloud", "config", "get-value", "project"], check=False, what="read the project"
        )
        project = result.stdout.strip()
        if result.returncode != 0 or not project or project == "(unset)":
            raise ConfigError(
                "no GCP project is set: run `gcloud config set project PROJECT_ID` or pass --project"
            )
        self.project = project

    # ---- gcloud ---------------------------------------------------------------------------

    def _where(self, zone: str) -> list[str]:
        return [f"--project={self.project}", f"--zone={zone}"]

    def _instance_argv(self, verb: str, zone: str) -> list[str]:
        """``gcloud compute instances VERB alpha-train`` (start, resume, stop, delete) in ``zone``."""
        return ["gcloud", "compute", "instances", verb, INSTANCE, *self._where(zone), "--quiet"]

    def find(self) -> Instance | None:
        """The alpha-train instance in any zone of the project, or None."""
        result = self.runner.run(
            [
                "gcloud",
                "compute",
                "instances",
                "list",
                f"--project={self.project}",
                f"--filter=name={INSTANCE}",
                "--format=json",
            ],
            what="list instances",
        )
        if self.runner.dry_run:
            return None
        try:
            found = [Instance.from_json(i) for i in json.loads(result.stdout or "[]")]
        except (ValueError, AttributeError):
            raise LaunchError(
                f"unexpected output from gcloud compute instances list: {last_line(result.stdout)}"
            ) from None
        found = [i for i in found if i.name == INSTANCE]
        if self.zone and self.zone != "auto":
            in_zone = [i for i in found if i.zone == self.zone]
            if in_zone:
                return in_zone[0]
            if found and self.instance is None and self._for_training:
                raise LaunchError(
                    f"{INSTANCE} already exists in {found[0].zone}, not in --zone {self.zone}: "
                    f"use --zone {found[0].zone}, or delete it first (--action delete --zone {found[0].zone})"
                )
            return None
        return found[0] if found else None

    def describe(self, zone: str) -> Instance:
        result = self.runner.run(
            ["gcloud", "compute", "instances", "describe", INSTANCE, *self._where(zone), "--format=json"],
            what=f"describe {INSTANCE}",
        )
        return Instance.from_json(json.loads(result.stdout))

    def wait_for(self, zone: str, wanted: tuple[str, ...], timeout: float = 600.0) -> Instance:
        deadline = time.monotonic() + timeout
        while True:
            instance = self.describe(zone)
            if instance.status in wanted:
                return instance
            if time.monotonic() >= deadline:
                raise LaunchError(f"{INSTANCE} is still {instance.status} after {timeout:.0f}s")
            time.sleep(POLL_SECONDS)

    def create_argv(self, zone: str) -> list[str]:
        assert self.wanted is not None
        argv = [
            "gcloud",
            "compute",
            "instances",
            "create",
            INSTANCE,
            *self._where(zone),
            f"--machine-type={self.machine_type}",
            f"--image-family={self.image_family}",
            f"--image-project={self.image_project}",
            f"--boot-disk-size={self.disk_size}GB",
            f"--boot-disk-type={self.disk_type}",
            "--maintenance-policy=TERMINATE",
            "--metadata=install-nvidia-driver=True",
            "--labels=app=alpha",
        ]
        flag = self.wanted.create_flag()
        if flag:
            argv.append(flag)
        if self.spot:
            argv += ["--provisioning-model=SPOT", "--instance-termination-action=STOP"]
        return [*argv, "--quiet"]

    def candidate_zones(self) -> list[str]:
        assert self.wanted is not None
        if self.zone and self.zone != "auto":
            return [self.zone]
        if self.zone == "auto":
            return self.zone_list or zones_for(self.wanted)
        return [DEFAULT_ZONE]

    def other_zones(self, tried: list[str]) -> list[str]:
        assert self.wanted is not None
        return [z for z in (self.zone_list or zones_for(self.wanted)) if z not in tried]

    def create(self) -> str:
        """Create the instance in the first zone that has room; return that zone."""
        assert self.wanted is not None
        zones = self.candidate_zones()
        gpus = f"{self.wanted.count} × {self.wanted.label}"
        if self.runner.dry_run:
            print(f"# if {INSTANCE} does not exist: create it ({self.machine_type}, {gpus})")
            self.runner.show(self.create_argv(zones[0]))
            if len(zones) > 1:
                print(f"#   on a capacity or quota error, the same in {', '.join(zones[1:])}, in order")
            return zones[0]
        failures: list[str] = []
        for i, zone in enumerate(zones):
            print(f"creating {INSTANCE} in {zone} ({self.machine_type}, {gpus})...", flush=True)
            result = self.runner.run(self.create_argv(zone), check=False, what=f"create {INSTANCE}")
            if result.returncode == 0:
                return zone
            kind = classify_error(result.stderr + result.stdout)
            if kind is None:
                raise LaunchError(
                    f"creating {INSTANCE} in {zone} failed: {last_line(result.stderr or result.stdout)}"
                )
            failures.append(f"{zone}: {REASONS[kind]}")
            if i + 1 < len(zones):
                print(f"  {zone}: {REASONS[kind]}; trying {zones[i + 1]}", flush=True)
        raise LaunchError(self.no_room_message(zones, failures))

    def no_room_message(self, tried: list[str], failures: list[str]) -> str:
        assert self.wanted is not None
        lines = [f"could not create {INSTANCE} ({self.machine_type}, {self.wanted.label}):"]
        lines += [f"  {f}" for f in failures]
        others = self.other_zones(tried)
        if others:
            lines.append(f"  zones that offer {self.wanted.accelerator}: {', '.join(others)}")
            lines.append("  pass one with --zone ZONE, or --zone auto to try them in order")
        if any("quota" in f for f in failures):
            lines.append(
                f"  quotas: https://console.cloud.google.com/iam-admin/quotas?project={self.project}"
            )
        return "\n".join(lines)

    def start_instance(self, instance: Instance) -> None:
        verb = "resume" if instance.status == "SUSPENDED" else "start"
        print(f"starting {INSTANCE} in {instance.zone} (was {instance.status})...", flush=True)
        result = self.runner.run(
            self._instance_argv(verb, instance.zone),
            check=False,
            what=f"{verb} {INSTANCE}",
        )
        if result.returncode != 0:
            kind = classify_error(result.stderr + result.stdout)
            if kind is not None:
                raise LaunchError(
                    f"cannot start {INSTANCE} in {instance.zone}: {REASONS[kind]}. Retry later, or delete it "
                    f"(--action delete) and launch again with --zone auto to create one elsewhere"
                )
            raise LaunchError(f"{verb} {INSTANCE} failed: {last_line(result.stderr or result.stdout)}")

    # ---- the provider interface -----------------------------------------------------------

    def bring_up(self) -> SshTarget:
        """Reuse, start or create the instance; wait until SSH works."""
        self._for_training = True
        instance = self.find()
        if self.runner.dry_run:
            zone = self.create()
            print(
                f"# if it exists but is stopped: gcloud compute instances start {INSTANCE} "
                f"--project={self.project} --zone={self.zone if self.zone not in (None, 'auto') else 'ZONE'}"
            )
            self.zone = zone
            return self.ssh_target(None)
        if instance is None:
            zone = self.create()
            instance = self.wait_for(zone, ("RUNNING",))
        else:
            assert self.wanted is not None
            if instance.machine_type != self.machine_type:
                print(
                    f"[warn] {INSTANCE} exists as {instance.machine_type}; reusing it (--machine-type "
                    f"{self.machine_type} applies to a new instance: --action delete first to change)",
                    file=sys.stderr,
                )
            if instance.status in ("STOPPING", "SUSPENDING"):
                instance = self.wait_for(instance.zone, ("TERMINATED", "STOPPED", "SUSPENDED"))
            if instance.status in ("TERMINATED", "STOPPED", "SUSPENDED"):
                self.start_instance(instance)
            instance = self.wait_for(instance.zone, ("RUNNING",))
            print(f"using {INSTANCE} in {instance.zone} ({instance.machine_type}, {instance.status})")
        self.instance = instance  # from here on, a failure leaves a billing instance behind
        self.zone = instance.zone
        return self.ssh_target(instance)

    def connect(self, quick: bool = False) -> SshTarget:
        """The running instance, for actions on a run (never starts or creates anything)."""
        instance = self.instance or self.require_instance()
        if instance.status != "RUNNING":
            raise LaunchError(
                f"{INSTANCE} in {instance.zone} is {instance.status}: start it with --action start"
            )
        return self.ssh_target(instance, attempts_for=0.0 if quick else None)

    def machine_up(self) -> bool:
        return self.instance is not None and self.instance.status == "RUNNING"

    def is_running(self) -> bool:
        instance = self.instance or self.require_instance()
        return instance.status == "RUNNING"

    def require_instance(self) -> Instance:
        instance = self.find()
        if self.runner.dry_run:
            return Instance(INSTANCE, self.zone or "ZONE", "RUNNING", self.machine_type, None, "ID", [])
        if instance is None:
            where = f"zone {self.zone}" if self.zone and self.zone != "auto" else f"project {self.project}"
            raise LaunchError(f"no {INSTANCE} instance in {where}")
        self.instance = instance
        self.zone = instance.zone
        return instance

    def ssh_target(self, instance: Instance | None, attempts_for: float | None = None) -> SshTarget:
        """Bootstrap keys and host keys with gcloud compute ssh, then describe plain ssh to the host."""
        zone = instance.zone if instance else (self.zone or DEFAULT_ZONE)
        probe = [
            "gcloud",
            "compute",
            "ssh",
            INSTANCE,
            *self._where(zone),
            "--quiet",
            "--command=echo alpha-ssh-ok $(id -un)",
        ]
        if self.runner.dry_run or instance is None:
            self.runner.show(probe)
            return self._plain_target("USER", "EXTERNAL_IP", "INSTANCE_ID")
        if not instance.external_ip:
            raise LaunchError(f"{INSTANCE} has no external IP, so it cannot be reached over SSH")
        timeout = self.ssh_timeout if attempts_for is None else attempts_for
        deadline = time.monotonic() + timeout
        while True:
            result = self.runner.run(probe, check=False, what="ssh to the instance")
            words = result.stdout.split()
            if result.returncode == 0 and "alpha-ssh-ok" in words:
                user = words[words.index("alpha-ssh-ok") + 1]
                return self._plain_target(user, instance.external_ip, instance.instance_id)
            if time.monotonic() >= deadline:
                raise LaunchError(
                    f"cannot reach {INSTANCE} over SSH: {last_line(result.stderr or result.stdout)}"
                )
            time.sleep(POLL_SECONDS)

    def _plain_target(self, user: str, ip: str, instance_id: str) -> SshTarget:
        return SshTarget(
            destination=f"{user}@{ip}",
            options=[
                "-i",
                os.path.expanduser(SSH_KEY),
                "-o",
                f"UserKnownHostsFile={os.path.expanduser(KNOWN_HOSTS)}",
                "-o",
                f"HostKeyAlias=compute.{instance_id}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "CheckHostIP=no",
            ],
        )

    def gpu_count(self) -> int | None:
        if self.instance is not None and self.instance.accelerators:
            return sum(count for _, count in self.instance.accelerators)
        if self.instance is not None:
            try:
                return machine_gpus(self.instance.machine_type, self.accelerator).count
            except ConfigError:
                return None
        return self.wanted.count if self.wanted else None

    def target_flags(self) -> list[str]:
        flags = [f"--zone={self.zone}"] if self.zone and self.zone != "auto" else []
        return flags + ([f"--project={self.project}"] if self.project and self.project != "PROJECT" else [])

    def where(self) -> str:
        return f"{INSTANCE} ({self.zone})"

    def disk_cost_line(self) -> str:
        monthly = self.disk_size * PD_SSD_PER_GB_MONTH
        return (
            f"a stopped instance still pays for its {self.disk_size} GB disk (about ${monthly:.0f}/month "
            f"for pd-ssd); --action delete removes it and everything on it"
        )

    # ---- instance actions -----------------------------------------------------------------

    def show_status(self) -> bool:
        """Print the instance's state; True when it is running (so its runs can be listed)."""
        instance = self.find()
        if self.runner.dry_run:
            return False
        if instance is None:
            print(f"No {INSTANCE} instance in project {self.project}")
            return False
        self.instance = instance
        self.zone = instance.zone
        gpus = self.gpu_count()
        print(
            f"{instance.name}  zone {instance.zone}  {instance.status}  {instance.machine_type}"
            f"  GPUs: {gpus if gpus is not None else '?'}  IP: {instance.external_ip or '-'}"
        )
        if instance.status == "RUNNING":
            print(f"  ssh: gcloud compute ssh {INSTANCE} --project={self.project} --zone={instance.zone}")
        else:
            print(f"  {self.disk_cost_line()}")
        return instance.status == "RUNNING"

    def start(self) -> int:
        instance = self.require_instance()
        if self.runner.dry_run:
            self.runner.show(self._instance_argv("start", instance.zone))
            return 0
        if instance.status == "RUNNING":
            print(f"{INSTANCE} is already running in {instance.zone} (IP {instance.external_ip or '-'})")
            return 0
        if instance.status in ("STOPPING", "SUSPENDING"):
            instance = self.wait_for(instance.zone, ("TERMINATED", "STOPPED", "SUSPENDED"))
        self.start_instance(instance)
        instance = self.wait_for(instance.zone, ("RUNNING",))
        print(f"{INSTANCE} is running in {instance.zone} (IP {instance.external_ip or '-'})")
        return 0

    def stop(self) -> int:
        instance = self.require_instance()
        if not self.runner.dry_run and instance.status in ("TERMINATED", "STOPPED"):
            print(f"{INSTANCE} in {instance.zone} is already stopped; {self.disk_cost_line()}")
            return 0
        if not self.runner.dry_run:
            print(f"stopping {INSTANCE} in {instance.zone}...", flush=True)
        self.runner.run(self._instance_argv("stop", instance.zone), what=f"stop {INSTANCE}")
        if not self.runner.dry_run:
            print(f"stopped; {self.disk_cost_line()}")
        return 0

    def delete(self, yes: bool) -> int:
        instance = self.require_instance()
        if not yes and not self.runner.dry_run:
            if not sys.stdin.isatty():
                raise ConfigError("--action delete asks for confirmation: pass --yes when not at a terminal")
            answer = input(
                f"Delete {INSTANCE} in {instance.zone} and its disk (runs not downloaded are lost)? [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                print("not deleted")
                return 0
        self.runner.run(self._instance_argv("delete", instance.zone), what=f"delete {INSTANCE}")
        if not self.runner.dry_run:
            print(f"deleted {INSTANCE} in {instance.zone}")
        return 0

    def ssh_session(self, remote_shell_dir: str) -> int:
        instance = self.require_instance()
        argv = ["gcloud", "compute", "ssh", INSTANCE, *self._where(instance.zone)]
        if self.runner.dry_run:
            self.runner.show(argv)
            return 0
        if instance.status != "RUNNING":
            raise LaunchError(f"{INSTANCE} is {instance.status}: start it with --action start")
        sys.stdout.flush()
        os.execvp("gcloud", argv)
        return 0  # not reached
