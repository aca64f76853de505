#!/usr/bin/env bash
# Create .venv and install facesynth with its dev extra. Safe to rerun: skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), "facesynth needs Python 3.10-3.12"'
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.facesynth-installed"
want="$(cat pyproject.toml scripts/dev-no-deps.txt | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  .venv/bin/python -m pip install --quiet --no-deps -r scripts/dev-no-deps.txt
  echo "$want" > "$stamp"
fi
