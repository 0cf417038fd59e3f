#!/usr/bin/env bash
# Create ./.venv with everything the pack, its tests and its demo need. Safe to run again.
#  - torch/torchvision pinned to the builds this machine has on disk (never in requirements.txt),
#  - the pack's requirements (floors only) and pytest,
#  - ComfyUI's own requirements when a checkout is found ($COMFYUI_PATH, ComfyUI/custom_nodes/<this repo>, ~/ComfyUI);
#    torchaudio is left out (no build matches torch 2.14.1 here; only ComfyUI's audio nodes need it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
PIP=(.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -q)

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
echo "[setup] torch==2.14.1 torchvision==0.29.1"
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
echo "[setup] requirements.txt + pytest"
"${PIP[@]}" -r requirements.txt "pytest>=7"

COMFY="$(.venv/bin/python scripts/headless.py --find)"
if [ -n "$COMFY" ]; then
    echo "[setup] ComfyUI found at $COMFY: installing its requirements"
    grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$|^\s*#|^\s*$' "$COMFY/requirements.txt" > .venv/comfyui-requirements.txt
    "${PIP[@]}" -r .venv/comfyui-requirements.txt requests
else
    echo "[setup] no ComfyUI checkout found (set COMFYUI_PATH, or clone ComfyUI to ~/ComfyUI): tests that need it will be skipped"
fi
