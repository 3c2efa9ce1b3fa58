#!/usr/bin/env bash
# System packages that some tests need (headless Chromium for page tests, sshd and rsync for the
# launcher tests). Idempotent:
# installs only what is missing, with apt-get, as root. Tests that need a package skip with a
# clear reason when it is absent, so running without this script is safe, just less covered.
set -euo pipefail

missing=()
need() {  # need <command-or-path> <debian package>
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "$1" ]; then missing+=("$2"); fi
}

# Dashboard page tests (tests/server): Debian's Chromium, driven by Playwright.
need /usr/bin/chromium chromium
# Cloud launcher tests (tests/cloud): a real sshd on 127.0.0.1, the ssh client, rsync.
need /usr/sbin/sshd openssh-server
need ssh openssh-client
need rsync rsync

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ci-system-deps: not root; skipping install of: ${missing[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
