#!/usr/bin/env bash
# Set up everything, then run the demo workflow headlessly through ComfyUI
# (or, with --serve, start ComfyUI with the pack on 127.0.0.1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OMG_SKIP_BROWSER=1 bash scripts/setup.sh
exec .venv/bin/python scripts/run_demo.py "$@"
