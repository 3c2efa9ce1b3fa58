"""A stand-in for the gcloud CLI: records argv, keeps instances in a JSON file, answers like gcloud.

Environment: FAKE_GCLOUD_STATE (JSON: project, instances by zone, fail_create by zone with
"capacity" or "quota") and FAKE_GCLOUD_CALLS (one JSON argv per line is appended).
``compute ssh`` always fails as a refused connection: there is no instance to reach.
"""

import json
import os
import sys

API = "https://www.googleapis.com/compute/v1/projects/p/zones/"


def option(argv: list[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def as_json(zone: str, instance: dict) -> dict:
    data = {
        "name": "alpha-train",
        "id": "4242",
        "status": instance["status"],
        "zone": API + zone,
        "machineType": f"{API}{zone}/machineTypes/{instance['machineType']}",
        "networkInterfaces": [{"accessConfigs": [{"natIP": "127.0.0.1"}]}],
    }
    if instance.get("accelerator"):
        kind, count = instance["accelerator"]
        data["guestAccelerators"] = [
            {"acceleratorType": f"projects/p/zones/{zone}/acceleratorTypes/{kind}", "acceleratorCount": count}
        ]
    return data


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(message + "\n")
    raise SystemExit(code)


def create(state: dict, argv: list[str], zone: str) -> None:
    kind = state["fail_create"].get(zone)
    if kind == "capacity":
        fail(
            "ERROR: (gcloud.compute.instances.create) Could not fetch resource:\n"
            f" - [ZONE_RESOURCE_POOL_EXHAUSTED] The zone 'projects/p/zones/{zone}' does not have enough "
            "resources available to fulfill the request.  Try a different zone, or try again later."
        )
    if kind == "quota":
        region = zone.rsplit("-", 1)[0]
        fail(
            "ERROR: (gcloud.compute.instances.create) Could not fetch resource:\n"
            f" - Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region {region}."
        )
    accelerator = None
    spec = option(argv, "accelerator")
    if spec:
        fields = dict(pair.split("=") for pair in spec.split(","))
        accelerator = [fields["type"], int(fields["count"])]
    state["instances"][zone] = {
        "status": "RUNNING",
        "machineType": option(argv, "machine-type"),
        "accelerator": accelerator,
    }
    print(f"Created [{API}{zone}/instances/alpha-train].")


def main() -> None:
    argv = sys.argv[1:]
    with open(os.environ["FAKE_GCLOUD_CALLS"], "a") as f:
        f.write(json.dumps(argv) + "\n")
    path = os.environ["FAKE_GCLOUD_STATE"]
    state = {}
    if os.path.exists(path):
        with open(path) as f:
            state = json.load(f)
    state.setdefault("project", "test-proj")
    state.setdefault("instances", {})
    state.setdefault("fail_create", {})
    zone = option(argv, "zone")
    head = argv[:3]
    if head == ["config", "get-value", "project"]:
        if state["project"]:
            print(state["project"])
        else:
            sys.stderr.write("(unset)\n")
    elif head == ["compute", "instances", "list"]:
        print(json.dumps([as_json(z, i) for z, i in state["instances"].items()]))
    elif head == ["compute", "instances", "describe"]:
        if zone not in state["instances"]:
            fail(
                "ERROR: (gcloud.compute.instances.describe) Could not fetch resource:\n"
                f" - The resource 'projects/p/zones/{zone}/instances/alpha-train' was not found"
            )
        print(json.dumps(as_json(zone, state["instances"][zone])))
    elif head == ["compute", "instances", "create"]:
        create(state, argv, zone)
    elif head[:2] == ["compute", "instances"] and head[2] in ("start", "stop", "resume", "delete"):
        if zone not in state["instances"]:
            fail(f"ERROR: (gcloud.compute.instances.{head[2]}) Could not fetch resource: not found")
        if head[2] == "delete":
            del state["instances"][zone]
        else:
            state["instances"][zone]["status"] = "TERMINATED" if head[2] == "stop" else "RUNNING"
    elif argv[:2] == ["compute", "ssh"]:
        fail("ssh: connect to host 127.0.0.1 port 22: Connection refused", 255)
    else:
        fail(f"fake gcloud: unexpected command {argv!r}", 2)
    with open(path, "w") as f:
        json.dump(state, f)


if __name__ == "__main__":
    main()
