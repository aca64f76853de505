#!/usr/bin/env bash
# Set up, then make the smoke dataset (16 identities x 4 images, tiny generator, CPU) in out/smoke.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/facesynth run recipes/smoke.yaml --out out/smoke "$@"
.venv/bin/facesynth info out/smoke
