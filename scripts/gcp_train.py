#!/usr/bin/env python3
"""Train alpha on a GCP GPU instance (or any SSH host): the seed's entry point.

    python3 scripts/gcp_train.py --data data/historic.txt --domain chat ... --machine-type g2-standard-4
    python3 scripts/gcp_train.py --action stop

A thin wrapper over ``alpha.cloud``. It needs only the standard library, so it runs with any
Python 3.10+ without the project's venv. docs/CLOUD.md describes the workflow.
"""

import sys
from pathlib import Path

# Import the package from this checkout, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alpha.cloud.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], prog="python3 scripts/gcp_train.py"))
