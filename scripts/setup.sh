#!/usr/bin/env bash
# One-command set-up on a fresh machine: a virtual environment in .venv with lesionlab and its dev tools, plus
# Debian's Chromium for the browser test where the machine allows it (the test skips, saying why, where it does not).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

if [ "${LESIONLAB_SKIP_BROWSER:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian's chromium for the end-to-end browser test (set LESIONLAB_SKIP_BROWSER=1 to skip)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: chromium could not be installed; the browser test will be skipped." >&2
  else
    echo "note: chromium is not installed and this user cannot apt-get it; the browser test will be skipped." >&2
  fi
fi
echo "lesionlab is installed in .venv: try '.venv/bin/lesionlab --help'."
