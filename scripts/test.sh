#!/usr/bin/env bash
# The whole suite: set up (idempotent), lint, then every test layer on the
# pinned host (ComfyUI 0.3.75, frontend 1.32.9) and the rest of the matrix:
#   - ComfyUI 0.33.0 (its own venv, torch 2.11): host, server and browser layers,
#     when ../shared/hosts/comfyui-0.33.0.tar.gz was there for setup (else one line says so);
#   - the pinned host with the newest frontend (1.58.1): the browser layer.
# Extra arguments go to pytest on the pinned host only (e.g. `bash scripts/test.sh tests/unit -x`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --hosts
.venv/bin/ruff format --check .
.venv/bin/ruff check .

timed() {  # timed LABEL COMMAND...: runs it, prints how long it took
  local label="$1" start
  shift
  start=$(date +%s)
  "$@"
  printf '[test] %s: %d s\n' "$label" "$(( $(date +%s) - start ))"
}

if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
timed "ComfyUI 0.3.75 + frontend 1.32.9, every layer" .venv/bin/python -m pytest
if [ -x .venv-0.33/bin/python ] && [ -f .comfyui-0.33/main.py ]; then
  timed "ComfyUI 0.33.0 + frontend 1.49.6, host/server/browser" \
    env OMG_COMFYUI_DIR="$ROOT/.comfyui-0.33" .venv-0.33/bin/python -m pytest tests/host tests/server tests/browser
else
  echo "[test] ComfyUI 0.33.0 skipped: its tarball was absent at setup"
fi
timed "ComfyUI 0.3.75 + frontend 1.58.1, browser" \
  env OMG_FRONTEND_ROOT="$ROOT/.cache/frontend-1.58.1/comfyui_frontend_package/static" .venv/bin/python -m pytest tests/browser
