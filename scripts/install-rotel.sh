#!/usr/bin/env bash
# Installs the rotel OpenTelemetry collector agent (PyPI) into a virtualenv under target/tools
# and prints the path of its agent binary. Used by the OTLP tests as a real receiver.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/tools/rotel-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
agent=$("$venv/bin/python" -c 'import pathlib, rotel; print(pathlib.Path(rotel.__file__).parent / "rotel-agent")' 2>/dev/null || true)
if [ -z "$agent" ] || [ ! -x "$agent" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "rotel==0.0.1a15"
  agent=$("$venv/bin/python" -c 'import pathlib, rotel; print(pathlib.Path(rotel.__file__).parent / "rotel-agent")')
fi
echo "$PWD/${agent#"$PWD/"}"
