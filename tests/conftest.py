"""Shared fixtures.

* The repository root is the pack; tests of ``guidance`` import it as the package ``attention_align`` (without
  ComfyUI) through an alias registered here.
* Tests that need the host use the ``host`` fixture: ComfyUI booted in-process with this pack symlinked into a
  private ``custom_nodes`` (see ``scripts/headless.py``). ``tiny_ckpt`` builds the random-weight SD1.5-family
  checkpoint once per session.
* A test that needs something this machine may lack (ComfyUI, Chromium, Playwright, spaCy, ruff, …) calls
  :func:`missing` with a one-line reason: locally it is skipped with that reason; under CI (:func:`strict`) it fails
  with it, so a green CI run has run every test. ``tests/test_setup.py`` checks that no test skips another way.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import headless  # noqa: E402  (scripts/headless.py)

headless.pack()                     # the package alias ``attention_align`` the fast tests import

TINY_CKPT = "tiny_sd15.safetensors"
PROMPT = "a red car and a blue bench"


def pyproject() -> dict:
    """pyproject.toml, parsed (tomllib is Python 3.11+; on 3.10 tomli, which scripts/setup_env.sh installs there)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def strict() -> bool:
    """True under CI: ``ATTENTION_ALIGN_STRICT=1`` (``.ci/run`` sets it), or ``CI=true`` where that is unset."""
    value = os.environ.get("ATTENTION_ALIGN_STRICT")
    if value is None:
        return os.environ.get("CI", "").strip().lower() == "true"
    if value not in ("0", "1"):
        raise ValueError(f"ATTENTION_ALIGN_STRICT={value!r}: allowed are 1 (a missing dependency fails the test) "
                         "and 0 (it skips the test)")
    return value == "1"


def missing(reason: str) -> NoReturn:
    """What a test does when something it needs is not here: skip with ``reason``, or fail with it under CI."""
    if strict():
        pytest.fail(f"{reason} [CI runs every test: a missing dependency is a failure here, not a skip]",
                    pytrace=False)
    pytest.skip(reason)


def comfyui() -> Path:
    """The ComfyUI checkout the host tests use (:func:`headless.find_comfyui`), else :func:`missing`."""
    path = headless.find_comfyui()
    if path is None:
        missing(headless.NO_COMFYUI)
    return path


@pytest.fixture(scope="session")
def comfy_path():
    return comfyui()


@pytest.fixture(scope="session")
def host(comfy_path, tmp_path_factory):
    return headless.ComfyHost.instance(comfy_path, tmp_path_factory.mktemp("comfy_base"))


@pytest.fixture(scope="session")
def tiny_ckpt(host):
    """Name of the tiny checkpoint inside the host's models/checkpoints (built at first use)."""
    import tiny_checkpoint

    path = host.checkpoint_path(TINY_CKPT)
    if not path.exists():
        tiny_checkpoint.build(str(path), layout="tiny", fp16=True, seed=0)
    return TINY_CKPT


@pytest.fixture(scope="session")
def loaded(host, tiny_ckpt):
    """(model, clip, vae) of the tiny checkpoint, loaded by ComfyUI's own CheckpointLoaderSimple."""
    out = host.run({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_ckpt}}})
    return tuple(out["1"][:3])


def capture_graph(ckpt, prompt=PROMPT, capture=True, size=128, steps=4, sampler="euler_ancestral", batch=1,
                  words="", levels=0, record_steps=False, level=0, seed=3) -> dict:
    """API-format graph: checkpoint → text self-attention (positive) → [capture] → KSampler → VAE decode →
    [visualise]. Node ids: ckpt, text, neg, latent, sample, decode, capture, viz."""
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "text": {"class_type": "AttentionAlignTextSelfAttention",
                 "inputs": {"clip": ["ckpt", 1], "text": prompt, "encoder": "auto", "gamma": 3.0}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "blurry, ugly"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["capture", 0] if capture else ["ckpt", 0], "seed": seed, "steps": steps, "cfg": 7.0,
            "sampler_name": sampler, "scheduler": "normal", "positive": ["text", 2], "negative": ["neg", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
    }
    if capture:
        g["capture"] = {"class_type": "AttentionAlignCaptureCrossAttention",
                        "inputs": {"model": ["ckpt", 0], "levels": levels, "record_steps": record_steps}}
        g["viz"] = {"class_type": "AttentionAlignVisualize", "inputs": {
            "attention_maps": ["capture", 1], "text_attention": ["text", 0], "image": ["decode", 0],
            "words": words, "level": level, "columns": 4}}
    return g


class LatestRecord:
    """The newest record a RunBoard holds, read when an attribute is asked for (after the sampler ran): lets a test
    write ``m, log = guided(...)``, sample, then read ``log.steps`` of that run."""

    def __init__(self, board):
        self.board = board

    def __getattr__(self, name):
        return getattr(self.board.records[-1], name)


def guide(G, model, guidance, **kwargs):
    """``nodes.host.guided.guided_model`` with the board wrapped in :class:`LatestRecord`."""
    m, board = G.guided_model(model, guidance, **kwargs)
    return m, LatestRecord(board)
